"""Asset checks.

- `dataset`'s data quality (blocking: bad data never trains a model). The four rules run in
  one step (one load of the table, one process step); each reports as its own check in the UI.
  The quality floor of `selected_model` is reported by that asset itself, because it is decided
  together with the promotion (see assets/training.py).
- `deployed_api`'s `serves_its_version_on_every_host`: every API host answers ready with the
  model version the asset deployed. It runs after each materialization of `deployed_api` (every
  `make run`), and on its own from the UI (the asset's Checks tab) to find out whether the hosts
  still serve what the pipeline last deployed, without deploying anything.
"""

from typing import Iterator

import dagster as dg

from mlops_assets.ml import quality
from mlops_assets.ml.data import Dataset
from mlops_assets.resources.api_deployer import DeployedApi
from mlops_assets.serving.client import survey

DATASET_CHECK_SPECS = [
    dg.AssetCheckSpec("target_column_usable", asset="dataset", blocking=True,
                      description="The target column exists, has no missing label and at least two classes."),
    dg.AssetCheckSpec("no_feature_entirely_null", asset="dataset", blocking=True,
                      description="No feature column is entirely null."),
    dg.AssetCheckSpec("enough_rows_per_class", asset="dataset", blocking=True,
                      description="Every class has at least `min_rows_per_class` rows (dataset config)."),
    dg.AssetCheckSpec("enough_rows", asset="dataset", blocking=True,
                      description="The table has at least `min_rows` rows (dataset config)."),
]


def _result(name: str, outcome: quality.QualityResult) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key="dataset",
        check_name=name,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=outcome.description,
        metadata={k: dg.MetadataValue.json(v) if isinstance(v, (dict, list)) else v for k, v in outcome.details.items()},
    )


@dg.multi_asset_check(specs=DATASET_CHECK_SPECS, ins={"dataset": dg.AssetIn("dataset")})
def dataset_quality(dataset: Dataset) -> Iterator[dg.AssetCheckResult]:
    table, target = dataset.table, dataset.target
    yield _result("target_column_usable", quality.target_column_usable(table, target))
    yield _result("no_feature_entirely_null", quality.no_feature_entirely_null(table, target))
    yield _result("enough_rows_per_class", quality.enough_rows_per_class(table, target, dataset.min_rows_per_class))
    yield _result("enough_rows", quality.enough_rows(table, dataset.min_rows))


DATASET_CHECKS = [dataset_quality]


# /readyz probes per API host: in a Ray cluster each may be answered by a replica on another
# node, so several probes see more of the replicas behind a host's proxy.
READYZ_PROBES = 6


@dg.asset_check(asset="deployed_api", blocking=True, description=(
    "Every API host answers /readyz with the model version deployed_api deployed: probed "
    f"{READYZ_PROBES} times per host (in a cluster, answers come from replicas on several nodes)."))
def serves_its_version_on_every_host(deployed_api: DeployedApi) -> dg.AssetCheckResult:
    expected = str(deployed_api.model_version)
    hosts = survey(list(deployed_api.every_url), probes=READYZ_PROBES)
    problems = [problem for host in hosts if (problem := host.problem(expected))]
    rows = ["| API host | versions | engine | answered by nodes | probes failed |", "| --- | --- | --- | --- | --- |"]
    rows += [f"| {h.url} | {', '.join(sorted(h.versions)) or '-'} | {', '.join(sorted(h.engines)) or '-'} | "
             f"{', '.join(sorted(h.nodes)) or '-'} | {len(h.errors)} of {READYZ_PROBES} |" for h in hosts]
    if problems:
        description = (f"{len(problems)} of {len(hosts)} API host(s) do not serve model version {expected}: "
                       + "; ".join(problems) + ". `make run` (deployed_api) deploys it again; "
                       "docs/operations.md says how to inspect a host.")
    else:
        description = f"all {len(hosts)} API host(s) answer ready with model version {expected}"
    return dg.AssetCheckResult(
        passed=not problems, severity=dg.AssetCheckSeverity.ERROR, description=description,
        metadata={"expected_version": expected, "hosts": dg.MetadataValue.md("\n".join(rows)),
                  "nodes_seen": dg.MetadataValue.json(sorted({n for h in hosts for n in h.nodes})),
                  **({"rejected": dg.MetadataValue.json({h.url: h.rejected for h in hosts if h.rejected})}
                     if any(h.rejected for h in hosts) else {})})


DEPLOYED_API_CHECKS = [serves_its_version_on_every_host]
