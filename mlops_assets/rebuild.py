"""Materialize what changed, and only that: what `make run` (cli.py) does after observing the
data source.

Dagster marks an asset stale once an upstream asset *has* a new data version (or its own code
version changed), so the work goes in waves, each one Dagster run. Each wave materializes what
the assets' automation conditions request now (freshness.py: the same conditions the
automation sensor evaluates in `dagster dev`, so both agree by construction), plus, in the
first wave, the assets given config (a hyperparameter change is a reason to retrain that
Dagster's staleness cannot see); then it asks again.

A retraining that keeps the champion gives `selected_model` the same data version, so the waves
stop there: no image, no OpenTofu, no Ansible, no API restart. Assets tagged
`freshness.LIVE_SERVICE_TAG` (they look after live services: the image in the engine, the API
process, Prometheus) run in a last wave when no earlier wave ran them; they return early when
everything is in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from mlops_assets.freshness import LIVE_SERVICE_TAG, requested

Echo = Callable[[str], None]


class RunConfigError(ValueError):
    """The run config names assets that the job does not have."""


class UnknownAssetError(ValueError):
    """`cli run ASSET` names an asset the job does not have."""


def upstream_of(names: list[str], job_keys: set[dg.AssetKey], graph) -> set[dg.AssetKey]:
    """The named assets and every asset upstream of them, within the job: what `cli run ASSET`
    may materialize (nothing downstream of the names)."""
    named = {dg.AssetKey(name.split("/")) for name in names}
    unknown = named - job_keys
    if unknown:
        raise UnknownAssetError(f"{_names(unknown)} is not an asset of this job; its assets are {_names(job_keys)}")
    return set().union(*({key} | (graph.get_ancestor_asset_keys(key) & job_keys) for key in named))


@dataclass
class Rebuild:
    """What `rebuild` did: one entry per wave (the Dagster run and its assets)."""

    job_keys: set[dg.AssetKey]
    waves: list[tuple[set[dg.AssetKey], dg.ExecuteInProcessResult]] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(result.success for _, result in self.waves)

    @property
    def materialized(self) -> set[dg.AssetKey]:
        return {key for keys, result in self.waves if result.success for key in keys}

    @property
    def up_to_date(self) -> set[dg.AssetKey]:
        return self.job_keys - {key for keys, _ in self.waves for key in keys}

    @property
    def results(self) -> list[dg.ExecuteInProcessResult]:
        return [result for _, result in self.waves]


def _names(keys) -> str:
    return ", ".join(sorted(key.to_user_string() for key in keys))


def configured_keys(run_config: dict, job_keys: set[dg.AssetKey]) -> set[dg.AssetKey]:
    """The assets that `run_config` configures (its `ops` section); unknown names are an error."""
    named = {dg.AssetKey(name.split("__")) for name in (run_config.get("ops") or {})}
    unknown = named - job_keys
    if unknown:
        raise RunConfigError(
            f"the run config configures {_names(unknown)}, which the job does not have; "
            f"its assets are {_names(job_keys)}"
        )
    return named


def _config_for(run_config: dict, keys: set[dg.AssetKey]) -> dict:
    """`run_config` restricted to the ops of one wave (Dagster refuses config for ops a run lacks)."""
    ops = {name: value for name, value in (run_config.get("ops") or {}).items() if dg.AssetKey(name.split("__")) in keys}
    rest = {name: value for name, value in run_config.items() if name != "ops"}
    return {**rest, **({"ops": ops} if ops else {})}


def _ready(pending: set[dg.AssetKey], job_keys: set[dg.AssetKey], graph) -> set[dg.AssetKey]:
    """`pending` without the assets that must wait: those with an input path through an asset
    that this wave does not run but that a pending asset upstream may change (what the
    conditions already decide for stale assets; this applies it to configured ones too). The
    first pending assets in graph order never wait, so a wave is never empty."""
    deferred = set()
    for key in pending:
        between = (graph.get_ancestor_asset_keys(key) & job_keys) - pending
        if any(graph.get_ancestor_asset_keys(middle) & pending for middle in between):
            deferred.add(key)
    return pending - deferred


def rebuild(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    job_name: str = "materialize_all",
    *,
    everything: bool = False,
    run_config: dict | None = None,
    echo: Echo = print,
    tags: dict[str, str] | None = None,
    assets: list[str] | None = None,
) -> Rebuild:
    """Materialize the job's stale, missing and configured assets wave by wave (or, with
    `everything`, the whole job in one run: each asset then returns early when its inputs are
    unchanged). `assets` narrows the job to those assets and what is upstream of them (what
    `cli run deployed_api` asks: nothing downstream runs). Stops at the first wave that fails."""
    run_config = run_config or {}
    job = defs.resolve_job_def(job_name)
    graph = defs.resolve_asset_graph()
    job_keys = set(job.asset_layer.selected_asset_keys)
    if assets:
        job_keys = upstream_of(assets, job_keys, graph)
    configured = configured_keys(run_config, job_keys)
    always = {key for key in job_keys if graph.get(key).tags.get(LIVE_SERVICE_TAG) == "true"}
    done = Rebuild(job_keys)
    ran: set[dg.AssetKey] = set()
    pending = set(job_keys) if everything else requested(defs, instance, job_keys) | configured
    # Each wave moves at least one level down the graph: more waves than assets is a bug.
    for number in range(1, len(job_keys) + 3):
        if not pending:
            if not always - ran:
                break
            pending = always - ran
            reason = "checking the live services"
        else:
            reason = ("every asset (--all)" if everything else "missing, stale or configured") if number == 1 \
                else "their inputs have new data versions"
        pending = _ready(pending, job_keys, graph)
        echo(f"[{number}] materializing: {_names(pending)} ({reason})")
        subset = job if pending == job_keys else job.get_subset(asset_selection=pending)
        result = subset.execute_in_process(
            instance=instance,
            run_config=_config_for(run_config, pending),
            raise_on_error=False,
            tags={"mlops/wave": str(number), **(tags or {})},
        )
        done.waves.append((pending, result))
        ran |= pending
        if not result.success:
            break
        # A configured asset that had to wait is still owed its run with that config.
        pending = requested(defs, instance, job_keys) | (configured - ran)
    else:
        raise RuntimeError(f"{job_name}: still stale after {len(job_keys) + 2} waves: {_names(pending)}")
    return done
