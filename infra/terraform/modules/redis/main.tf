# ElastiCache Redis: the hot read model. TLS in transit, an AUTH token, encrypted at rest.

resource "aws_security_group" "redis" {
  name        = "${var.name}-redis"
  description = "ElastiCache Redis: 6379 from the leadscore services only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "redis" {
  for_each                     = var.client_security_group_ids
  security_group_id            = aws_security_group.redis.id
  description                  = "Redis TLS from ${each.key}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
}

resource "aws_elasticache_subnet_group" "this" {
  name       = var.name
  subnet_ids = var.subnet_ids
}

# ElastiCache has no write-only token argument, so this token is in the state (keep the
# state encrypted). A data source draws a new one on every plan: ignore_changes below
# keeps the first; rotate by replacing both resources deliberately.
data "aws_secretsmanager_random_password" "auth" {
  password_length     = 64
  exclude_punctuation = true
}

resource "aws_elasticache_replication_group" "this" {
  replication_group_id       = var.name
  description                = "leadscore hot read model"
  engine                     = "redis"
  engine_version             = var.engine_version
  node_type                  = var.node_type
  num_cache_clusters         = var.replicas + 1
  automatic_failover_enabled = true
  multi_az_enabled           = true
  port                       = 6379
  subnet_group_name          = aws_elasticache_subnet_group.this.name
  security_group_ids         = [aws_security_group.redis.id]
  at_rest_encryption_enabled = true
  kms_key_id                 = var.kms_key_arn
  transit_encryption_enabled = true
  transit_encryption_mode    = "required"
  auth_token                 = data.aws_secretsmanager_random_password.auth.random_password
  snapshot_retention_limit   = 7
  auto_minor_version_upgrade = true

  lifecycle {
    ignore_changes = [auth_token]
  }
}

resource "aws_secretsmanager_secret" "url" {
  #checkov:skip=CKV2_AWS_57:the URL embeds the ElastiCache AUTH token; Secrets Manager has no managed rotation that also changes the token on the cluster
  name                    = "${var.name}/LEADSCORE_REDIS_URL"
  description             = "LEADSCORE_REDIS_URL of the leadscore services"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "url" {
  secret_id     = aws_secretsmanager_secret.url.id
  secret_string = "rediss://:${data.aws_secretsmanager_random_password.auth.random_password}@${aws_elasticache_replication_group.this.primary_endpoint_address}:6379/0"

  lifecycle {
    ignore_changes = [secret_string]
  }
}
