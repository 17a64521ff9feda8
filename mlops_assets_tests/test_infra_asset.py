"""`tofu_state` materialized through Dagster: `local` records this machine and runs nothing;
`sim` applies infra_tf/ to the EC2 emulator (no change the second time, same data version),
replaces the hosts only when the run config confirms it, and `destroy_infrastructure` refuses
without the right confirmation, then destroys."""

import dagster as dg
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.rehearsal.emulator import Ec2Emulator

from .conftest import make_settings, materialize
from .infra_helpers import assert_expected_artifact_store, assert_expected_instances, live_instances, record_timings

pytestmark = pytest.mark.service

KEY = dg.AssetKey("tofu_state")


def _materialize(defs: dg.Definitions, instance: dg.DagsterInstance, raise_on_error=True):
    return materialize(defs, instance, [KEY], raise_on_error=raise_on_error)


def _materialization(result):
    return result.asset_materializations_for_node("tofu_state")[0]


def _destroy(defs, instance, confirm: str):
    job = defs.resolve_job_def("destroy_infrastructure")
    return job.execute_in_process(
        instance=instance,
        run_config={"ops": {"destroy_hosts": {"config": {"confirm_target": confirm}}}},
        raise_on_error=False,
    )


def test_local_target_records_this_machine_and_provisions_nothing(tmp_path):
    settings = make_settings(tmp_path)
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        result = _materialize(defs, instance)
        assert result.success
        outputs = result.output_for_node("tofu_state")
        metadata = _materialization(result).metadata
        assert outputs["api_private_ip"] == outputs["monitoring_private_ip"] == "127.0.0.1"
        hosts = outputs["ansible_inventory"]["all"]["children"]["api"]["hosts"]
        assert hosts["localhost"]["ansible_connection"] == "local"
        assert metadata["applied"].value is False
        assert metadata["plan summary"].value == "OpenTofu did not run"
        assert "nothing was provisioned" in metadata["note"].value
        assert not (tmp_path / "tofu").exists(), "the local target must not run OpenTofu"

        refused = _destroy(defs, instance, confirm="aws")
        assert not refused.success
        done = _destroy(defs, instance, confirm="local")
        assert done.success and done.output_for_node("destroy_hosts")["destroyed"] is False


@pytest.fixture
def sim_home(tmp_path):
    yield tmp_path
    Ec2Emulator.stop_recorded(tmp_path / "rehearsal" / "emulator")


def test_sim_target_applies_to_the_emulator_then_changes_nothing_then_destroys(sim_home, monkeypatch):
    defs = build_definitions(make_settings(sim_home, MLOPS_TARGET="sim"))
    with dg.instance_for_test() as instance:
        first = _materialize(defs, instance)
        assert first.success
        outputs = first.output_for_node("tofu_state")
        first_md = _materialization(first).metadata
        assert first_md["applied"].value is True
        # test_infra_emulator's RESOURCES with the sim target's one client network (127.0.0.0/8).
        assert first_md["plan summary"].value.startswith("34 to add")
        assert "TEST DOUBLE" in first_md["note"].value
        emulator = Ec2Emulator(**first_md["emulator"].value)
        assert emulator.endpoint.startswith("http://127.0.0.1:")
        ec2 = emulator.client()
        assert_expected_instances(ec2, outputs)
        assert_expected_artifact_store(emulator, outputs)
        # The rehearsal inventory connects to the private addresses the emulator reports.
        api_host = next(iter(outputs["ansible_inventory"]["all"]["children"]["api"]["hosts"].values()))
        assert api_host["ansible_host"] == outputs["api_private_ip"]
        key = sim_home / "rehearsal" / "ssh" / "id_ed25519"
        assert key.stat().st_mode & 0o077 == 0
        assert outputs["ansible_inventory"]["all"]["vars"]["ansible_ssh_private_key_file"] == str(key)

        second = _materialize(defs, instance)
        second_md = _materialization(second).metadata
        assert second_md["applied"].value is False
        assert second_md["plan summary"].value.startswith("0 to add, 0 to change, 0 to destroy")
        assert "nothing was applied" in second_md["note"].value
        # Same outputs, same data version: downstream deployments stay fresh.
        version = "dagster/data_version"
        assert _materialization(first).tags[version] == _materialization(second).tags[version]

        # Replacing the hosts (asked for with hosts_generation) needs the run config's confirmation.
        monkeypatch.setenv("TF_VAR_hosts_generation", "2")
        hosts = outputs["instance_ids"]
        unconfirmed = _materialize(defs, instance, raise_on_error=False)
        assert not unconfirmed.success
        failure = unconfirmed.failure_data_for_node("tofu_state").error.message
        assert "replace aws_instance.api" in failure and "confirm_replacements" in failure
        step_attempts = [e for e in unconfirmed.all_events if e.event_type_value == "STEP_START"]
        assert len(step_attempts) == 1, "a refused plan is not retried"
        assert {i["InstanceId"] for i in live_instances(ec2)} == set(hosts.values())
        confirm = {"ops": {"tofu_state": {"config": {"confirm_replacements": ["aws_instance.api", "aws_instance.monitoring"]}}}}
        replaced = materialize(defs, instance, [KEY], run_config=confirm)
        new_hosts = replaced.output_for_node("tofu_state")["instance_ids"]
        assert set(new_hosts.values()).isdisjoint(hosts.values())
        assert {i["InstanceId"] for i in live_instances(ec2)} == set(new_hosts.values())

        refused = _destroy(defs, instance, confirm="aws")
        assert not refused.success and len(live_instances(ec2)) == 2
        destroyed = _destroy(defs, instance, confirm="sim")
        assert destroyed.success
        assert live_instances(ec2) == []
        latest = instance.get_latest_materialization_event(KEY).asset_materialization
        assert latest.metadata["destroyed"].value is True

    record_timings(
        "tofu_state via Dagster, sim target (s)",
        {
            "first (applied)": first_md["timings (s)"].value,
            "second (no change)": second_md["timings (s)"].value,
            "engine": first_md["engine"].value,
        },
    )
