# Debian 12 hosts for the prediction API (api_instance_count of them, one Ray cluster) and its
# monitoring, with least-privilege security groups: clients reach only the API port, the
# monitoring host alone scrapes the metrics port and every host's node_exporter, and SSH,
# Prometheus, the Pushgateway, Alertmanager and Grafana answer only the admin network. Ray's
# internal ports are opened between API hosts only, never from anywhere else. With more than one
# API host (aws), an application load balancer answers the API's clients and forwards to the
# API port of every host that passes its /readyz health check.
# The MLflow tracking server on the monitoring host keeps its artifacts in a private S3 bucket
# that only that host's instance profile can read and write; its port answers the admin
# network and tracking_client_cidrs only.

provider "aws" {
  region = var.region
}

locals {
  tags = merge(var.tags, {
    Project   = var.name
    ManagedBy = "opentofu"
  })
  ami_id = var.ami_id != null ? var.ami_id : data.aws_ami.debian12[0].id

  artifact_bucket = coalesce(var.artifact_bucket_name, "${var.name}-mlflow-artifacts")
  # The Dagster machine (admin_cidr) and the team members' networks; a duplicate counts once.
  tracking_clients = toset(concat([var.admin_cidr], var.tracking_client_cidrs))

  # API host i: in api_subnet_ids[i % length] (subnet_id when none are given); the first is
  # named <name>-api (as with one host) and is the Ray head, the others <name>-api-<i+1>.
  api_subnets = length(var.api_subnet_ids) > 0 ? var.api_subnet_ids : [var.subnet_id]
  api_names   = [for i in range(var.api_instance_count) : i == 0 ? "${var.name}-api" : "${var.name}-api-${i + 1}"]
  # Ray's ports between API hosts, as port ranges; none with a single host.
  ray_port_ranges = var.api_instance_count > 1 ? {
    gcs                    = [var.ray_ports.gcs, var.ray_ports.gcs]
    client                 = [var.ray_ports.client, var.ray_ports.client]
    node_manager           = [var.ray_ports.node_manager, var.ray_ports.node_manager]
    object_manager         = [var.ray_ports.object_manager, var.ray_ports.object_manager]
    dashboard_agent_grpc   = [var.ray_ports.dashboard_agent_grpc, var.ray_ports.dashboard_agent_grpc]
    dashboard_agent_listen = [var.ray_ports.dashboard_agent_listen, var.ray_ports.dashboard_agent_listen]
    runtime_env_agent      = [var.ray_ports.runtime_env_agent, var.ray_ports.runtime_env_agent]
    metrics_export         = [var.ray_ports.metrics_export, var.ray_ports.metrics_export]
    workers                = [var.ray_ports.min_worker, var.ray_ports.max_worker]
    serve_replicas         = [var.ray_ports.serve_replica_min, var.ray_ports.serve_replica_max]
  } : {}
  # Ray's GCS fault tolerance (more than one API host): the head keeps the cluster's state in
  # Redis on the monitoring host (the ray_gcs_store role), reached from the API hosts only.
  ray_gcs_store_ports = var.api_instance_count > 1 ? { redis = 6379 } : {}

  # The API's application load balancer: only in front of more than one API host. Its subnets
  # (load_balancer_subnet_ids, else the API hosts'), its listeners' ports (80, and 443 with a
  # certificate) and the VPC of its target group (vpc_id, else the first subnet's).
  load_balanced         = var.load_balancer && var.api_instance_count > 1
  load_balancer_subnets = distinct(compact(length(var.load_balancer_subnet_ids) > 0 ? var.load_balancer_subnet_ids : local.api_subnets))
  load_balancer_name    = "${substr(var.name, 0, 28)}-api"
  load_balancer_ports   = var.load_balancer_certificate_arn == null ? [80] : [80, 443]
  load_balancer_vpc_id  = var.vpc_id != null ? var.vpc_id : try(data.aws_subnet.load_balancer[0].vpc_id, null)
  # Client network x listener port: one ingress rule each on the load balancer's group.
  load_balancer_clients = local.load_balanced ? {
    for pair in setproduct(toset(var.api_client_cidrs), local.load_balancer_ports) : "${pair[0]} ${pair[1]}" => { cidr = pair[0], port = pair[1] }
  } : {}
}

data "aws_ami" "debian12" {
  count = var.ami_id == null ? 1 : 0

  most_recent = true
  owners      = [var.debian_ami_owner]

  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
}

# The load balancer's subnets: their availability zones (an ALB needs two) and VPC.
data "aws_subnet" "load_balancer" {
  count = local.load_balanced ? length(local.load_balancer_subnets) : 0

  id = local.load_balancer_subnets[count.index]
}

# Running hosts keep the AMI they were created from: the instances ignore AMI changes, so a
# newer Debian image (or a changed lookup) never replaces them on its own, which would lose
# Prometheus's and Grafana's data and change both addresses. To move the hosts to the newest
# AMI (or to a changed ami_id), change hosts_generation: this resource is then updated and
# replace_triggered_by replaces both instances, which the tofu_state asset applies only when
# its run config confirms the replacements.
resource "terraform_data" "hosts_generation" {
  input = {
    generation = var.hosts_generation
    ami_id     = var.ami_id
  }
}

resource "aws_key_pair" "admin" {
  key_name   = "${var.name}-admin"
  public_key = trimspace(var.ssh_public_key)
  tags       = merge(local.tags, { Name = "${var.name}-admin" })
}

################################################################################
# Security groups
################################################################################

resource "aws_security_group" "api" {
  name        = "${var.name}-api"
  description = "Prediction API host: API port for clients, metrics port for the monitoring host, SSH for admins"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-api" })
}

resource "aws_security_group" "monitoring" {
  name        = "${var.name}-monitoring"
  description = "Monitoring host: Prometheus, Grafana and SSH for admins only"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-monitoring" })
}

# The API's load balancer (more than one API host): HTTP (and HTTPS) from the API's clients in,
# the API hosts' API port out.
resource "aws_security_group" "load_balancer" {
  count = local.load_balanced ? 1 : 0

  name        = "${var.name}-api-lb"
  description = "API load balancer: HTTP and HTTPS from the API's clients, the API port of the API hosts only"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-api-lb" })
}

resource "aws_vpc_security_group_ingress_rule" "api_clients" {
  for_each = toset(var.api_client_cidrs)

  security_group_id = aws_security_group.api.id
  description       = "Prediction API from client network ${each.value}"
  ip_protocol       = "tcp"
  from_port         = var.api_port
  to_port           = var.api_port
  cidr_ipv4         = each.value
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "api_from_load_balancer" {
  count = local.load_balanced ? 1 : 0

  security_group_id            = aws_security_group.api.id
  description                  = "Prediction API from the load balancer (requests and its /readyz health checks)"
  ip_protocol                  = "tcp"
  from_port                    = var.api_port
  to_port                      = var.api_port
  referenced_security_group_id = aws_security_group.load_balancer[0].id
  tags                         = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "load_balancer_clients" {
  for_each = local.load_balancer_clients

  security_group_id = aws_security_group.load_balancer[0].id
  description       = "${each.value.port == 443 ? "HTTPS" : "HTTP"} to the API load balancer from client network ${each.value.cidr}"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "load_balancer_to_api" {
  count = local.load_balanced ? 1 : 0

  security_group_id            = aws_security_group.load_balancer[0].id
  description                  = "Requests and /readyz health checks to the API hosts' API port only"
  ip_protocol                  = "tcp"
  from_port                    = var.api_port
  to_port                      = var.api_port
  referenced_security_group_id = aws_security_group.api.id
  tags                         = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "api_metrics_from_monitoring" {
  security_group_id            = aws_security_group.api.id
  description                  = "Prometheus metrics scraped by the monitoring host only"
  ip_protocol                  = "tcp"
  from_port                    = var.metrics_port
  to_port                      = var.metrics_port
  referenced_security_group_id = aws_security_group.monitoring.id
  tags                         = local.tags
}

# node_exporter on both hosts, scraped by the monitoring host only (its own included: its
# Prometheus scrapes the private address).
resource "aws_vpc_security_group_ingress_rule" "node_exporter_from_monitoring" {
  for_each = {
    api        = aws_security_group.api.id
    monitoring = aws_security_group.monitoring.id
  }

  security_group_id            = each.value
  description                  = "node_exporter scraped by the monitoring host only"
  ip_protocol                  = "tcp"
  from_port                    = var.node_exporter_port
  to_port                      = var.node_exporter_port
  referenced_security_group_id = aws_security_group.monitoring.id
  tags                         = local.tags
}

# The API hosts' Ray cluster: its ports from and to the API group itself, nothing else.
resource "aws_vpc_security_group_ingress_rule" "api_ray" {
  for_each = local.ray_port_ranges

  security_group_id            = aws_security_group.api.id
  description                  = "Ray ${each.key} from the other API hosts only"
  ip_protocol                  = "tcp"
  from_port                    = each.value[0]
  to_port                      = each.value[1]
  referenced_security_group_id = aws_security_group.api.id
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "api_ray" {
  for_each = local.ray_port_ranges

  security_group_id            = aws_security_group.api.id
  description                  = "Ray ${each.key} to the other API hosts only"
  ip_protocol                  = "tcp"
  from_port                    = each.value[0]
  to_port                      = each.value[1]
  referenced_security_group_id = aws_security_group.api.id
  tags                         = local.tags
}

# The Ray cluster's state store on the monitoring host: from and to the API group only.
resource "aws_vpc_security_group_ingress_rule" "monitoring_ray_gcs_store" {
  for_each = local.ray_gcs_store_ports

  security_group_id            = aws_security_group.monitoring.id
  description                  = "Redis (the Ray cluster's GCS state) from the API hosts only"
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
  referenced_security_group_id = aws_security_group.api.id
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "api_ray_gcs_store" {
  for_each = local.ray_gcs_store_ports

  security_group_id            = aws_security_group.api.id
  description                  = "The Ray head to its GCS state store on the monitoring host"
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
  referenced_security_group_id = aws_security_group.monitoring.id
  tags                         = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "api_ssh" {
  security_group_id = aws_security_group.api.id
  description       = "SSH from the admin network (Ansible)"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = var.admin_cidr
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "monitoring_ssh" {
  security_group_id = aws_security_group.monitoring.id
  description       = "SSH from the admin network (Ansible)"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = var.admin_cidr
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "monitoring_prometheus" {
  security_group_id = aws_security_group.monitoring.id
  description       = "Prometheus UI and API from the admin network"
  ip_protocol       = "tcp"
  from_port         = var.prometheus_port
  to_port           = var.prometheus_port
  cidr_ipv4         = var.admin_cidr
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "monitoring_alertmanager" {
  security_group_id = aws_security_group.monitoring.id
  description       = "Alertmanager UI and API (silences) from the admin network"
  ip_protocol       = "tcp"
  from_port         = var.alertmanager_port
  to_port           = var.alertmanager_port
  cidr_ipv4         = var.admin_cidr
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "monitoring_pushgateway" {
  security_group_id = aws_security_group.monitoring.id
  description       = "Pushgateway from the admin network (the pipeline pushes its metrics)"
  ip_protocol       = "tcp"
  from_port         = var.pushgateway_port
  to_port           = var.pushgateway_port
  cidr_ipv4         = var.admin_cidr
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "monitoring_tracking" {
  for_each = local.tracking_clients

  security_group_id = aws_security_group.monitoring.id
  description       = "MLflow tracking server from ${each.value} (the Dagster machine or a team member)"
  ip_protocol       = "tcp"
  from_port         = var.tracking_port
  to_port           = var.tracking_port
  cidr_ipv4         = each.value
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "monitoring_grafana" {
  security_group_id = aws_security_group.monitoring.id
  description       = "Grafana from the admin network"
  ip_protocol       = "tcp"
  from_port         = var.grafana_port
  to_port           = var.grafana_port
  cidr_ipv4         = var.admin_cidr
  tags              = local.tags
}

# Outbound: HTTPS and HTTP only (Debian packages, the Docker engine, container registries).
# DNS, NTP and instance metadata go to Amazon's link-local services, which security
# groups do not filter.
resource "aws_vpc_security_group_egress_rule" "https" {
  for_each = {
    api        = aws_security_group.api.id
    monitoring = aws_security_group.monitoring.id
  }

  security_group_id = each.value
  description       = "HTTPS to package mirrors and container registries"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "http" {
  for_each = {
    api        = aws_security_group.api.id
    monitoring = aws_security_group.monitoring.id
  }

  security_group_id = each.value
  description       = "HTTP to Debian package mirrors"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "monitoring_scrape" {
  security_group_id            = aws_security_group.monitoring.id
  description                  = "Prometheus scrapes the API host's metrics port"
  ip_protocol                  = "tcp"
  from_port                    = var.metrics_port
  to_port                      = var.metrics_port
  referenced_security_group_id = aws_security_group.api.id
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "monitoring_scrape_node_exporter" {
  for_each = {
    api        = aws_security_group.api.id
    monitoring = aws_security_group.monitoring.id
  }

  security_group_id            = aws_security_group.monitoring.id
  description                  = "Prometheus scrapes node_exporter on the ${each.key} host"
  ip_protocol                  = "tcp"
  from_port                    = var.node_exporter_port
  to_port                      = var.node_exporter_port
  referenced_security_group_id = each.value
  tags                         = local.tags
}

################################################################################
# Instances
################################################################################

resource "aws_instance" "api" {
  count = var.api_instance_count
  # checkov:skip=CKV2_AWS_41: the API host calls no AWS API (images are shipped by Ansible or pulled with registry credentials, models come through the tracking server), so no instance profile is attached.
  # checkov:skip=CKV_AWS_88: clients and admins reach the hosts over the Internet; the security groups restrict every port to its callers.
  ami                         = local.ami_id
  instance_type               = var.api_instance_type
  key_name                    = aws_key_pair.admin.key_name
  subnet_id                   = local.api_subnets[count.index % length(local.api_subnets)]
  vpc_security_group_ids      = [aws_security_group.api.id]
  associate_public_ip_address = var.associate_public_ip_address
  monitoring                  = true
  ebs_optimized               = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted             = true
    volume_type           = "gp3"
    volume_size           = var.root_volume_size
    delete_on_termination = true
  }

  tags = merge(local.tags, { Name = local.api_names[count.index], Role = "api", RayNode = count.index == 0 ? "head" : "worker" })

  lifecycle {
    ignore_changes       = [ami]
    replace_triggered_by = [terraform_data.hosts_generation]
  }
}

resource "aws_instance" "monitoring" {
  # checkov:skip=CKV_AWS_88: admins reach Prometheus, the Pushgateway, Alertmanager and Grafana over the Internet from admin_cidr only.
  ami                         = local.ami_id
  instance_type               = var.monitoring_instance_type
  key_name                    = aws_key_pair.admin.key_name
  subnet_id                   = var.subnet_id
  vpc_security_group_ids      = [aws_security_group.monitoring.id]
  iam_instance_profile        = aws_iam_instance_profile.tracking_server.name
  associate_public_ip_address = var.associate_public_ip_address
  monitoring                  = true
  ebs_optimized               = true

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
    # 2, not 1: the tracking server runs in a container on Docker's bridge, one hop behind
    # the instance, and gets the instance profile's credentials (the artifact bucket) over
    # IMDSv2. Tokens stay required, so IMDSv1 remains off. The API host keeps 1.
    http_put_response_hop_limit = 2
  }

  root_block_device {
    encrypted             = true
    volume_type           = "gp3"
    volume_size           = var.root_volume_size
    delete_on_termination = true
  }

  tags = merge(local.tags, { Name = "${var.name}-monitoring", Role = "monitoring" })

  lifecycle {
    ignore_changes       = [ami]
    replace_triggered_by = [terraform_data.hosts_generation]
  }
}

################################################################################
# The API's application load balancer (more than one API host)
################################################################################

resource "aws_lb" "api" {
  count = local.load_balanced ? 1 : 0
  # checkov:skip=CKV_AWS_150: deletion protection stays off: `make down` (tofu destroy) must remove the load balancer with the hosts; it holds no data and the next apply recreates it.
  # checkov:skip=CKV_AWS_91: no access logs: they would need a log bucket with a policy for the ELB service; the API's requests, errors and latency are in Prometheus (scraped from every API host), and the target health in CloudWatch.
  # checkov:skip=CKV2_AWS_28: no WAF: the API answers api_client_cidrs only (the load balancer's security group) and validates every request body itself; attach a web ACL when the API is public.
  name                       = local.load_balancer_name
  internal                   = false
  load_balancer_type         = "application"
  security_groups            = [aws_security_group.load_balancer[0].id]
  subnets                    = local.load_balancer_subnets
  drop_invalid_header_fields = true
  enable_deletion_protection = false
  tags                       = merge(local.tags, { Name = local.load_balancer_name, Role = "api-load-balancer" })

  lifecycle {
    precondition {
      condition     = length(data.aws_subnet.load_balancer) >= 2 && length(distinct(data.aws_subnet.load_balancer[*].availability_zone)) == length(data.aws_subnet.load_balancer)
      error_message = "The API's application load balancer needs at least two subnets, each in a different availability zone: set load_balancer_subnet_ids (or api_subnet_ids) to such subnets, or load_balancer = false for no load balancer."
    }
  }
}

# HTTP to the API port of every API host; a host is sent requests only while /readyz answers
# 200 (Serve's replicas up on it).
resource "aws_lb_target_group" "api" {
  count = local.load_balanced ? 1 : 0
  # checkov:skip=CKV_AWS_378: the API hosts speak plain HTTP on the API port (TLS ends at the load balancer with load_balancer_certificate_arn); this hop stays inside the VPC, between two security groups that admit only each other.
  name        = local.load_balancer_name
  port        = var.api_port
  protocol    = "HTTP"
  target_type = "instance"
  vpc_id      = local.load_balancer_vpc_id
  tags        = merge(local.tags, { Name = local.load_balancer_name })

  health_check {
    enabled             = true
    protocol            = "HTTP"
    port                = "traffic-port"
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_target_group_attachment" "api" {
  count = local.load_balanced ? var.api_instance_count : 0

  target_group_arn = aws_lb_target_group.api[0].arn
  target_id        = aws_instance.api[count.index].id
  port             = var.api_port
}

# Port 80: with a certificate, a redirect to HTTPS; without one, the API itself (plain HTTP).
resource "aws_lb_listener" "api_http" {
  count = local.load_balanced ? 1 : 0
  # checkov:skip=CKV_AWS_2: without load_balancer_certificate_arn (the default) port 80 forwards plain HTTP, the API's own transport today; set the certificate for production, port 80 then only redirects to HTTPS.
  # checkov:skip=CKV_AWS_103: TLS applies to the HTTPS listener, which uses ELBSecurityPolicy-TLS13-1-2-2021-06 (TLS 1.2 and 1.3); this port 80 listener carries plain HTTP until load_balancer_certificate_arn is set, then only redirects.
  load_balancer_arn = aws_lb.api[0].arn
  port              = 80
  protocol          = "HTTP"
  tags              = local.tags

  default_action {
    type             = var.load_balancer_certificate_arn == null ? "forward" : "redirect"
    target_group_arn = var.load_balancer_certificate_arn == null ? aws_lb_target_group.api[0].arn : null

    dynamic "redirect" {
      for_each = var.load_balancer_certificate_arn == null ? [] : ["https"]

      content {
        protocol    = "HTTPS"
        port        = "443"
        status_code = "HTTP_301"
      }
    }
  }
}

resource "aws_lb_listener" "api_https" {
  count = local.load_balanced && var.load_balancer_certificate_arn != null ? 1 : 0

  load_balancer_arn = aws_lb.api[0].arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.load_balancer_certificate_arn
  tags              = local.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.api[0].arn
  }
}

################################################################################
# MLflow artifact store: a private, encrypted, versioned bucket
################################################################################

resource "aws_s3_bucket" "artifacts" {
  # checkov:skip=CKV_AWS_18: the only client is the tracking server's instance role (clients go through the server's proxy); server access logs would need a second bucket, and CloudTrail data events are the place to audit it if an account needs that.
  # checkov:skip=CKV_AWS_144: cross-region replication doubles storage and needs a second bucket and role; versioning keeps old versions, and the backup job dumps the tracking database to this bucket.
  # checkov:skip=CKV2_AWS_62: nothing consumes bucket events (MLflow reads and writes through its server); notifications would need a queue or topic nobody reads.
  bucket = local.artifact_bucket
  # False by default: destroying the module must not silently delete every model and
  # artifact of the registry. The rehearsal and the tests set it, their buckets are throwaway.
  force_destroy = var.artifact_bucket_force_destroy
  tags          = merge(local.tags, { Name = local.artifact_bucket, Role = "mlflow-artifacts" })
}

resource "aws_s3_bucket_public_access_block" "artifacts" {
  bucket                  = aws_s3_bucket.artifacts.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# SSE-KMS with the AWS-managed key (aws/s3): its key policy lets principals of the account use
# it through S3, so the instance role needs no KMS permission; the bucket key cuts KMS calls.
resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms"
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  versioning_configuration {
    status = "Enabled"
  }
}

# Overwritten or deleted artifacts stay recoverable for artifact_noncurrent_version_days, then
# go; uploads that never completed are cleaned up after a week.
resource "aws_s3_bucket_lifecycle_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    id     = "expire-old-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.artifact_noncurrent_version_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.artifacts]
}

# TLS only: any request over plain HTTP is refused, whoever makes it.
resource "aws_s3_bucket_policy" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [aws_s3_bucket.artifacts.arn, "${aws_s3_bucket.artifacts.arn}/*"]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
    ]
  })

  # A policy is refused while the public access block is being applied.
  depends_on = [aws_s3_bucket_public_access_block.artifacts]
}

################################################################################
# The tracking server's instance profile (the monitoring host only)
################################################################################

resource "aws_iam_role" "tracking_server" {
  name        = "${var.name}-tracking-server"
  description = "The monitoring host: the MLflow tracking server reads and writes the artifact bucket; Prometheus describes instances"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect    = "Allow"
        Principal = { Service = "ec2.amazonaws.com" }
        Action    = "sts:AssumeRole"
      },
    ]
  })
  tags = merge(local.tags, { Name = "${var.name}-tracking-server" })
}

# Least privilege, no wildcard action: list the bucket, read, write and delete its objects
# (MLflow deletes a run's artifacts when the run is deleted); nothing else in the account.
resource "aws_iam_role_policy" "tracking_artifacts" {
  name = "mlflow-artifacts"
  role = aws_iam_role.tracking_server.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "ListArtifactBucket"
        Effect   = "Allow"
        Action   = ["s3:ListBucket", "s3:GetBucketLocation"]
        Resource = aws_s3_bucket.artifacts.arn
      },
      {
        Sid      = "ReadWriteArtifacts"
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
        Resource = "${aws_s3_bucket.artifacts.arn}/*"
      },
    ]
  })
}

# Prometheus on the same host finds the API hosts by their tags (EC2 service discovery, the
# aws target): read-only DescribeInstances, an action AWS does not scope to resources.
resource "aws_iam_role_policy" "prometheus_discovery" {
  name = "prometheus-ec2-discovery"
  role = aws_iam_role.tracking_server.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "DescribeApiHosts"
        Effect   = "Allow"
        Action   = ["ec2:DescribeInstances"]
        Resource = "*"
      },
    ]
  })
}

resource "aws_iam_instance_profile" "tracking_server" {
  name = "${var.name}-tracking-server"
  role = aws_iam_role.tracking_server.name
  tags = merge(local.tags, { Name = "${var.name}-tracking-server" })
}
