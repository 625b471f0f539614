variable "name" {
  type = string
}

variable "vpc_id" {
  type = string
}

variable "subnet_ids" {
  type = list(string)
}

variable "client_security_group_ids" {
  description = "Security groups allowed to reach Redis, by the service they belong to"
  type        = map(string)
}

variable "engine_version" {
  type = string
}

variable "node_type" {
  type = string
}

variable "replicas" {
  type = number

  validation {
    condition     = var.replicas >= 1
    error_message = "Multi-AZ failover needs at least one replica."
  }
}

variable "kms_key_arn" {
  type = string
}
