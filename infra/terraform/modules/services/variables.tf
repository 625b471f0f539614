variable "name" {
  type = string
}

variable "region" {
  type = string
}

variable "vpc_id" {
  type = string
}

variable "private_subnet_ids" {
  type = list(string)
}

variable "public_subnet_ids" {
  type = list(string)
}

variable "security_group_ids" {
  description = "Security group of each service (worker, relay, projections, api, registry)"
  type        = map(string)
}

variable "alb_security_group_id" {
  type = string
}

variable "alb_log_bucket" {
  type = string
}

variable "image" {
  type = string
}

variable "environment" {
  description = "LEADSCORE_* settings every task gets as plain environment variables"
  type        = map(string)
}

variable "secrets" {
  description = "LEADSCORE_* settings every task gets from Secrets Manager: name => secret ARN"
  type        = map(string)
}

variable "kms_key_arn" {
  type = string
}

variable "log_retention_days" {
  type = number
}

variable "acm_certificate_arn" {
  type = string
}

variable "api_port" {
  type = number
}

variable "api_count" {
  type = number
}

variable "api_cpu" {
  type = number
}

variable "api_memory" {
  type = number
}

variable "run_schema_registry" {
  type = bool
}

variable "registry_port" {
  type = number
}

variable "internal_domain" {
  type = string
}

variable "worker_cpu" {
  type = number
}

variable "worker_memory" {
  type = number
}

variable "worker_min_count" {
  type = number
}

variable "worker_max_count" {
  type = number
}

variable "worker_lag_target" {
  type = number
}

variable "lag_alarm_threshold" {
  type = number
}

variable "alarm_actions" {
  type = list(string)
}

variable "kafka_cluster_name" {
  type = string
}

variable "consumer_group" {
  type = string
}

variable "lead_events_topic" {
  type = string
}

variable "stop_timeout_s" {
  description = "Seconds ECS waits after SIGTERM before SIGKILL (the engine's shutdown timeout plus a margin)"
  type        = number
  default     = 30
}
