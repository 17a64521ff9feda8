"""Static checks of infra_tf/: formatting, structure (python-hcl2) and the security promises
that can be read from the code itself."""

import re
import subprocess

import hcl2
import pytest

from mlops_assets.resources.opentofu import OpenTofu

from .infra_helpers import INFRA_DIR, RAY_PORTS

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def module():
    parsed = {}
    for path in sorted(INFRA_DIR.glob("*.tf")):
        with open(path) as handle:
            parsed[path.name] = hcl2.load(handle)
    return parsed


def _blocks(module, kind):
    for parsed in module.values():
        for block in parsed.get(kind, []):
            yield block


def _resources(module, type_):
    found = {}
    for block in _blocks(module, "resource"):
        for rtype, named in block.items():
            if rtype.strip('"') == type_:
                for name, body in named.items():
                    found[name.strip('"')] = body
    return found


def _unquote(value):
    return value.strip('"') if isinstance(value, str) else value


@pytest.mark.parametrize("engine", ["embedded", "auto"])
def test_fmt_check(tmp_path, engine):
    tofu = OpenTofu(module_dir=str(INFRA_DIR), work_dir=str(tmp_path), engine=engine)
    result = subprocess.run(
        [*tofu.command(), "fmt", "-check", "-recursive", "-diff", str(INFRA_DIR)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_module_layout_and_versions(module):
    assert {"versions.tf", "variables.tf", "main.tf", "outputs.tf"} <= set(module)
    terraform = module["versions.tf"]["terraform"][0]
    assert _unquote(terraform["required_version"]) == ">= 1.6.0"
    aws = terraform["required_providers"][0]["aws"]
    assert _unquote(aws["source"]) == "hashicorp/aws" and _unquote(aws["version"]) == "~> 5.0"


def test_every_variable_is_described_and_typed(module):
    variables = _variables(module)
    for name, body in variables.items():
        assert body.get("description"), f"variable {name} has no description"
        assert body.get("type"), f"variable {name} has no type"
    # The admin network has no default at all (so never 0.0.0.0/0) and refuses the Internet.
    assert "default" not in variables["admin_cidr"]
    assert "0.0.0.0/0" in str(variables["admin_cidr"]["validation"])
    # The tracking server's extra networks: none by default, and the Internet is refused there too.
    assert variables["tracking_client_cidrs"]["default"] == []
    assert "0.0.0.0/0" in str(variables["tracking_client_cidrs"]["validation"])
    # Destroying the module never deletes the registry's artifacts unless asked to.
    assert variables["artifact_bucket_force_destroy"]["default"] is False
    for port, default in {"api_port": 8000, "metrics_port": 8080, "prometheus_port": 9090, "grafana_port": 3000,
                          "node_exporter_port": 9100, "pushgateway_port": 9091, "alertmanager_port": 9093,
                          "tracking_port": 5000}.items():
        assert variables[port]["default"] == default


def test_security_group_rules_are_separate_described_and_least_privilege(module):
    ingress = _resources(module, "aws_vpc_security_group_ingress_rule")
    egress = _resources(module, "aws_vpc_security_group_egress_rule")
    assert ingress and egress
    for name, rule in {**ingress, **egress}.items():
        assert _unquote(rule.get("description")), f"rule {name} has no description"
    assert not _resources(module, "aws_security_group_rule"), "use the aws_vpc_security_group_*_rule resources"
    for group in _resources(module, "aws_security_group").values():
        assert "ingress" not in group and "egress" not in group, "no inline rules"
    # Who may reach what.
    assert "var.api_client_cidrs" in str(ingress["api_clients"]["for_each"])
    assert "aws_security_group.monitoring.id" in str(ingress["api_metrics_from_monitoring"]["referenced_security_group_id"])
    assert "cidr_ipv4" not in ingress["api_metrics_from_monitoring"]
    # node_exporter on both hosts: from the monitoring host's group only.
    node_exporter = ingress["node_exporter_from_monitoring"]
    assert "aws_security_group.monitoring.id" in str(node_exporter["referenced_security_group_id"])
    assert "cidr_ipv4" not in node_exporter
    assert {"api", "monitoring"} == set(node_exporter["for_each"]) and "var.node_exporter_port" in str(node_exporter["from_port"])
    for name in ("api_ssh", "monitoring_ssh", "monitoring_prometheus", "monitoring_pushgateway", "monitoring_alertmanager",
                 "monitoring_grafana"):
        assert "var.admin_cidr" in str(ingress[name]["cidr_ipv4"]), name
    # No literal port of Ray's anywhere in the rules.
    for name, rule in {**ingress, **egress}.items():
        for key in ("from_port", "to_port"):
            assert rule[key] not in RAY_PORTS, name


def test_ray_ports_open_between_api_hosts_only(module):
    """Ray's rules exist only with more than one API host, each way, from and to the API group
    itself (never a CIDR), with ports from var.ray_ports."""
    for kind in ("aws_vpc_security_group_ingress_rule", "aws_vpc_security_group_egress_rule"):
        rule = _resources(module, kind)["api_ray"]
        assert "local.ray_port_ranges" in str(rule["for_each"]), kind
        assert "aws_security_group.api.id" in str(rule["security_group_id"]), kind
        assert "aws_security_group.api.id" in str(rule["referenced_security_group_id"]), kind
        assert not {"cidr_ipv4", "cidr_ipv6", "prefix_list_id"} & set(rule), kind
    ranges = next(block["ray_port_ranges"] for block in _blocks(module, "locals") if "ray_port_ranges" in block)
    assert "var.api_instance_count > 1" in str(ranges) and "var.ray_ports" in str(ranges)
    api = _resources(module, "aws_instance")["api"]
    assert "var.api_instance_count" in str(api["count"]) and "local.api_subnets" in str(api["subnet_id"])


def _variables(module) -> dict:
    variables = {}
    for block in _blocks(module, "variable"):
        variables.update({k.strip('"'): v for k, v in block.items()})
    return variables


def _local(module, name):
    return next(block[name] for block in _blocks(module, "locals") if name in block)


LOAD_BALANCER_RESOURCES = {
    "aws_lb": ["api"],
    "aws_lb_target_group": ["api"],
    "aws_lb_target_group_attachment": ["api"],
    "aws_lb_listener": ["api_http", "api_https"],
    "aws_security_group": ["load_balancer"],
    "aws_vpc_security_group_ingress_rule": ["api_from_load_balancer", "load_balancer_clients"],
    "aws_vpc_security_group_egress_rule": ["load_balancer_to_api"],
}


def test_load_balancer_only_in_front_of_more_than_one_api_host(module):
    """Every load-balancer resource exists only when local.load_balanced (load_balancer on, the
    default, and more than one API host); one attachment per API host; HTTPS only with a
    certificate; the subnets are looked up (their zones and VPC) only then too."""
    variables = _variables(module)
    assert variables["load_balancer"]["default"] is True and "api_instance_count > 1" in variables["load_balancer"]["description"]
    assert variables["load_balancer_subnet_ids"]["default"] == []
    assert variables["load_balancer_certificate_arn"]["default"] is None
    assert _local(module, "load_balanced") == "${var.load_balancer && var.api_instance_count > 1}"
    for type_, names in LOAD_BALANCER_RESOURCES.items():
        resources = _resources(module, type_)
        for name in names:
            gate = str(resources[name].get("count") or resources[name].get("for_each"))
            assert "local.load_balanced" in gate or gate == "${local.load_balancer_clients}", (type_, name)
    assert "local.load_balanced" in str(_local(module, "load_balancer_clients"))
    attachment = _resources(module, "aws_lb_target_group_attachment")["api"]
    assert attachment["count"] == "${local.load_balanced ? var.api_instance_count : 0}"
    assert attachment["target_id"] == "${aws_instance.api[count.index].id}" and attachment["port"] == "${var.api_port}"
    https = _resources(module, "aws_lb_listener")["api_https"]
    assert "var.load_balancer_certificate_arn != null" in https["count"]
    subnet = next(block['"aws_subnet"']['"load_balancer"'] for block in _blocks(module, "data") if '"aws_subnet"' in block)
    assert "local.load_balanced" in subnet["count"]


def test_load_balancer_checks_readyz_and_needs_two_zones(module):
    """The target group: HTTP to the API port of the instances, healthy only while /readyz
    answers 200. The ALB: drops invalid headers, no deletion protection (make down removes it),
    a precondition that asks for subnets in two zones and names the variables to set."""
    group = _resources(module, "aws_lb_target_group")["api"]
    assert group["port"] == "${var.api_port}" and _unquote(group["protocol"]) == "HTTP"
    assert _unquote(group["target_type"]) == "instance" and group["vpc_id"] == "${local.load_balancer_vpc_id}"
    [check] = group["health_check"]
    assert _unquote(check["path"]) == "/readyz" and _unquote(check["matcher"]) == "200"
    assert _unquote(check["port"]) == "traffic-port" and _unquote(check["protocol"]) == "HTTP"
    assert check["enabled"] is True and check["timeout"] < check["interval"] <= 30
    assert 2 <= check["healthy_threshold"] <= 5 and 2 <= check["unhealthy_threshold"] <= 5

    balancer = _resources(module, "aws_lb")["api"]
    assert balancer["drop_invalid_header_fields"] is True and balancer["enable_deletion_protection"] is False
    assert _unquote(balancer["load_balancer_type"]) == "application"
    assert balancer["security_groups"] == ["${aws_security_group.load_balancer[0].id}"]
    assert balancer["subnets"] == "${local.load_balancer_subnets}"
    [precondition] = balancer["lifecycle"][0]["precondition"]
    assert "data.aws_subnet.load_balancer" in precondition["condition"] and "availability_zone" in precondition["condition"]
    assert "load_balancer_subnet_ids" in precondition["error_message"] and "load_balancer = false" in precondition["error_message"]
    assert "var.load_balancer_subnet_ids" in _local(module, "load_balancer_subnets")
    assert "local.api_subnets" in _local(module, "load_balancer_subnets")
    assert "var.vpc_id" in _local(module, "load_balancer_vpc_id")

    listeners = _resources(module, "aws_lb_listener")
    https = listeners["api_https"]
    assert https["port"] == 443 and _unquote(https["protocol"]) == "HTTPS"
    assert _unquote(https["ssl_policy"]) == "ELBSecurityPolicy-TLS13-1-2-2021-06"
    assert https["certificate_arn"] == "${var.load_balancer_certificate_arn}"
    assert https["default_action"][0]["target_group_arn"] == "${aws_lb_target_group.api[0].arn}"
    http = listeners["api_http"]
    assert http["port"] == 80 and _unquote(http["protocol"]) == "HTTP"
    [action] = http["default_action"]
    assert action["type"] == '${var.load_balancer_certificate_arn == null ? "forward" : "redirect"}'
    [redirect] = action["dynamic"][0]['"redirect"']["content"]
    assert (_unquote(redirect["protocol"]), _unquote(redirect["port"])) == ("HTTPS", "443")


def test_load_balancer_group_admits_the_api_clients_and_reaches_the_api_port_only(module):
    """The load balancer's own group: 80 (and 443) from each of api_client_cidrs and from no
    other CIDR; out only to the API group's API port; the API group admits the API port from it."""
    ingress = _resources(module, "aws_vpc_security_group_ingress_rule")
    egress = _resources(module, "aws_vpc_security_group_egress_rule")
    clients = ingress["load_balancer_clients"]
    assert clients["security_group_id"] == "${aws_security_group.load_balancer[0].id}"
    assert clients["cidr_ipv4"] == "${each.value.cidr}" and clients["from_port"] == clients["to_port"] == "${each.value.port}"
    pairs = _local(module, "load_balancer_clients")
    assert "setproduct(toset(var.api_client_cidrs), local.load_balancer_ports)" in pairs
    assert _local(module, "load_balancer_ports") == "${var.load_balancer_certificate_arn == null ? [80] : [80, 443]}"
    to_api = egress["load_balancer_to_api"]
    assert to_api["security_group_id"] == "${aws_security_group.load_balancer[0].id}"
    assert to_api["referenced_security_group_id"] == "${aws_security_group.api.id}"
    assert to_api["from_port"] == to_api["to_port"] == "${var.api_port}"
    from_lb = ingress["api_from_load_balancer"]
    assert from_lb["security_group_id"] == "${aws_security_group.api.id}"
    assert from_lb["referenced_security_group_id"] == "${aws_security_group.load_balancer[0].id}"
    assert from_lb["from_port"] == from_lb["to_port"] == "${var.api_port}"
    # The load balancer's group: these two rules and no other.
    on_lb = sorted(name for name, rule in {**ingress, **egress}.items() if "aws_security_group.load_balancer" in rule["security_group_id"])
    assert on_lb == ["load_balancer_clients", "load_balancer_to_api"]
    for name in ("api_from_load_balancer", "load_balancer_to_api"):
        assert not {"cidr_ipv4", "cidr_ipv6", "prefix_list_id"} & set({**ingress, **egress}[name]), name
    assert _resources(module, "aws_security_group")["load_balancer"]["vpc_id"] == "${var.vpc_id}"


def test_no_wildcard_iam_action_and_only_the_monitoring_host_has_the_profile(module):
    """Every IAM action in infra_tf/ (policies, trust policies, examples) is named: the one
    wildcard allowed is the artifact bucket policy's Deny of plain-HTTP requests."""
    actions = 0
    for path in INFRA_DIR.rglob("*.tf"):
        text = path.read_text()
        assert "NotAction" not in text, path.name
        for match in re.finditer(r'\bAction\s*=\s*(\[[^\]]*\]|"[^"]*")', text):
            actions += 1
            if "*" not in match.group(1):
                continue
            statement = text[text.rfind("{", 0, match.start()) : text.find("}", match.end())]
            assert re.search(r'Effect\s*=\s*"Deny"', statement), f"{path.name}: wildcard action {match.group(1)}"
            assert "aws:SecureTransport" in text[match.end() : match.end() + 200], path.name
    assert actions >= 4
    role_policy = _resources(module, "aws_iam_role_policy")["tracking_artifacts"]
    resources = re.findall(r'Resource\s*=\s*("[^"]*"|[\w.]+)', str(role_policy["policy"]))
    assert sorted(resources) == ['"${aws_s3_bucket.artifacts.arn}/*"', "aws_s3_bucket.artifacts.arn"], resources
    instances = _resources(module, "aws_instance")
    assert "aws_iam_instance_profile.tracking_server" in str(instances["monitoring"]["iam_instance_profile"])
    assert "iam_instance_profile" not in instances["api"]
    bucket = _resources(module, "aws_s3_bucket")["artifacts"]
    assert "var.artifact_bucket_force_destroy" in str(bucket["force_destroy"])
    tracking = _resources(module, "aws_vpc_security_group_ingress_rule")["monitoring_tracking"]
    assert "local.tracking_clients" in str(tracking["for_each"]) and "var.tracking_port" in str(tracking["from_port"])


def test_instances_require_imdsv2_and_encrypt_root_volumes(module):
    instances = _resources(module, "aws_instance")
    assert set(instances) == {"api", "monitoring"}
    for name, body in instances.items():
        metadata = body["metadata_options"][0]
        assert _unquote(metadata["http_tokens"]) == "required", name
        assert body["root_block_device"][0]["encrypted"] is True, name
        assert "tags" in body
        # A newer AMI never replaces a running host; hosts_generation does, on purpose.
        lifecycle = body["lifecycle"][0]
        assert "ami" in str(lifecycle["ignore_changes"]), name
        assert "terraform_data.hosts_generation" in str(lifecycle["replace_triggered_by"]), name


def test_outputs_cover_addresses_groups_and_inventory(module):
    outputs = set()
    for block in _blocks(module, "output"):
        outputs.update(k.strip('"') for k in block)
    assert {
        "api_public_ip",
        "api_private_ip",
        "monitoring_public_ip",
        "monitoring_private_ip",
        "security_group_ids",
        "ansible_inventory",
        "artifact_bucket_name",
        "artifact_bucket_arn",
        "tracking_server_instance_profile",
        "tracking_server_url",
        "api_hosts",
        "load_balancer_dns_name",
    } <= outputs


def test_every_checkov_skip_is_justified():
    for path in INFRA_DIR.rglob("*.tf"):
        for line in path.read_text().splitlines():
            if "checkov:skip=" in line:
                match = re.search(r"checkov:skip=(CKV2?_AWS_\d+):\s*(\S.{20,})", line)
                assert match, f"{path.name}: a checkov skip without a justification: {line.strip()}"


def test_engine_order_binary_then_tofu_then_terraform_then_embedded(tmp_path, monkeypatch):
    import dagster as dg

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("tofu", "terraform", "custom-tofu"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    tofu = OpenTofu(module_dir=str(INFRA_DIR), work_dir=str(tmp_path / "w"))
    configured = OpenTofu(module_dir=str(INFRA_DIR), work_dir=str(tmp_path / "w"), binary=str(bin_dir / "custom-tofu"))

    monkeypatch.setenv("PATH", str(bin_dir))
    assert configured.command() == [str(bin_dir / "custom-tofu")]
    assert tofu.command() == [str(bin_dir / "tofu")]
    (bin_dir / "tofu").unlink()
    assert tofu.command() == [str(bin_dir / "terraform")]
    (bin_dir / "terraform").unlink()
    embedded = tofu.command()
    assert embedded[-2:] == ["-m", "mlops_assets.resources.embedded_terraform"]
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert "Terraform" in tofu.model_copy(update={"engine": "embedded"}).engine_description()

    missing = OpenTofu(module_dir=str(INFRA_DIR), work_dir=str(tmp_path / "w"), binary=str(tmp_path / "nope"))
    with pytest.raises(dg.Failure, match="not an executable file"):
        missing.command()


def test_checkov_is_clean_with_the_load_balancer(tmp_path):
    """checkov with two API hosts: with the defaults (one host) it leaves out the resources whose
    count is 0, the load balancer's among them; here they are scanned, and every failed check is
    fixed or skipped with its reason (test_infra_checkov.py scans the defaults)."""
    import json

    from .test_infra_checkov import CHECKOV_REQUIREMENT, tool_venv

    variables = tmp_path / "two_hosts.tfvars"
    variables.write_text('api_instance_count = 2\nadmin_cidr = "198.51.100.7/32"\napi_client_cidrs = ["203.0.113.0/24"]\n'
                         'ssh_public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake checkov"\n')
    result = subprocess.run(
        [str(tool_venv(CHECKOV_REQUIREMENT) / "checkov"), "-d", str(INFRA_DIR), "--var-file", str(variables),
         "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=600,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    checks = {kind: {(c["check_id"], c["resource"].removeprefix("module.mlops_assets.")) for r in reports
                     for c in r["results"].get(kind, [])} for kind in ("passed_checks", "failed_checks", "skipped_checks")}
    assert checks["failed_checks"] == set(), checks["failed_checks"]
    # The load balancer's resources were scanned: what they pass and what they skip, with reasons.
    assert {("CKV_AWS_131", "aws_lb.api"), ("CKV_AWS_261", "aws_lb_target_group.api"),
            ("CKV2_AWS_5", "aws_security_group.load_balancer")} <= checks["passed_checks"]
    assert {("CKV_AWS_150", "aws_lb.api"), ("CKV_AWS_91", "aws_lb.api"), ("CKV2_AWS_28", "aws_lb.api"),
            ("CKV_AWS_378", "aws_lb_target_group.api")} <= checks["skipped_checks"]
