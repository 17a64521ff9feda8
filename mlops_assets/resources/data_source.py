"""Where the training data comes from: the file (or bundled dataset) and its label column.

Set once from MLOPS_DATASET and MLOPS_TARGET_COLUMN (settings.py, targets.py); `dataset_source`
observes it and `dataset` loads it unless its run config names another `source`.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from mlops_assets.ml import data as ml_data


class DataSource(dg.ConfigurableResource):
    location: str = Field(default=ml_data.DEFAULT_SOURCE,
                          description="CSV or Parquet path, or 'palmerpenguins' for the dataset bundled with that package.")
    target_column: str = Field(default=ml_data.DEFAULT_TARGET, description="The label column.")

    def fingerprint(self) -> str:
        """sha256 of the bytes behind `location` and the target name (raises DatasetError)."""
        return ml_data.source_fingerprint(self.location, self.target_column)
