# leadscore on AWS: network, MSK, RDS PostgreSQL, ElastiCache Redis, ECS Fargate services
# and the LEADSCORE_* settings that wire them together (outputs.tf).

locals {
  run_registry = var.schema_registry_url == ""

  # The settings every service reads, as plain environment variables. Their names are
  # adapters/settings.py's fields; tests/infra/test_terraform.py fails if one is not.
  leadscore_environment = {
    # Production refuses to start while a secret setting is empty or at its dev default
    # (adapters/settings.py, SECRETS): each of them is in leadscore_secrets below.
    LEADSCORE_ENVIRONMENT     = "production"
    LEADSCORE_KAFKA_BOOTSTRAP = module.msk.bootstrap_brokers
    # MSK's SASL/SCRAM listener: TLS, SCRAM-SHA-512 only, Amazon's CA from the system's.
    LEADSCORE_KAFKA_SECURITY_PROTOCOL = "SASL_SSL"
    LEADSCORE_KAFKA_SASL_MECHANISM    = "SCRAM-SHA-512"
    LEADSCORE_KAFKA_SASL_USERNAME     = module.msk.scram_username
    LEADSCORE_SCHEMA_REGISTRY_URL     = local.run_registry ? "http://registry.${var.internal_domain}:${var.registry_port}" : var.schema_registry_url
    LEADSCORE_SCHEMA_REGISTRY_USER    = var.schema_registry_user
    LEADSCORE_TOPIC_LEAD_EVENTS       = var.topic_lead_events
    LEADSCORE_TOPIC_SCORE_EVENTS      = var.topic_score_events
    LEADSCORE_TOPIC_DLQ               = var.topic_dlq
    LEADSCORE_TOPIC_PARTITIONS        = tostring(var.topic_partitions)
    LEADSCORE_CONSUMER_GROUP          = var.consumer_group
    LEADSCORE_API_HOST                = "0.0.0.0" # the API task's bind address; only the API reads it
    LEADSCORE_API_PORT                = tostring(var.api_port)
    LEADSCORE_RUN_DIR                 = "/var/run/leadscore"
    LEADSCORE_LOG_FORMAT              = "json"
    LEADSCORE_LOG_LEVEL               = var.log_level
    # Metrics, /healthz and /readyz on every address of the task, for the container's
    # health check (modules/services); a stop within the ECS stopTimeout.
    LEADSCORE_METRICS_HOST       = "0.0.0.0"
    LEADSCORE_METRICS_PORT       = tostring(var.metrics_port)
    LEADSCORE_SHUTDOWN_TIMEOUT_S = tostring(var.shutdown_timeout_s)
  }

  # The settings that carry credentials: Secrets Manager ARNs, injected by ECS.
  leadscore_secrets = {
    LEADSCORE_PG_DSN         = module.postgres.dsn_secret_arn
    LEADSCORE_REDIS_URL      = module.redis.url_secret_arn
    LEADSCORE_CLICKHOUSE_DSN = aws_secretsmanager_secret.clickhouse_dsn.arn
    # The password key of MSK's SCRAM secret (ECS reads one JSON key: ARN:key::).
    LEADSCORE_KAFKA_SASL_PASSWORD = "${module.msk.scram_secret_arn}:password::"
    # The query API's read-mostly role, the webhook secrets' key, the registry's password.
    LEADSCORE_API_PG_DSN               = module.postgres.api_dsn_secret_arn
    LEADSCORE_WEBHOOK_SECRET_KEY       = aws_secretsmanager_secret.webhook_secret_key.arn
    LEADSCORE_SCHEMA_REGISTRY_PASSWORD = aws_secretsmanager_secret.schema_registry_password.arn
    # The key-encryption keys that wrap each lead's data key (README, "Privacy").
    LEADSCORE_KEK = aws_secretsmanager_secret.kek.arn
  }
}

module "network" {
  source             = "./modules/network"
  name               = var.name
  cidr               = var.vpc_cidr
  availability_zones = var.availability_zones
  nat_per_az         = var.nat_per_az
  log_retention_days = var.log_retention_days
  kms_key_arn        = aws_kms_key.this.arn
}

module "msk" {
  source                    = "./modules/msk"
  name                      = var.name
  vpc_id                    = module.network.vpc_id
  subnet_ids                = module.network.private_subnet_ids
  client_security_group_ids = local.clients.kafka
  kafka_version             = var.kafka_version
  broker_count              = var.kafka_broker_count
  instance_type             = var.kafka_instance_type
  volume_gb                 = var.kafka_volume_gb
  partitions                = var.topic_partitions
  retention_hours           = var.kafka_retention_hours
  kms_key_arn               = aws_kms_key.this.arn
  log_retention_days        = var.log_retention_days
  credentials_version       = var.credentials_version
}

module "postgres" {
  source                    = "./modules/postgres"
  name                      = var.name
  vpc_id                    = module.network.vpc_id
  subnet_ids                = module.network.private_subnet_ids
  client_security_group_ids = local.clients.postgres
  engine_major              = var.postgres_major_version
  instance_class            = var.postgres_instance_class
  allocated_gb              = var.postgres_storage_gb
  multi_az                  = var.postgres_multi_az
  kms_key_arn               = aws_kms_key.this.arn
  credentials_version       = var.credentials_version
}

module "redis" {
  source                    = "./modules/redis"
  name                      = var.name
  vpc_id                    = module.network.vpc_id
  subnet_ids                = module.network.private_subnet_ids
  client_security_group_ids = local.clients.redis
  engine_version            = var.redis_engine_version
  node_type                 = var.redis_node_type
  replicas                  = var.redis_replicas
  kms_key_arn               = aws_kms_key.this.arn
}

resource "aws_secretsmanager_secret" "clickhouse_dsn" {
  #checkov:skip=CKV2_AWS_57:the DSN is issued by the ClickHouse operator (Cloud or self-run); rotate it there and re-apply with a new credentials_version
  name                    = "${var.name}/LEADSCORE_CLICKHOUSE_DSN"
  description             = "LEADSCORE_CLICKHOUSE_DSN of the leadscore services"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "clickhouse_dsn" {
  secret_id                = aws_secretsmanager_secret.clickhouse_dsn.id
  secret_string_wo         = var.clickhouse_dsn
  secret_string_wo_version = var.credentials_version
}

# The Fernet key(s) that encrypt webhook secrets at rest, newest first. Given by the
# operator, not drawn here: a new key must be prepended, never swapped in (secrets written
# under the old one must stay readable), so it has its own version.
resource "aws_secretsmanager_secret" "webhook_secret_key" {
  #checkov:skip=CKV2_AWS_57:a Fernet key list cannot be rotated by a Lambda blindly; prepend a new key to webhook_secret_key and bump webhook_secret_key_version
  name                    = "${var.name}/LEADSCORE_WEBHOOK_SECRET_KEY"
  description             = "LEADSCORE_WEBHOOK_SECRET_KEY of the leadscore services"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "webhook_secret_key" {
  secret_id                = aws_secretsmanager_secret.webhook_secret_key.id
  secret_string_wo         = var.webhook_secret_key
  secret_string_wo_version = var.webhook_secret_key_version
}

# The key-encryption key(s) that wrap every lead's data key, newest first. Given by the
# operator, like the webhook key: a new KEK is prepended (the old one still unwraps until
# `leadscore keys rotate` has re-wrapped every lead key), so it has its own version.
resource "aws_secretsmanager_secret" "kek" {
  #checkov:skip=CKV2_AWS_57:a KEK list cannot be rotated by a Lambda blindly; prepend a new KEK to kek, bump kek_version, then run leadscore keys rotate
  name                    = "${var.name}/LEADSCORE_KEK"
  description             = "LEADSCORE_KEK of the leadscore services"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "kek" {
  secret_id                = aws_secretsmanager_secret.kek.id
  secret_string_wo         = var.kek
  secret_string_wo_version = var.kek_version
}

# The schema registry's password: drawn here for the engine's own registry (the registry
# task and every client read the same secret), the operator's for a managed one.
data "aws_secretsmanager_random_password" "schema_registry" {
  password_length     = 40
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret" "schema_registry_password" {
  #checkov:skip=CKV2_AWS_57:the registry and its clients read this one secret at start; rotate by bumping credentials_version and redeploying the services
  name                    = "${var.name}/LEADSCORE_SCHEMA_REGISTRY_PASSWORD"
  description             = "LEADSCORE_SCHEMA_REGISTRY_PASSWORD of the leadscore services"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "schema_registry_password" {
  secret_id                = aws_secretsmanager_secret.schema_registry_password.id
  secret_string_wo         = local.run_registry ? data.aws_secretsmanager_random_password.schema_registry.random_password : var.schema_registry_password
  secret_string_wo_version = var.credentials_version
}

module "services" {
  source                = "./modules/services"
  name                  = var.name
  region                = var.region
  vpc_id                = module.network.vpc_id
  private_subnet_ids    = module.network.private_subnet_ids
  public_subnet_ids     = module.network.public_subnet_ids
  security_group_ids    = { for k, sg in aws_security_group.service : k => sg.id }
  alb_security_group_id = aws_security_group.alb.id
  alb_log_bucket        = aws_s3_bucket.alb_logs.id
  image                 = var.image
  environment           = local.leadscore_environment
  secrets               = local.leadscore_secrets
  kms_key_arn           = aws_kms_key.this.arn
  log_retention_days    = var.log_retention_days
  acm_certificate_arn   = var.acm_certificate_arn
  api_port              = var.api_port
  api_count             = var.api_count
  api_cpu               = var.api_cpu
  api_memory            = var.api_memory
  run_schema_registry   = local.run_registry
  registry_port         = var.registry_port
  internal_domain       = var.internal_domain
  worker_cpu            = var.worker_cpu
  worker_memory         = var.worker_memory
  worker_min_count      = var.worker_min_count
  worker_max_count      = var.worker_max_count
  worker_lag_target     = var.worker_lag_target
  lag_alarm_threshold   = var.lag_alarm_threshold
  alarm_actions         = var.alarm_actions
  kafka_cluster_name    = module.msk.cluster_name
  consumer_group        = var.consumer_group
  lead_events_topic     = var.topic_lead_events
  stop_timeout_s        = ceil(var.shutdown_timeout_s) + 5

  depends_on = [aws_s3_bucket_policy.alb_logs]
}
