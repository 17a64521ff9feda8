"""Small helpers that turn results into Dagster metadata, and the one helper that reads an
asset's previous materialization (shared by every stage)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from mlops_assets.freshness import DATA_VERSION_TAG


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return "" if value is None else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class PreviousMaterialization:
    """What an asset's latest materialization recorded (empty when there is none)."""

    data_version: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def previous_materialization(context, key=None) -> PreviousMaterialization:
    """This asset's (or asset `key`'s) latest materialization: its data version and metadata
    values, to compare with what this run would produce (the one place assets and jobs read
    the history of assets)."""
    event = context.instance.get_latest_materialization_event(key or context.asset_key)
    if event is None or event.asset_materialization is None:
        return PreviousMaterialization()
    materialization = event.asset_materialization
    return PreviousMaterialization(
        data_version=(materialization.tags or {}).get(DATA_VERSION_TAG),
        metadata={key: value.value for key, value in materialization.metadata.items()},
    )
