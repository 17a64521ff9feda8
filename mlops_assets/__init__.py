"""mlops_assets: a Dagster project that trains, registers, deploys and monitors a model."""
