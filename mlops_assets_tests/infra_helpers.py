"""Helpers of the infra tests: the emulator + test-double provider environment, what the
emulator holds, a timings record for the closing note, and the probes that check security
groups on live hosts (what listens on a host, what answers from where)."""

from __future__ import annotations

import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mlops_assets.settings import PROJECT_ROOT

INFRA_DIR = PROJECT_ROOT / "infra_tf"
RAY_PORTS = {6379, 8076, 8265, 10001, 52365}
TIMINGS_FILE = Path(os.environ.get("MLOPS_HOME", "/tmp")) / "infra_timings.json"


def record_timings(name: str, timings: dict) -> None:
    """Collect timings of this session's infra tests (printed by pytest -s, kept in MLOPS_HOME)."""
    data = json.loads(TIMINGS_FILE.read_text()) if TIMINGS_FILE.exists() else {}
    data[name] = timings
    TIMINGS_FILE.write_text(json.dumps(data, indent=2))
    print(f"\n[infra timings] {name}: {json.dumps(timings)}")


def ray_port_ranges(ports: dict[str, int]) -> list[tuple[int, int]]:
    """infra_tf's ray_ports (name -> port) as the sorted port ranges its rules open: each port
    alone, the workers' range and the Serve replicas' range."""
    ranges = [(port, port) for name, port in ports.items() if not name.endswith(("_worker", "_min", "_max"))]
    return sorted(ranges + [(ports["min_worker"], ports["max_worker"]), (ports["serve_replica_min"], ports["serve_replica_max"])])


def listening_ports(hosts, name: str, address: str) -> set[int]:
    """The TCP ports that listen on host `name` at `address` (or on every address)."""
    ports = set()
    for line in hosts.exec(name, "ss -Htln").stdout.splitlines():
        local = line.split()[3]
        bound, port = local.rsplit(":", 1)
        if bound.strip("[]").removeprefix("::ffff:") in ("0.0.0.0", "*", "::", address):
            ports.add(int(port))
    return ports


def reachable_ports(source, address: str, ports: set[int]) -> list[int]:
    """Which of `ports` at `address` accept a TCP connection within 2 s, probed all at once
    from this machine (source None) or from inside a host ((hosts, name))."""
    if source is None:
        def connects(port: int) -> bool:
            with socket.socket() as sock:
                sock.settimeout(2)
                return sock.connect_ex((address, port)) == 0

        with ThreadPoolExecutor(max_workers=64) as pool:
            return sorted(port for port, ok in zip(ports, pool.map(connects, ports)) if ok)
    hosts, name = source
    probes = " ".join(f"(timeout 2 bash -c 'exec 3<>/dev/tcp/{address}/{port}' 2>/dev/null && echo {port}) &" for port in sorted(ports))
    return sorted(int(port) for port in hosts.exec(name, f"{probes} wait").stdout.split())


def ingress_rules(ec2, group_id: str, egress: bool = False) -> list[dict]:
    rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group_id]}])["SecurityGroupRules"]
    return [r for r in rules if r["IsEgress"] == egress]


def live_instances(ec2) -> list[dict]:
    reservations = ec2.describe_instances()["Reservations"]
    return [i for r in reservations for i in r["Instances"] if i["State"]["Name"] not in ("terminated", "shutting-down")]


def assert_expected_security(ec2, outputs: dict, admin_cidr: str, client_cidrs: list[str],
                             tracking_cidrs: list[str] = (), tracking_port: int = 5000) -> None:
    """The security-group rules infra_tf/ promises, read back from the emulator (the MLflow
    tracking port: from admin_cidr and the extra tracking_cidrs only)."""
    api_sg = outputs["security_group_ids"]["api"]
    monitoring_sg = outputs["security_group_ids"]["monitoring"]

    api = ingress_rules(ec2, api_sg)
    api_by_port: dict[int, list[dict]] = {}
    for rule in api:
        api_by_port.setdefault(rule["FromPort"], []).append(rule)
    assert set(api_by_port) == {8000, 8080, 9100, 22}, api_by_port
    assert sorted(r["CidrIpv4"] for r in api_by_port[8000]) == sorted(client_cidrs)
    for port in (8080, 9100):  # the API's metrics and node_exporter: the monitoring host only
        assert [r.get("ReferencedGroupInfo", {}).get("GroupId") for r in api_by_port[port]] == [monitoring_sg], port
        assert "CidrIpv4" not in api_by_port[port][0], port
    assert [r["CidrIpv4"] for r in api_by_port[22]] == [admin_cidr]

    monitoring = ingress_rules(ec2, monitoring_sg)
    sources = sorted((r["FromPort"], r.get("CidrIpv4") or r["ReferencedGroupInfo"]["GroupId"]) for r in monitoring)
    assert sources == sorted([(22, admin_cidr), (9090, admin_cidr), (9091, admin_cidr), (9093, admin_cidr),
                              (3000, admin_cidr), (9100, monitoring_sg)]
                             + [(tracking_port, cidr) for cidr in sorted({admin_cidr, *tracking_cidrs})])
    for rule in api + monitoring:
        assert rule["IpProtocol"] == "tcp" and rule["FromPort"] == rule["ToPort"]
        assert rule["FromPort"] not in RAY_PORTS
        assert rule.get("CidrIpv4") != "0.0.0.0/0" or rule["FromPort"] == 8000

    # Egress is exactly what the module declares: the default allow-all rule is gone.
    api_egress = sorted((r["IpProtocol"], r["FromPort"]) for r in ingress_rules(ec2, api_sg, egress=True))
    assert api_egress == [("tcp", 80), ("tcp", 443)]
    monitoring_egress = ingress_rules(ec2, monitoring_sg, egress=True)
    assert sorted(r["FromPort"] for r in monitoring_egress) == [80, 443, 8080, 9100, 9100]
    scrape = [r for r in monitoring_egress if r["FromPort"] == 8080][0]
    assert scrape["ReferencedGroupInfo"]["GroupId"] == api_sg
    node_scrapes = sorted(r["ReferencedGroupInfo"]["GroupId"] for r in monitoring_egress if r["FromPort"] == 9100)
    assert node_scrapes == sorted([api_sg, monitoring_sg])


def assert_expected_instances(ec2, outputs: dict) -> None:
    instances = {i["InstanceId"]: i for i in live_instances(ec2)}
    assert set(instances) == set(outputs["instance_ids"].values())
    for role, instance_id in outputs["instance_ids"].items():
        instance = instances[instance_id]
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        assert tags["Role"] == role and tags["ManagedBy"] == "opentofu"
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        assert instance["PrivateIpAddress"] == outputs[f"{role}_private_ip"]
        assert [g["GroupId"] for g in instance["SecurityGroups"]] == [outputs["security_group_ids"][role]]
        volume_id = instance["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
        assert ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["Encrypted"] is True


def assert_expected_artifact_store(emulator, outputs: dict) -> None:
    """The MLflow artifact bucket and the tracking server's instance profile, read back from
    the emulator: private, encrypted, versioned, TLS-only, old versions expire; the role may
    list the bucket and read/write its objects and nothing else; only the monitoring host
    carries the profile."""
    s3, iam, ec2 = emulator.client("s3"), emulator.client("iam"), emulator.client("ec2")
    bucket = outputs["artifact_bucket_name"]
    assert outputs["artifact_bucket_arn"] == f"arn:aws:s3:::{bucket}"
    blocks = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert blocks == {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                      "RestrictPublicBuckets": True}
    [encryption] = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert encryption["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    [statement] = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
    assert statement["Effect"] == "Deny" and statement["Principal"] == "*" and statement["Action"] == "s3:*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert sorted(statement["Resource"]) == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    [rule] = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rule["Status"] == "Enabled" and rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    assert rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 7

    profile = iam.get_instance_profile(InstanceProfileName=outputs["tracking_server_instance_profile"])["InstanceProfile"]
    [role] = profile["Roles"]
    trust = role["AssumeRolePolicyDocument"]["Statement"]
    assert [(s["Effect"], s["Principal"], s["Action"]) for s in trust] == [
        ("Allow", {"Service": "ec2.amazonaws.com"}, "sts:AssumeRole")]
    names = iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]
    assert iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"] == []
    allowed: dict[str, set] = {}
    for name in names:
        document = iam.get_role_policy(RoleName=role["RoleName"], PolicyName=name)["PolicyDocument"]
        for statement in document["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
            resources = [statement["Resource"]] if isinstance(statement["Resource"], str) else statement["Resource"]
            assert all("*" not in action for action in actions), actions
            for resource in resources:
                allowed.setdefault(resource, set()).update(actions)
    assert allowed == {
        f"arn:aws:s3:::{bucket}": {"s3:ListBucket", "s3:GetBucketLocation"},
        f"arn:aws:s3:::{bucket}/*": {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"},
        # Prometheus's EC2 discovery of the API hosts: read-only, and AWS scopes it to "*" only.
        "*": {"ec2:DescribeInstances"},
    }

    instances = {i["InstanceId"]: i for i in live_instances(ec2)}
    monitoring = instances[outputs["instance_ids"]["monitoring"]]
    assert monitoring["IamInstanceProfile"]["Arn"] == profile["Arn"]
    assert "IamInstanceProfile" not in instances[outputs["instance_ids"]["api"]]
    host = next(iter(outputs["ansible_inventory"]["all"]["children"]["monitoring"]["hosts"].values()))
    assert outputs["tracking_server_url"] == f"http://{host['ansible_host']}:5000"
    monitoring_vars = outputs["ansible_inventory"]["all"]["children"]["monitoring"]["vars"]
    assert monitoring_vars["tracking_port"] == 5000 and monitoring_vars["mlflow_artifact_bucket"] == bucket


def assert_expected_load_balancer(emulator, outputs: dict, client_cidrs: list[str], subnet_ids: list[str],
                                  certificate_arn: str | None = None, api_port: int = 8000) -> dict:
    """The API's application load balancer, read back from the emulator: in the given subnets,
    behind its own security group (80, and 443 with a certificate, from the client networks
    only; out to the API group's API port only, which admits it); a target group on the API
    port whose health check is /readyz, with every API host registered; port 80 forwarding (no
    certificate) or redirecting to an HTTPS listener with a TLS 1.2+ policy. Returns what it read."""
    ec2, elb = emulator.client("ec2"), emulator.client("elbv2")
    [balancer] = [b for b in elb.describe_load_balancers()["LoadBalancers"]
                  if b["DNSName"] == outputs["load_balancer_dns_name"]]
    api_vars = outputs["ansible_inventory"]["all"]["children"]["api"]["vars"]
    assert api_vars["api_load_balancer"] == balancer["DNSName"]
    assert balancer["Type"] == "application" and balancer["Scheme"] == "internet-facing"
    assert sorted(z["SubnetId"] for z in balancer["AvailabilityZones"]) == sorted(subnet_ids)
    attributes = {a["Key"]: a["Value"] for a in
                  elb.describe_load_balancer_attributes(LoadBalancerArn=balancer["LoadBalancerArn"])["Attributes"]}
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"
    assert attributes["deletion_protection.enabled"] == "false"

    lb_sg, api_sg = outputs["security_group_ids"]["load_balancer"], outputs["security_group_ids"]["api"]
    assert balancer["SecurityGroups"] == [lb_sg]
    ports = [80, 443] if certificate_arn else [80]
    ingress = sorted((r["FromPort"], r["ToPort"], r.get("CidrIpv4")) for r in ingress_rules(ec2, lb_sg))
    assert ingress == sorted((port, port, cidr) for port in ports for cidr in client_cidrs)
    [egress] = ingress_rules(ec2, lb_sg, egress=True)
    assert (egress["FromPort"], egress["ToPort"], egress["ReferencedGroupInfo"]["GroupId"]) == (api_port, api_port, api_sg)
    assert "CidrIpv4" not in egress
    from_lb = [r for r in ingress_rules(ec2, api_sg) if (r.get("ReferencedGroupInfo") or {}).get("GroupId") == lb_sg]
    assert [(r["FromPort"], r["ToPort"]) for r in from_lb] == [(api_port, api_port)]

    [group] = elb.describe_target_groups(LoadBalancerArn=balancer["LoadBalancerArn"])["TargetGroups"]
    assert (group["Protocol"], group["Port"], group["TargetType"]) == ("HTTP", api_port, "instance")
    assert group["HealthCheckPath"] == "/readyz" and group["HealthCheckPort"] == "traffic-port"
    assert group["Matcher"] == {"HttpCode": "200"} and group["HealthCheckEnabled"] is True
    assert set(group["LoadBalancerArns"]) == {balancer["LoadBalancerArn"]}, group["LoadBalancerArns"]
    targets = elb.describe_target_health(TargetGroupArn=group["TargetGroupArn"])["TargetHealthDescriptions"]
    assert sorted((t["Target"]["Id"], t["Target"]["Port"]) for t in targets) == sorted(
        (host["instance_id"], api_port) for host in outputs["api_hosts"])

    listeners = {listener["Port"]: listener
                 for listener in elb.describe_listeners(LoadBalancerArn=balancer["LoadBalancerArn"])["Listeners"]}
    assert sorted(listeners) == ports
    assert listeners[80]["Protocol"] == "HTTP"
    if certificate_arn:
        [redirect] = listeners[80]["DefaultActions"]
        assert redirect["Type"] == "redirect" and "TargetGroupArn" not in redirect
        assert redirect["RedirectConfig"] == {"Protocol": "HTTPS", "Port": "443", "StatusCode": "HTTP_301"}
        https = listeners[443]
        assert https["Protocol"] == "HTTPS" and https["SslPolicy"] == "ELBSecurityPolicy-TLS13-1-2-2021-06"
        assert https["Certificates"] == [{"CertificateArn": certificate_arn}]
        assert https["DefaultActions"] == [{"Type": "forward", "TargetGroupArn": group["TargetGroupArn"]}]
    else:
        assert listeners[80]["DefaultActions"] == [{"Type": "forward", "TargetGroupArn": group["TargetGroupArn"]}]
    return {"load_balancer": balancer, "target_group": group, "listeners": listeners}


def load_balancers_left(emulator) -> list[str]:
    """Load balancers and target groups the emulator still holds."""
    elb = emulator.client("elbv2")
    return ([b["LoadBalancerName"] for b in elb.describe_load_balancers()["LoadBalancers"]]
            + [g["TargetGroupName"] for g in elb.describe_target_groups()["TargetGroups"]])
