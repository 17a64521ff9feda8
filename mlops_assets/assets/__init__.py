"""Thin asset definitions: lineage, configuration and metadata; the work is done in
`mlops_assets.ml` and the resources."""
