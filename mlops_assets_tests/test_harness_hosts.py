"""The rehearsal's test hosts (FACTS.md, "Hosts for Ansible without a cloud"): Debian 12 roots
in namespaces, real SSH, Ansible through ansible-runner, a Docker engine inside a host, and a
teardown that leaves nothing on the machine."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

from mlops_assets.offline_base import BASE_IMAGE
from mlops_assets.rehearsal.hosts import TestHosts, _alive, free_subnet, reap_stale

from .infra_helpers import reachable_ports

pytestmark = [pytest.mark.stack, pytest.mark.root]

TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def hosts(request):
    subnet = free_subnet()
    started = time.monotonic()
    with TestHosts([("api", str(subnet[10])), ("monitoring", str(subnet[11]))]) as test_hosts:
        TIMINGS["host_layer_s"] = round(test_hosts.timings.layers_s, 2)
        TIMINGS["hosts_up_s"] = round(test_hosts.timings.hosts_s + test_hosts.timings.network_s, 2)
        TIMINGS["enter_total_s"] = round(time.monotonic() - started, 2)
        yield test_hosts
    TIMINGS["teardown_s"] = round(test_hosts.timings.teardown_s, 2)
    leftovers = test_hosts.footprint()
    assert leftovers == [], f"teardown left {leftovers}"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\ntest-host timings (s): {json.dumps(TIMINGS)}")


def test_each_host_has_its_own_root_name_and_address(hosts):
    api = hosts.ssh("api", "hostname; cat /etc/debian_version; ip -4 -o addr show eth0")
    monitoring = hosts.ssh("monitoring", "hostname; ip -4 -o addr show eth0")
    assert api.stdout.splitlines()[0] == "api" and api.stdout.splitlines()[1].startswith("12.")
    assert hosts.address("api") + "/24" in api.stdout
    assert monitoring.stdout.splitlines()[0] == "monitoring"
    # A file written on one host is on neither the other host nor the machine.
    hosts.ssh("api", "echo api > /root/only-on-api")
    assert hosts.ssh("monitoring", "test -e /root/only-on-api", check=False).returncode == 1
    assert not os.path.exists("/root/only-on-api")
    # Its own PID namespace: PID 1 is the host's init, and the machine's processes are not seen.
    assert "tini" in hosts.exec("api", "cat /proc/1/cmdline").stdout
    assert str(os.getpid()) not in hosts.exec("api", "ls /proc").stdout.split()
    # admin logs in with the harness key and has passwordless sudo, like a cloud image.
    assert hosts.ssh("api", "sudo -n id -u", user="admin").stdout.strip() == "0"


def test_hosts_reach_each_other_and_nothing_else(hosts):
    monitoring_to_api = f"timeout 3 bash -c 'exec 3<>/dev/tcp/{hosts.address('api')}/22 && head -c 4 <&3'"
    assert hosts.ssh("monitoring", monitoring_to_api).stdout == "SSH-"
    # No default route: any address off the test subnet is unreachable from a host.
    routes = hosts.exec("api", "ip -4 route").stdout
    assert "default" not in routes
    # (`ip route get` only asks the routing table: no packet is sent anywhere.)
    assert hosts.exec("api", "ip route get 198.51.100.1", check=False).returncode != 0


# Accepts (and forgets) connections on the ports given, for 10 minutes at most.
LISTENER = """import socket, sys, threading, time
for port in sys.argv[1:]:
    server = socket.create_server(("0.0.0.0", int(port)))
    threading.Thread(target=lambda s=server: [s.accept()[0].close() for _ in iter(int, 1)], daemon=True).start()
time.sleep(600)
"""


def _connects(hosts, source: str, address: str, port: int) -> bool:
    """A TCP connection to address:port opens within 2 s, from a host or from this machine ("control")."""
    return reachable_ports(None if source == "control" else (hosts, source), address, {port}) == [port]


def test_the_emulators_security_groups_are_enforced_on_the_hosts(hosts, tmp_path):
    """sim's stand-in for security groups: what the EC2 emulator's rules admit into an
    instance reaches its test host, from this machine (127.0.0.1 in sim's CIDRs) or another
    host (a referenced group); anything else is dropped, and a rule added later applies."""
    from mlops_assets.rehearsal.emulator import DEBIAN_AMI_ID, Ec2Emulator
    from mlops_assets.rehearsal.security_groups import enforce

    api, monitoring = hosts.address("api"), hosts.address("monitoring")
    # Listeners on both hosts (sshd is on 22): what answers when the rules let a probe in.
    hosts.exec("api", "cat > /root/listen.py", input=LISTENER)
    hosts.exec("api", "setsid nohup python3 /root/listen.py 8000 8080 6379 >/dev/null 2>&1 &")
    hosts.exec("api", "for i in $(seq 50); do ss -Htln | grep -q ':6379 ' && exit 0; sleep 0.1; done; exit 1")
    emulator = Ec2Emulator.start(tmp_path)
    try:
        ec2 = emulator.client()
        vpc = ec2.create_vpc(CidrBlock=str(hosts.subnet))["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=str(hosts.subnet))["Subnet"]["SubnetId"]
        group = {name: ec2.create_security_group(GroupName=name, Description=name, VpcId=vpc)["GroupId"]
                 for name in ("api", "monitoring")}
        rule = lambda port, **source: {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, **source}
        ec2.authorize_security_group_ingress(GroupId=group["api"], IpPermissions=[
            rule(8000, IpRanges=[{"CidrIp": "127.0.0.0/8"}]),  # sim's api_client_cidrs: this machine
            rule(8080, UserIdGroupPairs=[{"GroupId": group["monitoring"]}]),  # the metrics: monitoring only
            rule(6379, UserIdGroupPairs=[{"GroupId": group["api"]}])])  # Ray's: the API group only
        ec2.authorize_security_group_ingress(GroupId=group["monitoring"], IpPermissions=[
            rule(22, IpRanges=[{"CidrIp": "127.0.0.1/32"}])])  # sim's admin_cidr
        for name, address in (("api", api), ("monitoring", monitoring)):
            ec2.run_instances(ImageId=DEBIAN_AMI_ID, MinCount=1, MaxCount=1, SubnetId=subnet,
                              PrivateIpAddress=address, SecurityGroupIds=[group[name]])
        assert enforce(hosts, ec2) == {"enforced": True, "rules": 6, "instances": 2}
        assert enforce(hosts, ec2)["rules"] == 6  # again: the chain replaced, the jumps not doubled
        rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True, check=True).stdout
        assert rules.count(f"-j {hosts.security_group_chain}") == 2, rules

        reached = {(source, port): _connects(hosts, source, api, port)
                   for source in ("control", "monitoring") for port in (8000, 8080, 6379, 22)}
        assert reached == {("control", 8000): True, ("control", 8080): False, ("control", 6379): False,
                           ("control", 22): False, ("monitoring", 8000): False, ("monitoring", 8080): True,
                           ("monitoring", 6379): False, ("monitoring", 22): False}
        assert _connects(hosts, "control", monitoring, 22) and not _connects(hosts, "api", monitoring, 22)
        # A rule added (what the next tofu_state apply does), enforced again: it applies.
        ec2.authorize_security_group_ingress(GroupId=group["api"], IpPermissions=[rule(22, IpRanges=[{"CidrIp": "127.0.0.1/32"}])])
        enforce(hosts, ec2)
        assert _connects(hosts, "control", api, 22) and not _connects(hosts, "monitoring", api, 22)
    finally:
        hosts.unhook_security_groups()
        Ec2Emulator.stop_recorded(tmp_path)
    assert hosts.security_group_chain not in subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
    assert _connects(hosts, "monitoring", api, 6379)  # without the chain, as before: everything on the bridge
    hosts.exec("api", "pkill -f '^python3 /root/listen'")


def test_ansible_ping_over_real_ssh(hosts, tmp_path, monkeypatch, record_property):
    import ansible_runner

    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    inventory = hosts.inventory({"api": ["api"], "monitoring": ["monitoring"]})
    addresses = {h["ansible_host"] for h in inventory["all"]["hosts"].values()}
    assert addresses == {hosts.address("api"), hosts.address("monitoring")}
    started = time.monotonic()
    result = ansible_runner.run(
        private_data_dir=str(tmp_path), inventory=inventory, host_pattern="all",
        module="ping", quiet=True, envvars={"ANSIBLE_HOME": str(tmp_path / "ansible")},
    )
    TIMINGS["ansible_ping_s"] = round(time.monotonic() - started, 2)
    assert result.status == "successful", open(result.stdout.name).read()[-3000:]
    assert set(result.stats["ok"]) == {"api", "monitoring"}
    # Facts as the roles will see them: Debian 12, become through sudo, no systemd.
    result = ansible_runner.run(
        private_data_dir=str(tmp_path), inventory=inventory, host_pattern="api", module="setup",
        module_args="gather_subset=!all,!min,distribution,service_mgr", quiet=True,
        envvars={"ANSIBLE_HOME": str(tmp_path / "ansible"), "ANSIBLE_BECOME": "true"},
    )
    assert result.status == "successful"
    facts = next(e["event_data"]["res"]["ansible_facts"] for e in result.events
                 if e["event"] == "runner_on_ok")
    assert facts["ansible_distribution_release"] == "bookworm"
    assert facts["ansible_service_mgr"] != "systemd"
    # Connection sharing stays in the harness's private ControlPath (closed by teardown).
    assert any(hosts.control_path_dir.iterdir())


def test_docker_runs_a_container_inside_the_api_host(hosts, tmp_path, record_property):
    from mlops_assets.offline_base import ensure_base_image
    from mlops_assets.rehearsal.engine import docker_client

    # The archive a user ships to hosts without a registry: the offline base, saved by the
    # machine's engine (Podman here).
    engine = docker_client()
    ensure_base_image(engine)
    archive = tmp_path / "base.tar"
    with open(archive, "wb") as handle:
        for chunk in engine.images.get(BASE_IMAGE).save(named=True):
            handle.write(chunk)
    hosts.copy_in("api", archive, "/root/base.tar")

    TIMINGS["dockerd_start_s"] = round(hosts.start_docker("api"), 2)
    started = time.monotonic()
    hosts.ssh("api", "docker load -i /root/base.tar")
    TIMINGS["docker_load_s"] = round(time.monotonic() - started, 2)
    probe = f"docker run --rm --network none {BASE_IMAGE} sh -c 'python3 -c \"print(1)\"; cat /proc/self/cgroup'"
    output = hosts.ssh("api", probe).stdout
    assert output.startswith("1\n")
    # It ran under the api host's dockerd, in the host's own cgroup namespace ...
    assert "\n0::/docker/" in output
    assert hosts.ssh("api", "docker info --format '{{.Name}}'").stdout.strip() == "api"
    assert "dockerd" not in hosts.exec("monitoring", "ps -e -o comm").stdout
    # ... which the machine sees below the api host's cgroup, not among its own containers.
    # A container left running is removed by teardown too (the fixture asserts it).
    container = hosts.ssh(
        "api", f"docker run -d -p 8000:8000 {BASE_IMAGE} python3 -m http.server 8000").stdout.strip()
    assert any((cgroup / "docker" / container).is_dir() for cgroup in hosts.hosts["api"].cgroups)
    assert container not in repr(engine.api.containers(all=True, quiet=True))
    # A published port answers on the api host's address, to the runner and to the other host
    # (what the api role and Prometheus' scrape need).
    url = f"http://{hosts.address('api')}:8000/"
    deadline = time.monotonic() + 20
    while True:
        try:
            assert urllib.request.urlopen(url, timeout=2).status == 200
            break
        except OSError:
            assert time.monotonic() < deadline, f"{url} did not answer"
            time.sleep(0.3)
    assert hosts.ssh("monitoring", f"curl -s -o /dev/null -w '%{{http_code}}' {url}").stdout == "200"


def test_teardown_leaves_nothing_behind_busy_hosts():
    subnet = free_subnet()
    with TestHosts([("solo", str(subnet[20]))]) as busy:
        busy.start_docker("solo")
        busy.ssh("solo", "nohup sleep 600 >/dev/null 2>&1 &")
        # An SSH control master like Ansible's, in the harness's private ControlPath.
        master = ["ssh", *busy.ssh_options(), "-o", "ControlMaster=yes", "-o", "ControlPersist=600",
                  "-o", f"ControlPath={busy.control_path_dir}/%C", "-f", "-N", f"root@{busy.address('solo')}"]
        subprocess.run(master, check=True, timeout=30)
        assert any(busy.control_path_dir.iterdir())
        assert busy.footprint()  # the check below can see things
    assert busy.footprint() == []
    assert str(subnet) not in subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout


def test_a_killed_test_run_is_reaped_by_the_next_one(tmp_path):
    """CI may kill a run mid-test: the next TestHosts removes what the dead one left."""
    subnet = free_subnet()
    script = textwrap.dedent(f"""
        import os, sys, time
        from mlops_assets.rehearsal.hosts import TestHosts
        hosts = TestHosts([("orphan", "{subnet[30]}")])
        hosts.up()
        print(hosts.id, flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": os.getcwd()})
    hid = child.stdout.readline().strip()
    assert hid, "the child harness did not come up"
    probe = TestHosts([("probe", str(subnet[31]))])
    probe.id = hid  # look at the orphan's footprint
    assert probe.footprint()
    child.send_signal(signal.SIGKILL)  # no teardown runs
    child.wait()
    assert hid in reap_stale()
    assert probe.footprint() == []


def test_hosts_with_a_state_file_outlive_their_creator_until_torn_down(tmp_path):
    """The rehearsal target's mode: one Dagster run brings hosts up, later runs reuse them."""
    subnet = free_subnet()
    state_file = tmp_path / "hosts.json"
    pairs = [("api", str(subnet[40])), ("monitoring", str(subnet[41]))]
    script = textwrap.dedent(f"""
        from pathlib import Path
        from mlops_assets.rehearsal.hosts import TestHosts
        hosts = TestHosts.ensure({pairs!r}, Path({str(state_file)!r}))
        print(hosts.id)
    """)
    created = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert created.returncode == 0, created.stderr
    hosts = TestHosts.attach(state_file)
    try:
        assert hosts.id == created.stdout.strip()
        assert hosts.running()
        reap_stale()  # its creator is gone, but the state file says it is wanted
        assert hosts.ssh("monitoring", "hostname").stdout.strip() == "monitoring"
        assert TestHosts.ensure(pairs, state_file).id == hosts.id  # reused, not rebuilt

        # A host added (api_instance_count + 1): the others keep running, what runs on them too.
        hosts.ssh("api", "nohup sleep 600 >/dev/null 2>&1 &")
        kept = {name: host.init_pid for name, host in hosts.hosts.items()}
        grown = TestHosts.ensure(sorted([*pairs, ("api-2", str(subnet[42]))]), state_file)
        assert grown.id == hosts.id and {n: grown.hosts[n].init_pid for n in kept} == kept
        assert grown.ssh("api-2", "hostname").stdout.strip() == "api-2"
        assert grown.ssh("api-2", f"timeout 3 bash -c '</dev/tcp/{subnet[40]}/22' && echo reached").stdout.strip() == "reached"
        assert grown.ssh("api", "pgrep -x sleep", check=False).stdout.strip(), "a kept host's process was lost"
        assert TestHosts.attach(state_file).hosts.keys() == grown.hosts.keys()
        # ... and removed again: gone from the machine, the others untouched.
        second = grown.hosts["api-2"]
        shrunk = TestHosts.ensure(pairs, state_file)
        assert shrunk.id == hosts.id and {n: shrunk.hosts[n].init_pid for n in kept} == kept
        assert second.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not second.dir.exists() and not _alive(second.init_pid)
        assert shrunk.ssh("api", "pgrep -x sleep", check=False).stdout.strip()
        hosts = shrunk
    finally:
        hosts.down()
    assert hosts.footprint() == []
    assert not state_file.exists()
