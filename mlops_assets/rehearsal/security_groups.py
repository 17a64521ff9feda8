"""The EC2 emulator's security groups, enforced on the `sim` hosts' bridge.

In `aws` a security group decides what reaches an instance; the emulator (moto) only records
the rules. So that the rehearsal finds a rule infra_tf lacks (or one it should not have), the
instances' ingress rules are translated into iptables rules of the harness (hosts.py):

- host to host: bridged frames pass the machine's FORWARD chain (br_netfilter,
  net.bridge.bridge-nf-call-iptables=1), where the harness's chain sends them here;
- this machine to a host (Ansible's SSH, the API, Prometheus, the tracking server): OUTPUT on
  the bridge. This machine stands for the operator: `sim` sets admin_cidr to 127.0.0.1/32 and
  api_client_cidrs to 127.0.0.0/8, so a rule whose block holds 127.0.0.1 admits the bridge's
  address (the machine's own on the hosts' subnet); any block also admits what it holds.

Like a security group, the chain is stateful (answers to allowed connections pass) and drops
what no rule allows, silently. Only ingress is enforced: the hosts reach nothing beyond the
test subnet anyway (the harness drops it), and their egress inside it (Alertmanager's webhook,
S3 on the bridge) is what infra_tf's egress rules allow in `aws` through their own addresses.

`enforce(hosts, ec2)` replaces the chain atomically (iptables-restore) with what the emulator
holds now: run after every `tofu_state` apply that changes the instances or the rules (the
sim Ansible resource runs it before each playbook). MLOPS_SIM_SECURITY_GROUPS=0 turns it off
(the hosts then accept everything from the bridge, as before this existed).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# sim's admin_cidr names this address for the machine that runs the pipeline.
CONTROL_ALIAS = ipaddress.ip_address("127.0.0.1")
BRIDGE_NETFILTER = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
OFF_ENV = "MLOPS_SIM_SECURITY_GROUPS"


@dataclass(frozen=True)
class Allow:
    """One iptables ACCEPT: to `destination` (an instance's address) from `source` (a CIDR)."""

    destination: str
    source: str
    protocol: str  # tcp, udp, icmp or all
    ports: tuple[int, int] | None  # None: every port (or not a port protocol)
    group: str  # the security group that holds the rule (the iptables comment)

    def iptables(self, chain: str) -> str:
        match = f"-A {chain} -s {self.source} -d {self.destination}"
        if self.protocol != "all":
            match += f" -p {self.protocol}"
            if self.ports and self.protocol in ("tcp", "udp"):
                low, high = self.ports
                match += f" --dport {low}" if low == high else f" --dport {low}:{high}"
        return f'{match} -m comment --comment "{self.group}" -j ACCEPT'


def read_emulator(ec2) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(the running instances as {"address", "groups"}, the security groups by id) of the
    emulator behind the boto3 EC2 client `ec2`."""
    instances = []
    for reservation in ec2.describe_instances()["Reservations"]:
        for instance in reservation["Instances"]:
            if instance.get("State", {}).get("Name") in ("running", "pending") and instance.get("PrivateIpAddress"):
                instances.append({"address": instance["PrivateIpAddress"],
                                  "groups": [g["GroupId"] for g in instance.get("SecurityGroups", [])]})
    groups = {group["GroupId"]: group for group in ec2.describe_security_groups()["SecurityGroups"]}
    return instances, groups


def ingress_allows(instances: list[dict[str, Any]], groups: dict[str, dict[str, Any]], control_address: str) -> list[Allow]:
    """Every ACCEPT that the instances' security groups' ingress rules make, with sources as
    addresses: a CIDR as itself (and as `control_address` when it holds 127.0.0.1), a
    referenced group as each address of the instances in it."""
    members: dict[str, list[str]] = {}
    for instance in instances:
        for group in instance["groups"]:
            members.setdefault(group, []).append(instance["address"])
    allows: list[Allow] = []
    for instance in instances:
        for group_id in instance["groups"]:
            group = groups.get(group_id) or {}
            name = group.get("GroupName") or group_id
            for permission in group.get("IpPermissions", []):
                protocol = str(permission.get("IpProtocol", "-1")).lower()
                protocol = {"-1": "all", "6": "tcp", "17": "udp", "1": "icmp"}.get(protocol, protocol)
                ports = None
                if protocol in ("tcp", "udp") and permission.get("FromPort") not in (None, -1):
                    ports = (int(permission["FromPort"]), int(permission.get("ToPort", permission["FromPort"])))
                sources: list[str] = []
                for block in permission.get("IpRanges", []):
                    network = ipaddress.ip_network(block["CidrIp"], strict=False)
                    sources.append(str(network))
                    if CONTROL_ALIAS in network:
                        sources.append(f"{control_address}/32")
                for pair in permission.get("UserIdGroupPairs", []):
                    sources += [f"{address}/32" for address in members.get(pair.get("GroupId"), [])]
                for source in dict.fromkeys(sources):
                    allows.append(Allow(instance["address"], source, protocol, ports, name))
    return allows


def restore_text(chain: str, allows: list[Allow], instances: list[dict[str, Any]]) -> str:
    """The iptables-restore input (--noflush) that makes `chain` exactly these rules: answers
    to allowed connections pass, then the ACCEPTs, then anything else to an instance drops."""
    lines = ["*filter", f":{chain} - [0:0]",
             f"-A {chain} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
             *(allow.iptables(chain) for allow in allows),
             *(f'-A {chain} -d {i["address"]}/32 -m comment --comment "no security group rule" -j DROP' for i in instances),
             "COMMIT", ""]
    return "\n".join(lines)


def enforce(hosts, ec2, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Make the harness of `hosts` (a TestHosts) drop what the emulator's security groups do
    not allow into its instances; returns {"enforced", "rules", "instances"}."""
    log = log or (lambda message: None)
    chain = hosts.security_group_chain
    if (os.environ.get(OFF_ENV) or "1").strip().lower() in ("0", "false", "no", "off"):
        hosts.unhook_security_groups()
        log(f"sim: security groups NOT enforced on the test hosts ({OFF_ENV}=0): they accept anything from the bridge")
        return {"enforced": False, "rules": 0, "instances": 0}
    _require_bridge_netfilter()
    instances, groups = read_emulator(ec2)
    allows = ingress_allows(instances, groups, hosts.bridge_address)
    _run(["iptables-restore", "-w", "--noflush"], restore_text(chain, allows, instances))
    hosts.hook_security_groups()
    log(f"sim: the emulator's security groups enforced on the test hosts: {len(allows)} rules into "
        f"{len(instances)} instances (chain {chain}; this machine is 127.0.0.1 to them)")
    return {"enforced": True, "rules": len(allows), "instances": len(instances)}


def _require_bridge_netfilter() -> None:
    """Bridged host-to-host frames reach iptables only with br_netfilter's switch on."""
    if not BRIDGE_NETFILTER.exists():
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True)
    try:
        if BRIDGE_NETFILTER.read_text().strip() != "1":
            BRIDGE_NETFILTER.write_text("1\n")
    except OSError as exc:
        raise RuntimeError(
            f"security groups cannot be enforced between the sim hosts: {BRIDGE_NETFILTER} is unavailable ({exc}); "
            f"load br_netfilter (modprobe br_netfilter), or set {OFF_ENV}=0 to rehearse without them") from None


def _run(command: list[str], stdin: str) -> None:
    done = subprocess.run(command, input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
