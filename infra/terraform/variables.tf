# ---- required ----

variable "image" {
  description = "Container image of the engine, built by infra/container/Dockerfile from the wheel and pushed to a registry (ECR); its entrypoint is leadscore, each service gives its own subcommand"
  type        = string
}

variable "acm_certificate_arn" {
  description = "ACM certificate of the query API's DNS name, for the ALB's HTTPS listener"
  type        = string
}

variable "clickhouse_dsn" {
  description = "LEADSCORE_CLICKHOUSE_DSN of a ClickHouse server (ClickHouse Cloud or self-run), e.g. https://user:password@host:8443/leadscore. Write-only: never stored in the state."
  type        = string
  sensitive   = true
  ephemeral   = true

  validation {
    condition     = !startswith(var.clickhouse_dsn, "chdb://")
    error_message = "Embedded chDB lives inside one process; give the DSN of a ClickHouse server."
  }
}

variable "webhook_secret_key" {
  description = "LEADSCORE_WEBHOOK_SECRET_KEY: Fernet key(s), comma-separated, newest first, that encrypt webhook secrets at rest (python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'). Write-only: never stored in the state."
  type        = string
  sensitive   = true
  ephemeral   = true

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{43}=(,[A-Za-z0-9_-]{43}=)*$", var.webhook_secret_key))
    error_message = "Give one or more Fernet keys (44 characters of url-safe base64), comma-separated."
  }
}

variable "kek" {
  description = "LEADSCORE_KEK: key-encryption key(s), base64 of 32 bytes each, comma-separated, newest first, that wrap every lead's data key (`leadscore keys new` prints one). Write-only: never stored in the state."
  type        = string
  sensitive   = true
  ephemeral   = true

  validation {
    condition     = can(regex("^[A-Za-z0-9+/]{43}=(,[A-Za-z0-9+/]{43}=)*$", var.kek))
    error_message = "Give one or more KEKs (base64 of 32 bytes: 44 characters), comma-separated."
  }
}

variable "kek_version" {
  description = "Bump after prepending a new KEK to kek, to write it"
  type        = number
  default     = 1
}

variable "webhook_secret_key_version" {
  description = "Bump after prepending a new key to webhook_secret_key, to write it"
  type        = number
  default     = 1
}

# ---- placement ----

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "name" {
  description = "Prefix of every resource name"
  type        = string
  default     = "leadscore"
}

variable "availability_zones" {
  type    = list(string)
  default = ["us-east-1a", "us-east-1b", "us-east-1c"]

  validation {
    condition     = length(var.availability_zones) >= 2
    error_message = "RDS and MSK need subnets in at least two availability zones."
  }
}

variable "vpc_cidr" {
  type    = string
  default = "10.40.0.0/16"
}

variable "nat_per_az" {
  description = "One NAT gateway per zone (true) or one for all (cheaper; one zone's outage cuts egress)"
  type        = bool
  default     = true
}

variable "internal_domain" {
  description = "Private DNS namespace of the built-in schema registry"
  type        = string
  default     = "leadscore.internal"
}

variable "log_retention_days" {
  type    = number
  default = 365
}

variable "alarm_actions" {
  description = "SNS topic ARNs notified by the CloudWatch alarms"
  type        = list(string)
  default     = []
}

variable "credentials_version" {
  description = "Bump to write new generated passwords (PostgreSQL, Kafka SCRAM) and a new ClickHouse DSN"
  type        = number
  default     = 1
}

# ---- Kafka (MSK) ----

variable "kafka_version" {
  description = "MSK version; the dev stack runs Kafka 3.9.1 (devtools/services/kafka.py)"
  type        = string
  default     = "3.9.x"
}

variable "kafka_broker_count" {
  type    = number
  default = 3

  validation {
    condition     = var.kafka_broker_count % length(var.availability_zones) == 0
    error_message = "MSK needs the broker count to be a multiple of the number of availability zones."
  }
}

variable "kafka_instance_type" {
  type    = string
  default = "kafka.m7g.large"
}

variable "kafka_volume_gb" {
  type    = number
  default = 100
}

variable "kafka_retention_hours" {
  description = "How long brokers keep lead-events and score-events"
  type        = number
  default     = 168
}

variable "topic_partitions" {
  description = "Partitions of each topic: the ceiling of worker parallelism"
  type        = number
  default     = 6
}

variable "topic_lead_events" {
  type    = string
  default = "lead-events"
}

variable "topic_score_events" {
  type    = string
  default = "score-events"
}

variable "topic_dlq" {
  type    = string
  default = "lead-events.dlq"
}

variable "consumer_group" {
  type    = string
  default = "leadscore-worker"
}

variable "schema_registry_url" {
  description = "A managed Confluent-compatible schema registry; empty runs the engine's own (leadscore registry) on ECS"
  type        = string
  default     = ""
}

variable "schema_registry_user" {
  description = "LEADSCORE_SCHEMA_REGISTRY_USER: the registry's basic-auth user"
  type        = string
  default     = "leadscore"
}

variable "schema_registry_password" {
  description = "The managed registry's password (with schema_registry_url); the engine's own registry gets a generated one. Only a write-only argument reads it: never in the state."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.schema_registry_url == "" || var.schema_registry_password != ""
    error_message = "A managed schema registry (schema_registry_url) needs its schema_registry_password."
  }
}

variable "registry_port" {
  type    = number
  default = 8081
}

# ---- PostgreSQL (RDS) ----

variable "postgres_major_version" {
  description = "The dev stack runs PostgreSQL 15"
  type        = string
  default     = "15"
}

variable "postgres_instance_class" {
  type    = string
  default = "db.m7g.large"
}

variable "postgres_storage_gb" {
  type    = number
  default = 100
}

variable "postgres_multi_az" {
  type    = bool
  default = true
}

# ---- Redis (ElastiCache) ----

variable "redis_engine_version" {
  type    = string
  default = "7.1"
}

variable "redis_node_type" {
  type    = string
  default = "cache.m7g.large"
}

variable "redis_replicas" {
  type    = number
  default = 1
}

# ---- ClickHouse ----

variable "clickhouse_port" {
  description = "Port of the ClickHouse server's HTTPS interface"
  type        = number
  default     = 8443
}

variable "clickhouse_cidrs" {
  description = "Where the ClickHouse server is; ClickHouse Cloud publishes no fixed range, hence the default"
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

# ---- services ----

variable "worker_min_count" {
  type    = number
  default = 2
}

variable "worker_max_count" {
  type    = number
  default = 6

  validation {
    condition     = var.worker_max_count <= var.topic_partitions && var.worker_max_count >= var.worker_min_count
    error_message = "worker_max_count must lie between worker_min_count and topic_partitions: a worker beyond the partition count owns no partition."
  }
}

variable "worker_cpu" {
  type    = number
  default = 1024
}

variable "worker_memory" {
  type    = number
  default = 2048
}

variable "worker_lag_target" {
  description = "Lead-events behind per running worker that the autoscaler aims at"
  type        = number
  default     = 20000
}

variable "lag_alarm_threshold" {
  description = "Consumer lag (lead-events) above which the lag alarm fires"
  type        = number
  default     = 200000
}

variable "api_port" {
  type    = number
  default = 8000
}

variable "api_count" {
  type    = number
  default = 2
}

variable "api_cpu" {
  type    = number
  default = 512
}

variable "api_memory" {
  type    = number
  default = 1024
}

variable "api_ingress_cidrs" {
  description = "Who may reach the query API's HTTPS listener"
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "log_level" {
  type    = string
  default = "info"
}

# ---- worker operations ----

variable "metrics_port" {
  description = "LEADSCORE_METRICS_PORT of every task: /metrics, /healthz, /readyz"
  type        = number
  default     = 9400
}

variable "shutdown_timeout_s" {
  description = "LEADSCORE_SHUTDOWN_TIMEOUT_S: a worker stops within this after SIGTERM; ECS's stopTimeout is 5 s more (at most 120)"
  type        = number
  default     = 25

  validation {
    condition     = var.shutdown_timeout_s >= 5 && var.shutdown_timeout_s <= 115
    error_message = "ECS waits at most 120 s after SIGTERM: keep shutdown_timeout_s between 5 and 115."
  }
}
