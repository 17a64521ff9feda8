terraform {
  # OpenTofu 1.6+ (Terraform 1.6+ reads the same code). The state backend is local by
  # default (the `tofu_state` asset keeps it in the project's state folder); see
  # examples/s3-backend for the team option.
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}
