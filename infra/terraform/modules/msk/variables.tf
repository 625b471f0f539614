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
  description = "Security groups allowed to reach the brokers, by the service they belong to"
  type        = map(string)
}

variable "kafka_version" {
  type = string
}

variable "broker_count" {
  type = number
}

variable "instance_type" {
  type = string
}

variable "volume_gb" {
  type = number
}

variable "partitions" {
  type = number
}

variable "retention_hours" {
  type = number
}

variable "kms_key_arn" {
  type = string
}

variable "log_retention_days" {
  type = number
}

variable "credentials_version" {
  type = number
}
