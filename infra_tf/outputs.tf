output "api_public_ip" {
  description = "Public IPv4 address of the first API host, the Ray head (null without associate_public_ip_address). Every API host: api_hosts."
  value       = aws_instance.api[0].public_ip
}

output "api_private_ip" {
  description = "Private IPv4 address of the first API host, the Ray head. Every API host: api_hosts."
  value       = aws_instance.api[0].private_ip
}

output "api_hosts" {
  description = "Every API host in order, the first the Ray head: name, instance id, subnet, private and public address, and its Ray role (head or worker)."
  value = [for i, host in aws_instance.api : {
    name        = local.api_names[i]
    instance_id = host.id
    subnet_id   = host.subnet_id
    private_ip  = host.private_ip
    public_ip   = host.public_ip
    ray_role    = i == 0 ? "head" : "worker"
  }]
}

output "load_balancer_dns_name" {
  description = "DNS name of the API's application load balancer (HTTP on 80, or HTTPS on 443 with load_balancer_certificate_arn); null without one (a single API host, or load_balancer = false)."
  value       = one(aws_lb.api[*].dns_name)
}

output "monitoring_public_ip" {
  description = "Public IPv4 address of the monitoring host (null without associate_public_ip_address)."
  value       = aws_instance.monitoring.public_ip
}

output "monitoring_private_ip" {
  description = "Private IPv4 address of the monitoring host."
  value       = aws_instance.monitoring.private_ip
}

output "instance_ids" {
  description = "EC2 instance ids by role (api: the first API host, the Ray head; every API host's is in api_hosts)."
  value = {
    api        = aws_instance.api[0].id
    monitoring = aws_instance.monitoring.id
  }
}

output "security_group_ids" {
  description = "Security group ids by role (load_balancer: the API load balancer's, only when there is one)."
  value = merge(
    {
      api        = aws_security_group.api.id
      monitoring = aws_security_group.monitoring.id
    },
    { for group in aws_security_group.load_balancer : "load_balancer" => group.id },
  )
}

output "ami_id" {
  description = "AMI both hosts run (the one they were created from: a newer Debian AMI does not change it until hosts_generation does)."
  value       = aws_instance.api[0].ami
}

output "artifact_bucket_name" {
  description = "S3 bucket of MLflow's artifacts (the tracking server's --artifacts-destination is s3://<this>/)."
  value       = aws_s3_bucket.artifacts.id
}

output "artifact_bucket_arn" {
  description = "ARN of the artifact bucket."
  value       = aws_s3_bucket.artifacts.arn
}

output "tracking_server_instance_profile" {
  description = "Instance profile of the monitoring host, whose role alone may read and write the artifact bucket."
  value       = aws_iam_instance_profile.tracking_server.name
}

output "tracking_server_url" {
  description = "MLflow tracking URI of the server on the monitoring host, at the address the inventory connects to (inventory_address)."
  value       = "http://${var.inventory_address == "public" ? aws_instance.monitoring.public_ip : aws_instance.monitoring.private_ip}:${var.tracking_port}"
}

output "ansible_inventory" {
  description = "Ansible inventory (YAML/JSON inventory structure): groups api (every API host, the first the Ray head) and monitoring (one host), with the ports the roles need. Write it as JSON or YAML and pass it to ansible-playbook -i."
  value = {
    all = {
      vars = merge(
        {
          ansible_user       = var.ssh_user
          api_port           = var.api_port
          metrics_port       = var.metrics_port
          node_exporter_port = var.node_exporter_port
          # Where the instances' console output (their SSH host keys) is read from.
          aws_region = var.region
        },
        var.ssh_private_key_file == null ? {} : { ansible_ssh_private_key_file = var.ssh_private_key_file },
      )
      children = {
        api = {
          vars = {
            # The Ray cluster of the API hosts: the head's private address and Ray's ports
            # (opened between API hosts only).
            ray_head_address = aws_instance.api[0].private_ip
            ray_ports        = var.ray_ports
            # Where the head keeps the cluster's state (Redis on the monitoring host; null: one
            # API host, no cluster).
            ray_gcs_store = var.api_instance_count > 1 ? "${aws_instance.monitoring.private_ip}:${local.ray_gcs_store_ports.redis}" : null
            # The load balancer's DNS name in front of every host's API port (null: none).
            api_load_balancer = one(aws_lb.api[*].dns_name)
          }
          # The first host is the Ray head, the others its workers.
          hosts = { for i, host in aws_instance.api : local.api_names[i] => {
            ansible_host = var.inventory_address == "public" ? host.public_ip : host.private_ip
            private_ip   = host.private_ip
            public_ip    = host.public_ip
            instance_id  = host.id
            ray_role     = i == 0 ? "head" : "worker"
          } }
        }
        monitoring = {
          vars = {
            prometheus_port   = var.prometheus_port
            pushgateway_port  = var.pushgateway_port
            alertmanager_port = var.alertmanager_port
            grafana_port      = var.grafana_port
            tracking_port     = var.tracking_port
            # The tracking server's artifact store (in aws_region, read through the instance profile).
            mlflow_artifact_bucket = aws_s3_bucket.artifacts.id
            # Prometheus's EC2 service discovery (aws): the API hosts are the running instances
            # tagged Role = "api" and Project = this name (the monitoring host's instance profile
            # may describe instances).
            project_name = var.name
          }
          hosts = {
            "${var.name}-monitoring" = {
              ansible_host = var.inventory_address == "public" ? aws_instance.monitoring.public_ip : aws_instance.monitoring.private_ip
              private_ip   = aws_instance.monitoring.private_ip
              public_ip    = aws_instance.monitoring.public_ip
              instance_id  = aws_instance.monitoring.id
            }
          }
        }
      }
    }
  }
}
