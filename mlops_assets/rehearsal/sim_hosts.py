"""The `sim` target's hosts at run time: for each instance the EC2 emulator reports (the
addresses in tofu_state's `ansible_inventory`), a test host of the harness (hosts.py) at that
address, reachable with the SSH key tofu_state generated, its host key printed on its
instance's console in the EC2 emulator (as cloud-init does), from where the Ansible resource pins it. And `teardown_sim(home)`: everything the rehearsal started, gone.

Used by the sim target's `RehearsalAnsible` (resources/ansible.py) and, through the
`infrastructure` resource (`RehearsalOpenTofu.teardown`), by `python -m mlops_assets.cli down`.

    hosts = ensure_sim_hosts(inventory, home / "rehearsal" / "hosts.json",
                             public_key_file=..., console_dir=..., log=print)
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Callable

from mlops_assets.offline_base import HOST_ADMIN_USER

from .hosts import TestHosts

Log = Callable[[str], None]


def inventory_pairs(inventory: dict) -> list[tuple[str, str]]:
    """(host name, address) of every host of an inventory, sorted: the hosts to bring up."""
    from mlops_assets.resources.ansible import inventory_hosts

    pairs = []
    for name, host_vars in inventory_hosts(inventory).items():
        address = host_vars.get("ansible_host")
        if not address:
            raise ValueError(f"host {name} of the sim inventory has no ansible_host")
        pairs.append((name, str(address)))
    return sorted(pairs)


def ensure_sim_hosts(
    inventory: dict,
    state_file: Path,
    *,
    public_key_file: Path,
    console_dir: Path | None,
    log: Log | None = None,
) -> TestHosts:
    """The test hosts of `inventory` (reused when they already run at those addresses, else
    brought up anew), each accepting `public_key_file` for root and admin, each printing its
    host key on its instance's console in `console_dir` (the EC2 emulator's), as cloud-init
    prints an instance's keys: the Ansible resource pins them from there."""
    log = log or (lambda message: None)
    pairs = inventory_pairs(inventory)
    started = time.monotonic()
    hosts = TestHosts.ensure(pairs, Path(state_file))
    seconds = time.monotonic() - started
    fresh = hosts.timings.hosts_s > 0  # ensure() reports up() timings only for new hosts
    log(f"sim: test hosts {', '.join(f'{n}={a}' for n, a in pairs)} "
        f"{'brought up' if fresh else 'already running'} in {seconds:.1f}s (state {state_file})")
    key = Path(public_key_file).read_text().strip()
    quoted = shlex.quote(key)
    for name in hosts.hosts:
        for home, owner in (("/root", "root"), (f"/home/{HOST_ADMIN_USER}", HOST_ADMIN_USER)):
            keys = f"{home}/.ssh/authorized_keys"
            hosts.exec(name, f"grep -qxF {quoted} {keys} 2>/dev/null || "
                             f"{{ echo {quoted} >> {keys}; chown {owner}: {keys}; chmod 600 {keys}; }}")
    if console_dir is not None:
        _print_host_keys(hosts, inventory, Path(console_dir))
    return hosts


def _print_host_keys(hosts: TestHosts, inventory: dict, console_dir: Path) -> None:
    """What cloud-init prints on a new instance's console: its SSH host keys between markers."""
    from mlops_assets.resources.ansible import HOST_KEYS_BEGIN, HOST_KEYS_END, inventory_hosts

    from .emulator_server import console_file

    for name, host_vars in inventory_hosts(inventory).items():
        instance = host_vars.get("instance_id")
        if not instance or name not in hosts.hosts:
            continue
        path = console_file(console_dir, str(instance))
        text = (f"Cloud-init finished on {name}\n{HOST_KEYS_BEGIN}\n"
                f"{hosts.hosts[name].host_public_key} root@{name}\n{HOST_KEYS_END}\n")
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


def teardown_sim(home: Path, log: Log = print) -> dict[str, object]:
    """Undo the rehearsal of MLOPS_HOME `home`: the test hosts (namespaces, processes, mounts,
    bridge, firewall chain), then the EC2 emulator. OpenTofu's destroy is the caller's job
    (the destroy_infrastructure job) and must run first, while the emulator answers."""
    from .emulator import Ec2Emulator

    home = Path(home)
    done: dict[str, object] = {"hosts_left": []}
    state_file = home / "rehearsal" / "hosts.json"
    if state_file.exists():
        hosts = TestHosts.attach(state_file)
        hosts.down()
        done["hosts_left"] = hosts.footprint()
        log(f"sim: test hosts {', '.join(hosts.hosts)} removed"
            + (f"; LEFT: {done['hosts_left']}" if done["hosts_left"] else ""))
    else:
        log("sim: no test hosts recorded")
    done["emulator_stopped"] = Ec2Emulator.stop_recorded(home / "rehearsal" / "emulator")
    log("sim: EC2 emulator stopped" if done["emulator_stopped"] else "sim: no EC2 emulator recorded")
    return done
