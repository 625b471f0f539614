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
  description = "Security groups allowed to reach PostgreSQL, by the service they belong to"
  type        = map(string)
}

variable "engine_major" {
  type = string
}

variable "instance_class" {
  type = string
}

variable "allocated_gb" {
  type = number
}

variable "multi_az" {
  type = bool
}

variable "kms_key_arn" {
  type = string
}

variable "credentials_version" {
  type = number
}

variable "api_role" {
  description = "The query API's PostgreSQL role (LEADSCORE_API_PG_DSN's user)"
  type        = string
  default     = "leadscore_api"
}
