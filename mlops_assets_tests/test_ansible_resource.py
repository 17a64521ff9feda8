"""The Ansible resource and deployed_hosts without test hosts: the inventory it writes (safe
SSH settings, only the inventory's hosts, no loopback), failure messages naming host, task and
Ansible's message, and the local target recording this machine without running Ansible."""

import shlex

import dagster as dg
import pytest

from mlops_assets.assets.hosts import deployed_hosts
from mlops_assets.resources.hosts import AnsibleHosts, DeployedHosts, ThisMachineHosts
from mlops_assets.resources.ansible import Ansible, AnsibleError, PlaybookResult, TaskFailure, describe_failure, _per_host
from mlops_assets.resources.opentofu import ThisMachine
from mlops_assets.settings import PROJECT_ROOT

from .conftest import make_settings

pytestmark = pytest.mark.unit

INVENTORY = {
    "all": {
        "vars": {"ansible_user": "admin", "api_port": 8000, "metrics_port": 8080},
        "children": {
            "api": {"hosts": {"mlops-api": {"ansible_host": "10.0.1.10", "private_ip": "10.0.1.10"}}},
            "monitoring": {"vars": {"prometheus_port": 9090}, "hosts": {"mlops-monitoring": {"ansible_host": "10.0.1.11"}}},
        },
    }
}


def test_inventory_gets_private_safe_ssh_settings(tmp_path):
    ansible = Ansible(playbook_dir=str(PROJECT_ROOT / "ansible_roles"), work_dir=str(tmp_path / "work"),
                      private_key_file=str(tmp_path / "key"), host_key_checking="strict")
    control = tmp_path / "cp"
    inventory = ansible.build_inventory(INVENTORY, control)
    variables = inventory["all"]["vars"]
    options = shlex.split(variables["ansible_ssh_common_args"])
    assert options[:2] == ["-F", "/dev/null"]  # never the user's ssh config
    assert f"UserKnownHostsFile={tmp_path / 'work' / 'known_hosts'}" in options
    assert "StrictHostKeyChecking=yes" in options and "IdentitiesOnly=yes" in options
    assert variables["ansible_control_path_dir"] == str(control)
    assert "ControlPersist=60s" in variables["ansible_ssh_args"]
    assert variables["ansible_user"] == "admin"  # the inventory's own settings are kept
    assert INVENTORY["all"]["vars"].get("ansible_ssh_common_args") is None  # input untouched
    accept_new = Ansible(work_dir=str(tmp_path / "w2")).build_inventory(INVENTORY, control)
    assert "StrictHostKeyChecking=accept-new" in accept_new["all"]["vars"]["ansible_ssh_common_args"]


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.1.1", "localhost", "::1"])
def test_ssh_to_this_machine_is_refused(tmp_path, address):
    inventory = {"all": {"children": {"api": {"hosts": {"api": {"ansible_host": address}}}}}}
    with pytest.raises(AnsibleError, match="this machine; refusing"):
        Ansible(work_dir=str(tmp_path)).build_inventory(inventory, tmp_path / "cp")


def test_failure_message_names_host_task_and_message():
    result = PlaybookResult(
        playbook="site.yml", status="failed", rc=2,
        per_host=_per_host({"ok": {"mlops-api": 5}, "failures": {"mlops-api": 1}, "dark": {"mlops-monitoring": 1}}),
        failures=[TaskFailure("mlops-api", "Run the API container", "port is already allocated"),
                  TaskFailure("mlops-monitoring", "Gathering Facts", "ssh: connect timed out", unreachable=True)],
    )
    message = describe_failure(result)
    assert "mlops-api failed at task 'Run the API container': port is already allocated" in message
    assert "mlops-monitoring unreachable at task 'Gathering Facts': ssh: connect timed out" in message
    assert result.per_host["mlops-api"] == {"ok": 5, "changed": 0, "failed": 1, "unreachable": 0, "skipped": 0,
                                            "rescued": 0, "ignored": 0}
    assert result.per_host["mlops-monitoring"]["unreachable"] == 1


def test_local_target_records_this_machine_without_ansible():
    outputs = ThisMachine().provision(lambda message: None).outputs
    with dg.build_asset_context(resources={"host_configurator": ThisMachineHosts()}) as context:
        output = deployed_hosts(context, tofu_state=outputs)
    value: DeployedHosts = output.value
    assert value.configured_by == "this machine" and value.target == "local"
    assert value.api_addresses == ["127.0.0.1"] and value.prometheus_url == "http://127.0.0.1:9090"
    assert output.data_version.value.startswith("this-machine/")
    assert "Ansible did not run" in output.metadata["note"].value


def test_the_ray_clusters_token_is_generated_once_for_every_target(tmp_path, monkeypatch):
    """More than one API host: the api role needs the Ray cluster's token. No person uses it,
    so every target generates it once (0600, git-ignored MLOPS_HOME/secrets/TARGET), aws included,
    where the passwords people use come from the environment; MLOPS_RAY_AUTH_TOKEN overrides it."""
    from mlops_assets.targets import ansible_for

    for name in ("MLOPS_RAY_AUTH_TOKEN", "MLOPS_GRAFANA_ADMIN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    ansible = ansible_for(make_settings(tmp_path / "home", MLOPS_TARGET="aws"))
    token = ansible.secret("api_ray_token")
    assert token and len(token) >= 32 and ansible.secret("api_ray_token") == token
    path = tmp_path / "home" / "secrets" / "aws" / "api_ray_token"
    assert path.read_text().strip() == token and path.stat().st_mode & 0o777 == 0o600
    assert ansible.secret("grafana_admin_password") is None  # a person's password: never generated for aws
    monkeypatch.setenv("MLOPS_RAY_AUTH_TOKEN", "t" * 40)
    assert ansible.secret("api_ray_token") == "t" * 40
