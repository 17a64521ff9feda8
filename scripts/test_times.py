#!/usr/bin/env python3
"""Refresh mlops_assets_tests/test_times.json (each test's measured seconds, setup and teardown
included) from a JUnit report of a full run:

    .venv/bin/python -m pytest mlops_assets_tests --junitxml=/tmp/junit.xml
    .venv/bin/python scripts/test_times.py /tmp/junit.xml [/tmp/another-run.xml ...]

With several reports, the slowest time of each test is kept. conftest.py sets each test's
timeout to about 3x its time (with a floor per tier), so measure on the CI machine kind.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

TIMES = Path(__file__).resolve().parent.parent / "mlops_assets_tests" / "test_times.json"


def times_of(report: Path) -> dict[str, float]:
    found: dict[str, float] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        if case.find("skipped") is not None:
            continue
        module = case.get("classname", "").replace(".", "/")
        found[f"{module}.py::{case.get('name')}"] = round(float(case.get("time", 0)), 1)
    return found


def main(reports: list[str]) -> int:
    if not reports:
        print(__doc__, file=sys.stderr)
        return 2
    merged: dict[str, float] = {}
    for report in reports:
        for nodeid, seconds in times_of(Path(report)).items():
            merged[nodeid] = max(seconds, merged.get(nodeid, 0.0))
    TIMES.write_text(json.dumps(dict(sorted(merged.items())), indent=1) + "\n")
    print(f"{TIMES}: {len(merged)} tests, {sum(merged.values()):.0f}s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
