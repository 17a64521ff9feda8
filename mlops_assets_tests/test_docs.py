"""The documentation stands alone and says what the code does: every link resolves inside the
repository, and the tables rendered from code (skip rules, records) match the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlops_assets.freshness import skip_rules_markdown
from mlops_assets.settings import PROJECT_ROOT
from mlops_assets.state import RECORDS

pytestmark = pytest.mark.unit

DOCS = sorted([PROJECT_ROOT / "README.md", *(PROJECT_ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_the_readme_is_a_front_door_and_docs_exist():
    assert len((PROJECT_ROOT / "README.md").read_text().splitlines()) <= 240
    for name in ("architecture", "targets", "operations", "performance", "security", "howto", "testing"):
        assert (PROJECT_ROOT / "docs" / f"{name}.md").is_file(), name


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_every_link_resolves_inside_the_repository(page: Path):
    text = page.read_text()
    assert "../shared" not in text and "FACTS.md" not in text
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            # Only loopback examples and the tools' own public pages, never a file of ours elsewhere.
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(PROJECT_ROOT), f"{page.name}: {target} points outside the repository"
        assert path.exists(), f"{page.name}: {target} does not exist"


def test_the_skip_rules_table_in_the_docs_is_the_one_in_code():
    text = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    table = text.split("<!-- skip-rules:start -->", 1)[1].split("<!-- skip-rules:end -->", 1)[0]
    assert table.strip() == skip_rules_markdown().strip(), "run the snippet in docs/operations.md to refresh it"


def test_every_record_is_documented():
    text = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    for record in RECORDS.values():
        assert record.path in text, f"{record.path} is not described in docs/operations.md"
