"""The Ansible resource the role tests drive test hosts with (the one deployed_hosts uses)."""

from mlops_assets.resources.ansible import Ansible
from mlops_assets.settings import PROJECT_ROOT


def ansible_for_test_hosts(hosts, work_dir) -> Ansible:
    """ansible_roles/ over real SSH to `hosts` (a TestHosts): its key, its known_hosts, host
    keys checked strictly."""
    return Ansible(
        playbook_dir=str(PROJECT_ROOT / "ansible_roles"),
        work_dir=str(work_dir),
        private_key_file=str(hosts.key_file),
        known_hosts_file=str(hosts.known_hosts_file),
        host_key_checking="strict",
    )
