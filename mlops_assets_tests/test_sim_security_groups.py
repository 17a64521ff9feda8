"""The translation of the EC2 emulator's security groups into the sim hosts' iptables rules
(rehearsal/security_groups.py); test_harness_hosts.py enforces them on live hosts."""

import pytest

from mlops_assets.rehearsal.security_groups import Allow, ingress_allows, restore_text

pytestmark = pytest.mark.unit

CONTROL = "10.9.0.1"  # the bridge's address: this machine on the hosts' subnet
INSTANCES = [{"address": "10.9.0.10", "groups": ["sg-api"]}, {"address": "10.9.0.11", "groups": ["sg-api"]},
             {"address": "10.9.0.12", "groups": ["sg-mon"]}]
GROUPS = {
    "sg-api": {"GroupId": "sg-api", "GroupName": "mlops-api", "IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 8000, "IpRanges": [{"CidrIp": "127.0.0.0/8"}]},
        {"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080, "UserIdGroupPairs": [{"GroupId": "sg-mon"}]},
        {"IpProtocol": "tcp", "FromPort": 10002, "ToPort": 10100, "UserIdGroupPairs": [{"GroupId": "sg-api"}]},
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "203.0.113.7/32"}]},
    ]},
    "sg-mon": {"GroupId": "sg-mon", "GroupName": "mlops-monitoring", "IpPermissions": [
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "127.0.0.1/32"}]},
    ]},
}


def test_each_rule_becomes_accepts_from_addresses_into_each_instance_of_its_group():
    allows = ingress_allows(INSTANCES, GROUPS, CONTROL)
    into = {(a.source, a.protocol, a.ports) for a in allows if a.destination == "10.9.0.10"}
    assert into == {
        # a block that holds 127.0.0.1 (sim's admin_cidr / api_client_cidrs) admits this machine too
        ("127.0.0.0/8", "tcp", (8000, 8000)), (f"{CONTROL}/32", "tcp", (8000, 8000)),
        # a referenced group: each address of its instances
        ("10.9.0.12/32", "tcp", (8080, 8080)),
        # the self-referencing rule: every API host, itself included
        ("10.9.0.10/32", "tcp", (10002, 10100)), ("10.9.0.11/32", "tcp", (10002, 10100)),
        # an operator's address elsewhere: as it is, and not this machine
        ("203.0.113.7/32", "tcp", (22, 22)),
    }
    assert {a.group for a in allows if a.destination == "10.9.0.10"} == {"mlops-api"}
    # "all" protocols, no ports
    assert {(a.source, a.protocol, a.ports) for a in allows if a.destination == "10.9.0.12"} == {
        ("127.0.0.1/32", "all", None), (f"{CONTROL}/32", "all", None)}


def test_the_chain_passes_answers_then_the_accepts_then_drops_the_rest_into_each_instance():
    allows = [Allow("10.9.0.10", "10.9.0.12/32", "tcp", (8080, 8080), "mlops-api"),
              Allow("10.9.0.10", "10.9.0.11/32", "tcp", (10002, 10100), "mlops-api"),
              Allow("10.9.0.12", f"{CONTROL}/32", "all", None, "mlops-monitoring")]
    lines = restore_text("SG", allows, INSTANCES).splitlines()
    assert lines[:3] == ["*filter", ":SG - [0:0]", "-A SG -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"]
    assert lines[3:6] == [
        '-A SG -s 10.9.0.12/32 -d 10.9.0.10 -p tcp --dport 8080 -m comment --comment "mlops-api" -j ACCEPT',
        '-A SG -s 10.9.0.11/32 -d 10.9.0.10 -p tcp --dport 10002:10100 -m comment --comment "mlops-api" -j ACCEPT',
        f'-A SG -s {CONTROL}/32 -d 10.9.0.12 -m comment --comment "mlops-monitoring" -j ACCEPT']
    # Every instance drops what no rule allows; anything else (not to an instance) returns.
    assert lines[6:9] == [f'-A SG -d {i["address"]}/32 -m comment --comment "no security group rule" -j DROP' for i in INSTANCES]
    assert lines[9:] == ["COMMIT"]


def test_an_instance_without_any_rule_gets_only_the_drop():
    instances = [{"address": "10.9.0.20", "groups": ["sg-empty"]}]
    assert ingress_allows(instances, {"sg-empty": {"GroupId": "sg-empty", "IpPermissions": []}}, CONTROL) == []
    assert "-A SG -d 10.9.0.20/32" in restore_text("SG", [], instances)
