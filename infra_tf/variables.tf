variable "region" {
  description = "AWS region to create the hosts in."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as eu-west-1."
  }
}

variable "name" {
  description = "Name prefix of every resource (security groups, key pair, instances) and the value of the Project tag."
  type        = string
  default     = "mlops-assets"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "api_instance_type" {
  description = "EC2 instance type of the API host (Ray Serve in a container)."
  type        = string
  default     = "t3.large"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.api_instance_type))
    error_message = "api_instance_type must be an EC2 instance type such as t3.large."
  }
}

variable "api_instance_count" {
  description = "Number of API hosts (1 to 10). The first is the Ray head, the others join its cluster as workers; Serve answers on the API port of every one."
  type        = number
  default     = 1

  validation {
    condition     = var.api_instance_count >= 1 && var.api_instance_count <= 10 && floor(var.api_instance_count) == var.api_instance_count
    error_message = "api_instance_count must be a whole number from 1 to 10."
  }
}

variable "api_subnet_ids" {
  description = "Subnets the API hosts are spread over, round-robin (host i in api_subnet_ids[i % length]); give subnets in different availability zones so one zone's outage leaves hosts. Empty: subnet_id, like the monitoring host."
  type        = list(string)
  default     = []
}

variable "ray_ports" {
  description = "Ports of the API hosts' Ray cluster, which the api role starts Ray with: the head's GCS and Ray client, and on every node the raylet (node manager), object manager, dashboard agent (gRPC and HTTP), runtime-env agent, metrics export, the workers' range, and the range of Serve's replicas' own HTTP ports (direct ingress: each node's HAProxy sends requests to the replicas on every node there; the API's runtime uses 30000-31000). With more than one API host they are opened between API hosts only, by rules that reference the API group itself; never from anywhere else."
  type = object({
    gcs                    = number
    client                 = number
    node_manager           = number
    object_manager         = number
    dashboard_agent_grpc   = number
    dashboard_agent_listen = number
    runtime_env_agent      = number
    metrics_export         = number
    min_worker             = number
    max_worker             = number
    serve_replica_min      = number
    serve_replica_max      = number
  })
  default = {
    gcs                    = 6379
    client                 = 10001
    node_manager           = 6380
    object_manager         = 6381
    dashboard_agent_grpc   = 6382
    dashboard_agent_listen = 52365
    runtime_env_agent      = 6383
    metrics_export         = 6384
    min_worker             = 10002
    max_worker             = 10100
    serve_replica_min      = 30000
    serve_replica_max      = 31000
  }

  validation {
    condition     = alltrue([for port in values(var.ray_ports) : port >= 1024 && port <= 65535]) && var.ray_ports.min_worker <= var.ray_ports.max_worker && var.ray_ports.serve_replica_min <= var.ray_ports.serve_replica_max
    error_message = "ray_ports must be ports from 1024 to 65535, with min_worker <= max_worker and serve_replica_min <= serve_replica_max."
  }
}

variable "load_balancer" {
  description = "An application load balancer in front of the API hosts' API port (target group health check /readyz), created only when api_instance_count > 1. False: none; clients call each host's API port."
  type        = bool
  default     = true
}

variable "load_balancer_subnet_ids" {
  description = "Subnets of the load balancer: at least two, each in a different availability zone (an ALB needs two zones). Empty: api_subnet_ids (or subnet_id)."
  type        = list(string)
  default     = []
}

variable "load_balancer_certificate_arn" {
  description = "ACM certificate of the load balancer's HTTPS listener (443, TLS 1.2 or later); port 80 then redirects to HTTPS. Null: port 80 forwards plain HTTP, as the API itself speaks plain HTTP; set a certificate for production."
  type        = string
  default     = null

  validation {
    condition     = var.load_balancer_certificate_arn == null || can(regex("^arn:aws[a-z-]*:(acm|iam):", var.load_balancer_certificate_arn))
    error_message = "load_balancer_certificate_arn must be the ARN of an ACM (or IAM server) certificate, or null."
  }
}

variable "monitoring_instance_type" {
  description = "EC2 instance type of the monitoring host (Prometheus and Grafana in containers)."
  type        = string
  default     = "t3.small"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.monitoring_instance_type))
    error_message = "monitoring_instance_type must be an EC2 instance type such as t3.small."
  }
}

variable "root_volume_size" {
  description = "Size in GiB of each host's encrypted gp3 root volume."
  type        = number
  default     = 20

  validation {
    condition     = var.root_volume_size >= 8 && var.root_volume_size <= 1024
    error_message = "root_volume_size must be between 8 and 1024 GiB."
  }
}

variable "ami_id" {
  description = "AMI of new hosts. Null: the newest official Debian 12 (bookworm) amd64 AMI, found by the aws_ami data source. Running hosts keep their AMI; changing this value replaces both hosts (tofu_state asks for confirmation)."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must be null or an AMI id such as ami-0123456789abcdef0."
  }
}

variable "hosts_generation" {
  description = "Change this value (for example to today's date) to replace both hosts with new ones on the newest Debian AMI (or ami_id). Running hosts otherwise keep the AMI they were created from. Replacing a host loses its data (Prometheus, Grafana) and changes its addresses; tofu_state applies it only when its run config confirms the replacements."
  type        = string
  default     = "1"

  validation {
    condition     = length(trimspace(var.hosts_generation)) > 0
    error_message = "hosts_generation must be a non-empty string; change it to replace both hosts."
  }
}

variable "debian_ami_owner" {
  description = "Account that publishes the official Debian AMIs (used only when ami_id is null)."
  type        = string
  default     = "136693071363"
}

variable "subnet_id" {
  description = "Subnet of both hosts. Null: the default subnet of the region's default VPC."
  type        = string
  default     = null
}

variable "vpc_id" {
  description = "VPC of the security groups; must contain subnet_id. Null: the region's default VPC."
  type        = string
  default     = null
}

variable "admin_cidr" {
  description = "The only network allowed to reach SSH, Prometheus, the Pushgateway, Alertmanager and Grafana, e.g. your office or VPN egress as 203.0.113.7/32: an IPv4 prefix of /8 or longer. Never the whole Internet."
  type        = string

  validation {
    # A real prefix: not 0.0.0.0/0, and not a short one that is nearly as wide (0.0.0.0/1 is half the Internet).
    condition     = try(can(regex("^[0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,2}$", var.admin_cidr)) && can(cidrhost(var.admin_cidr, 0)) && tonumber(split("/", var.admin_cidr)[1]) >= 8, false)
    error_message = "admin_cidr must be an IPv4 CIDR block with a prefix of /8 or longer, such as 203.0.113.7/32 (0.0.0.0/0 is refused, and so is any prefix shorter than /8)."
  }
}

variable "api_client_cidrs" {
  description = "Networks allowed to call the prediction API port. Use [\"0.0.0.0/0\"] only for a deliberately public API."
  type        = list(string)

  validation {
    condition     = length(var.api_client_cidrs) > 0 && alltrue([for cidr in var.api_client_cidrs : can(cidrhost(cidr, 0))])
    error_message = "api_client_cidrs must be a non-empty list of CIDR blocks."
  }
}

variable "tracking_client_cidrs" {
  description = "Networks besides admin_cidr (the machine running Dagster) allowed to reach the MLflow tracking server: team members' offices or VPN egress, each an IPv4 prefix of /8 or longer. Empty: admin_cidr only."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for cidr in var.tracking_client_cidrs : try(can(regex("^[0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,2}$", cidr)) && can(cidrhost(cidr, 0)) && tonumber(split("/", cidr)[1]) >= 8, false)])
    error_message = "tracking_client_cidrs must be IPv4 CIDR blocks with a prefix of /8 or longer, such as 203.0.113.0/24 (0.0.0.0/0 is refused, and so is any prefix shorter than /8)."
  }
}

variable "artifact_bucket_name" {
  description = "Name of the S3 bucket of MLflow's artifacts. Null: <name>-mlflow-artifacts. Bucket names are global across all AWS accounts: set one of your own if that name is taken."
  type        = string
  default     = null

  validation {
    # 3-63 characters: lowercase letters, digits, dots and dashes, a letter or digit at each end; no "..", not an IP address, none of the reserved prefixes and suffixes.
    condition     = var.artifact_bucket_name == null || try(length(var.artifact_bucket_name) <= 63 && can(regex("^[a-z0-9][a-z0-9.-]+[a-z0-9]$", var.artifact_bucket_name)) && !strcontains(var.artifact_bucket_name, "..") && !can(regex("^[0-9]+(\\.[0-9]+){3}$", var.artifact_bucket_name)) && !can(regex("^(xn--|sthree-)|(-s3alias|--ol-s3)$", var.artifact_bucket_name)), false)
    error_message = "artifact_bucket_name must be a valid S3 bucket name: 3-63 lowercase letters, digits, dots or dashes, starting and ending with a letter or digit, no two adjacent dots, not an IP address, no xn--/sthree- prefix or -s3alias/--ol-s3 suffix."
  }
}

variable "artifact_bucket_force_destroy" {
  description = "Let destroy delete the artifact bucket with every object version in it. False by default, so that destroying the hosts never silently deletes the registry's models; true for throwaway deployments (the rehearsal, tests)."
  type        = bool
  default     = false
}

variable "artifact_noncurrent_version_days" {
  description = "Days an overwritten or deleted artifact's old version is kept (recoverable) before the lifecycle rule expires it."
  type        = number
  default     = 30

  validation {
    condition     = var.artifact_noncurrent_version_days >= 1 && floor(var.artifact_noncurrent_version_days) == var.artifact_noncurrent_version_days
    error_message = "artifact_noncurrent_version_days must be a whole number of days, at least 1."
  }
}

variable "ssh_public_key" {
  description = "OpenSSH public key installed for the hosts' admin user (the one Ansible connects with)."
  type        = string

  validation {
    condition     = can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( .*)?$", trimspace(var.ssh_public_key)))
    error_message = "ssh_public_key must be one OpenSSH public key line (ssh-ed25519, ssh-rsa or ecdsa)."
  }
}

variable "ssh_user" {
  description = "Login user of the AMI (Debian's cloud images use admin); written into the Ansible inventory."
  type        = string
  default     = "admin"
}

variable "ssh_private_key_file" {
  description = "Path of the private key that matches ssh_public_key on the machine that runs Ansible; written into the inventory as ansible_ssh_private_key_file when set. Null: Ansible's default keys or agent."
  type        = string
  default     = null
}

variable "inventory_address" {
  description = "Which address the Ansible inventory connects to: public (from the admin network) or private (from inside the VPC, a bastion or a VPN)."
  type        = string
  default     = "public"

  validation {
    condition     = contains(["public", "private"], var.inventory_address)
    error_message = "inventory_address must be public or private."
  }
}

variable "associate_public_ip_address" {
  description = "Give both hosts a public IPv4 address (needed when clients and the admin reach them over the Internet)."
  type        = bool
  default     = true
}

# Ports. Ray's own ports (GCS 6379, dashboard 8265, client 10001, agents 52365, 8076 object
# manager) are never accepted: nothing but the API and metrics ports leaves the API host.
variable "api_port" {
  description = "TCP port of the prediction API on the API host."
  type        = number
  default     = 8000

  validation {
    condition     = var.api_port > 0 && var.api_port < 65536 && !contains([6379, 8076, 8265, 10001, 52365], var.api_port)
    error_message = "api_port must be a TCP port and not one of Ray's internal ports."
  }
}

variable "metrics_port" {
  description = "TCP port of the Prometheus metrics endpoint on the API host (scraped by the monitoring host only)."
  type        = number
  default     = 8080

  validation {
    condition     = var.metrics_port > 0 && var.metrics_port < 65536 && !contains([6379, 8076, 8265, 10001, 52365], var.metrics_port)
    error_message = "metrics_port must be a TCP port and not one of Ray's internal ports."
  }
}

variable "prometheus_port" {
  description = "TCP port of Prometheus on the monitoring host (admin network only)."
  type        = number
  default     = 9090

  validation {
    condition     = var.prometheus_port > 0 && var.prometheus_port < 65536
    error_message = "prometheus_port must be a TCP port."
  }
}

variable "alertmanager_port" {
  description = "TCP port of Alertmanager on the monitoring host (admin network only; Prometheus reaches it on the host)."
  type        = number
  default     = 9093

  validation {
    condition     = var.alertmanager_port > 0 && var.alertmanager_port < 65536
    error_message = "alertmanager_port must be a TCP port."
  }
}

variable "grafana_port" {
  description = "TCP port of Grafana on the monitoring host (admin network only)."
  type        = number
  default     = 3000

  validation {
    condition     = var.grafana_port > 0 && var.grafana_port < 65536
    error_message = "grafana_port must be a TCP port."
  }
}

variable "node_exporter_port" {
  description = "TCP port of node_exporter on both hosts (scraped by the monitoring host only)."
  type        = number
  default     = 9100

  validation {
    condition     = var.node_exporter_port > 0 && var.node_exporter_port < 65536 && !contains([6379, 8076, 8265, 10001, 52365], var.node_exporter_port)
    error_message = "node_exporter_port must be a TCP port and not one of Ray's internal ports."
  }
}

variable "pushgateway_port" {
  description = "TCP port of the Pushgateway on the monitoring host (admin network only: the pipeline pushes from there)."
  type        = number
  default     = 9091

  validation {
    condition     = var.pushgateway_port > 0 && var.pushgateway_port < 65536
    error_message = "pushgateway_port must be a TCP port."
  }
}

variable "tracking_port" {
  description = "TCP port of the MLflow tracking server on the monitoring host (admin_cidr and tracking_client_cidrs only)."
  type        = number
  default     = 5000

  validation {
    condition     = var.tracking_port > 0 && var.tracking_port < 65536 && floor(var.tracking_port) == var.tracking_port && !contains([22, 6379, 8076, 8265, 10001, 52365], var.tracking_port)
    error_message = "tracking_port must be a TCP port, not 22 and not one of Ray's internal ports."
  }
}
