"""The vector selectors of a PromQL expression: which metric names it reads, with which label
matchers. Enough of PromQL for the expressions this package writes (checked by the tests):
strings, range and subquery brackets, and label lists of by/without/on/ignoring/group_* are
skipped; an identifier followed by `(` is a function or an aggregation. Also Prometheus's
durations (`seconds_of`), which the rule tests and the monitoring host's checks convert."""

from __future__ import annotations

import re
from dataclasses import dataclass

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"}
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*(\{[^}]*\})?(\s*\()?")


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: str  # the text between the braces, "" if none

    def text(self) -> str:
        return f"{self.name}{{{self.matchers}}}" if self.matchers else self.name


def _mask_strings(expr: str) -> tuple[str, list[str]]:
    strings: list[str] = []

    def keep(match: re.Match) -> str:
        strings.append(match.group(0))
        return f"\x00{len(strings) - 1}\x00"

    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', keep, expr), strings


def selectors(expr: str) -> list[Selector]:
    masked, strings = _mask_strings(expr)
    masked = re.sub(r"\[[^\]]*\]", " ", masked)  # ranges, subqueries, $__rate_interval
    masked = _LABEL_LIST.sub(" ", masked)
    found: list[Selector] = []
    for match in _SELECTOR.finditer(masked):
        name, braces, call = match.group(1), match.group(2), match.group(3)
        if not name and not braces:
            continue
        if name and call and not braces:
            continue  # a function or aggregation
        if name and name in KEYWORDS and not braces:
            continue
        start = match.start(1) if name else match.start(2)
        if start > 0 and (masked[start - 1].isdigit() or masked[start - 1] == "."):
            continue  # the exponent or suffix of a number
        matchers = ""
        if braces:
            matchers = re.sub(r"\x00(\d+)\x00", lambda m: strings[int(m.group(1))], braces[1:-1]).strip()
        found.append(Selector(name or "", matchers))
    return found


def metric_names(expr: str) -> set[str]:
    return {s.name for s in selectors(expr) if s.name}


_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def seconds_of(duration: str) -> float:
    """A Prometheus duration ("15s", "1m30s", "500ms") in seconds."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration.strip())
    if not parts or "".join(number + unit for number, unit in parts) != duration.strip():
        raise ValueError(f"not a Prometheus duration like 15s, 1m30s or 500ms: {duration!r}")
    return sum(int(number) * _UNIT_SECONDS[unit] for number, unit in parts)
