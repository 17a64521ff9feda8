# The team option: the same hosts, with state in S3 and a lock file next to it, so that
# several people (or CI) can run OpenTofu on one deployment without overwriting each other.
#
# The bucket must exist first, with versioning and encryption on (it holds every address
# and the SSH key's fingerprint). `use_lockfile` needs OpenTofu >= 1.10 or Terraform >= 1.10;
# with older engines use a DynamoDB table (dynamodb_table = "...") instead.
#
#   tofu init -backend-config="bucket=my-team-tofu-state"
#   tofu apply -var-file=team.tfvars

terraform {
  required_version = ">= 1.10.0"

  backend "s3" {
    key          = "mlops-assets/terraform.tfstate"
    region       = "eu-west-1"
    encrypt      = true
    use_lockfile = true
  }
}

module "mlops_assets" {
  source = "../.."

  region           = var.region
  name             = var.name
  admin_cidr       = var.admin_cidr
  api_client_cidrs = var.api_client_cidrs
  ssh_public_key   = var.ssh_public_key

  # The team's MLflow tracking server: who besides admin_cidr may reach it, and a bucket
  # name of your own (bucket names are global).
  tracking_client_cidrs = var.tracking_client_cidrs
  artifact_bucket_name  = var.artifact_bucket_name
}

variable "region" {
  description = "AWS region of the hosts."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Name prefix of every resource."
  type        = string
  default     = "mlops-assets"
}

variable "admin_cidr" {
  description = "The only network allowed to reach SSH, Prometheus and Grafana."
  type        = string
}

variable "api_client_cidrs" {
  description = "Networks allowed to call the prediction API."
  type        = list(string)
}

variable "tracking_client_cidrs" {
  description = "Team members' networks allowed to reach the MLflow tracking server besides admin_cidr."
  type        = list(string)
  default     = []
}

variable "artifact_bucket_name" {
  description = "S3 bucket of MLflow's artifacts (null: <name>-mlflow-artifacts)."
  type        = string
  default     = null
}

variable "ssh_public_key" {
  description = "OpenSSH public key of the hosts' admin user."
  type        = string
}

output "ansible_inventory" {
  description = "Ansible inventory of the two hosts."
  value       = module.mlops_assets.ansible_inventory
}

output "api_public_ip" {
  description = "Public address of the API host."
  value       = module.mlops_assets.api_public_ip
}

output "tracking_server_url" {
  description = "MLflow tracking URI the team sets as MLFLOW_TRACKING_URI."
  value       = module.mlops_assets.tracking_server_url
}
