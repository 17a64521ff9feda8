"""Pure machine-learning functions: loading, splitting, model families, metrics.

No Dagster and no MLflow here, so every piece is testable on its own.
"""
