"""Small helpers that turn results into Dagster metadata (shared by every stage)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return "" if value is None else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def previous_metadata(context) -> dict[str, Any]:
    """The metadata values of this asset's latest materialization ({} when there is none):
    what the last run deployed, to compare with what this run would deploy."""
    event = context.instance.get_latest_materialization_event(context.asset_key)
    if event is None or event.asset_materialization is None:
        return {}
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}
