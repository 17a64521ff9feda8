"""One definition of "out of date" (mlops_assets/freshness.py): the decision as a pure function,
the Dagster internals it rests on (this file fails loudly if an upgrade changes them), and the
conditions every asset carries, which `make run`'s waves and the automation sensor evaluate alike."""

from __future__ import annotations

import dagster as dg
import pytest

from mlops_assets.freshness import (
    DATA_VERSION_TAG,
    SKIP_RULES,
    rebuild_condition,
    ready_to_rebuild,
    requested,
    schedule_period_s,
    stale_or_missing,
)

pytestmark = pytest.mark.unit

# The project's graph, by name (what the decision sees).
PARENTS = {
    "dataset": [], "tracking_server": ["tofu_state"], "candidate_models": ["dataset", "tracking_server"], "selected_model": ["dataset", "candidate_models"],
    "container_image": ["selected_model"], "tofu_state": [], "deployed_hosts": ["tofu_state"],
    "deployed_api": ["selected_model", "dataset", "container_image", "deployed_hosts"],
    "dashboards": ["deployed_api", "dataset"],
}


def ancestors(key: str) -> set[str]:
    found, stack = set(), list(PARENTS[key])
    while stack:
        parent = stack.pop()
        if parent not in found:
            found.add(parent)
            stack.extend(PARENTS[parent])
    return found


def test_a_cold_start_rebuilds_everything_in_one_wave():
    assert ready_to_rebuild(set(PARENTS), ancestors) == set(PARENTS)


def test_new_data_rebuilds_the_model_before_the_image_and_the_image_before_the_deployment():
    # After `dataset` got a new data version, Dagster marks its direct dependents stale.
    stale = {"candidate_models", "selected_model", "deployed_api", "dashboards"}
    assert ready_to_rebuild(stale, ancestors) == {"candidate_models", "selected_model"}
    # A new champion: the image is stale; the API and dashboards were already.
    stale = {"container_image", "deployed_api", "dashboards"}
    assert ready_to_rebuild(stale, ancestors) == stale


def test_a_new_serving_image_redeploys_in_the_same_wave():
    stale = {"container_image", "deployed_api"}
    assert ready_to_rebuild(stale, ancestors) == stale


def test_nothing_out_of_date_means_nothing_to_do():
    assert ready_to_rebuild(set(), ancestors) == set()


def _toy(condition):
    version = {"value": "A"}

    @dg.asset(automation_condition=condition)
    def upstream():
        return dg.Output(version["value"], data_version=dg.DataVersion(version["value"]))

    @dg.asset(deps=[upstream], automation_condition=condition)
    def middle():
        return dg.Output(None, data_version=dg.DataVersion("same"))

    @dg.asset(deps=[middle], automation_condition=condition)
    def downstream():
        return None

    return dg.Definitions(assets=[upstream, middle, downstream]), version


def _keys(*names):
    return {dg.AssetKey(name) for name in names}


def test_dagsters_staleness_internals_still_answer_as_this_project_relies_on():
    """If this fails after a Dagster upgrade, freshness.py's private imports need a new home."""
    assert DATA_VERSION_TAG == "dagster/data_version"
    defs, version = _toy(None)
    graph = defs.resolve_asset_graph()
    with dg.instance_for_test() as instance:
        assert stale_or_missing(instance, graph) == _keys("upstream", "middle", "downstream")
        dg.materialize(defs.assets, instance=instance)
        assert stale_or_missing(instance, graph) == set()
        dg.materialize(defs.assets, instance=instance, selection=["upstream"])  # same data version
        assert stale_or_missing(instance, graph) == set()
        version["value"] = "B"
        dg.materialize(defs.assets, instance=instance, selection=["upstream"])
        assert stale_or_missing(instance, graph) == _keys("middle")


def test_the_conditions_request_what_is_ready_and_follow_data_versions_not_runs():
    defs, version = _toy(rebuild_condition())
    everything = _keys("upstream", "middle", "downstream")
    with dg.instance_for_test() as instance:
        assert requested(defs, instance, everything) == everything  # cold: one wave
        dg.materialize(defs.assets, instance=instance)
        assert requested(defs, instance, everything) == set()
        dg.materialize(defs.assets, instance=instance, selection=["upstream"])  # same data version
        assert requested(defs, instance, everything) == set()
        version["value"] = "B"
        dg.materialize(defs.assets, instance=instance, selection=["upstream"])
        assert requested(defs, instance, everything) == _keys("middle")
        dg.materialize(defs.assets, instance=instance, selection=["middle"])  # same data version again
        assert requested(defs, instance, everything) == set()


def test_the_sensor_requests_a_change_once_not_on_every_tick():
    defs, version = _toy(rebuild_condition())
    with dg.instance_for_test() as instance:
        dg.materialize(defs.assets, instance=instance)
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.total_requested == 0
        version["value"] = "B"
        dg.materialize(defs.assets, instance=instance, selection=["upstream"])
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert tick.get_requested_partitions(dg.AssetKey("middle")) == {None}
        # The run failed or has not happened: the next tick does not request it again.
        again = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert again.total_requested == 0


def test_every_asset_of_the_project_carries_the_one_condition():
    from mlops_assets.definitions import build_definitions

    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    for key in graph.materializable_asset_keys:
        condition = graph.get(key).automation_condition
        assert condition is not None and condition.get_label() == "rebuild when stale or missing", key
    sensor = next(s for s in defs.sensors if s.name == "automation_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED


def test_every_asset_has_a_skip_rule():
    from mlops_assets.definitions import build_definitions

    names = {key.to_user_string() for key in build_definitions().resolve_asset_graph().materializable_asset_keys}
    assert {rule.asset for rule in SKIP_RULES} == names


def test_an_out_of_date_asset_that_nothing_rebuilds_blocks_its_descendants():
    stale = {"dataset", "candidate_models"}
    assert ready_to_rebuild(stale, ancestors, rebuilt=set(PARENTS) - {"dataset"}) == set()
    assert ready_to_rebuild(stale, ancestors, rebuilt=set(PARENTS)) == stale


def test_run_up_to_an_asset_takes_it_and_its_upstream_only():
    from mlops_assets.definitions import build_definitions
    from mlops_assets.rebuild import UnknownAssetError, upstream_of

    graph = build_definitions().resolve_asset_graph()
    keys = set(graph.materializable_asset_keys)
    names = {key.to_user_string() for key in upstream_of(["deployed_api"], keys, graph)}
    assert names == {"dataset", "tracking_server", "candidate_models", "selected_model", "container_image", "tofu_state",
                     "deployed_hosts", "deployed_api"}
    assert {k.to_user_string() for k in upstream_of(["candidate_models"], keys, graph)} == {
        "dataset", "tofu_state", "tracking_server", "candidate_models"}
    with pytest.raises(UnknownAssetError, match="deployed_apii is not an asset of this job; its assets are"):
        upstream_of(["deployed_apii"], keys, graph)


@pytest.mark.parametrize("cron, period_s", [("0 3 * * *", 86400.0), ("0 3 * * 1-5", 3 * 86400.0), ("*/15 * * * *", 900.0)])
def test_the_schedule_period_comes_from_dagsters_own_cron_ticks(cron, period_s):
    """The stale-retraining alert's period: the longest gap between ticks (a weekday schedule's
    weekend), from the cron iterator Dagster's scheduler uses (private: checked here)."""
    assert schedule_period_s(cron) == period_s
