# RDS PostgreSQL: the event store, read models, registries. TLS is forced (rds.force_ssl)
# and the DSN handed to the services says sslmode=require.

resource "aws_security_group" "db" {
  name        = "${var.name}-postgres"
  description = "RDS PostgreSQL: 5432 from the leadscore services only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "postgres" {
  for_each                     = var.client_security_group_ids
  security_group_id            = aws_security_group.db.id
  description                  = "PostgreSQL from ${each.key}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

resource "aws_db_subnet_group" "this" {
  name       = var.name
  subnet_ids = var.subnet_ids
}

resource "aws_db_parameter_group" "this" {
  name   = "${var.name}-pg${var.engine_major}"
  family = "postgres${var.engine_major}"

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
}

resource "aws_iam_role" "monitoring" {
  name = "${var.name}-rds-monitoring"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "monitoring.rds.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy_attachment" "monitoring" {
  role       = aws_iam_role.monitoring.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

# Drawn anew on every plan, but written only when credentials_version changes (write-only
# arguments below). The data source's value is kept in the state: keep the state encrypted.
data "aws_secretsmanager_random_password" "db" {
  password_length     = 40
  exclude_punctuation = true
}

resource "aws_db_instance" "this" {
  #checkov:skip=CKV_AWS_161:the engine connects with a password DSN (LEADSCORE_PG_DSN); IAM tokens expire every 15 min and asyncpg pools cannot refresh them
  identifier                      = var.name
  engine                          = "postgres"
  engine_version                  = var.engine_major
  instance_class                  = var.instance_class
  allocated_storage               = var.allocated_gb
  max_allocated_storage           = var.allocated_gb * 4
  storage_type                    = "gp3"
  storage_encrypted               = true
  kms_key_id                      = var.kms_key_arn
  db_name                         = "leadscore"
  username                        = "leadscore"
  password_wo                     = data.aws_secretsmanager_random_password.db.random_password
  password_wo_version             = var.credentials_version
  multi_az                        = var.multi_az
  db_subnet_group_name            = aws_db_subnet_group.this.name
  vpc_security_group_ids          = [aws_security_group.db.id]
  parameter_group_name            = aws_db_parameter_group.this.name
  publicly_accessible             = false
  backup_retention_period         = 14
  copy_tags_to_snapshot           = true
  deletion_protection             = true
  skip_final_snapshot             = false
  final_snapshot_identifier       = "${var.name}-final"
  auto_minor_version_upgrade      = true
  enabled_cloudwatch_logs_exports = ["postgresql", "upgrade"]
  monitoring_interval             = 60
  monitoring_role_arn             = aws_iam_role.monitoring.arn
  performance_insights_enabled    = true
  performance_insights_kms_key_id = var.kms_key_arn
}

resource "aws_secretsmanager_secret" "dsn" {
  #checkov:skip=CKV2_AWS_57:the DSN embeds the password set by password_wo; rotate by bumping credentials_version (one apply changes both)
  name                    = "${var.name}/LEADSCORE_PG_DSN"
  description             = "LEADSCORE_PG_DSN of the leadscore services"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "dsn" {
  secret_id = aws_secretsmanager_secret.dsn.id
  # The same draw as password_wo above: one plan reads the data source once.
  secret_string_wo         = "postgresql://leadscore:${data.aws_secretsmanager_random_password.db.random_password}@${aws_db_instance.this.address}:${aws_db_instance.this.port}/leadscore?sslmode=require"
  secret_string_wo_version = var.credentials_version
}

# The query API's own role (query_api/db_role.py grants it reads and a few writes). Making
# the role is the cluster's business: once, as the master user (README "Deploy").
data "aws_secretsmanager_random_password" "api" {
  password_length     = 40
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret" "api_dsn" {
  #checkov:skip=CKV2_AWS_57:the API role's password is set once by the operator from this secret; rotate by bumping credentials_version and ALTER ROLE with the new value
  name                    = "${var.name}/LEADSCORE_API_PG_DSN"
  description             = "LEADSCORE_API_PG_DSN of the leadscore services: the query API's role"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "api_dsn" {
  secret_id                = aws_secretsmanager_secret.api_dsn.id
  secret_string_wo         = "postgresql://${var.api_role}:${data.aws_secretsmanager_random_password.api.random_password}@${aws_db_instance.this.address}:${aws_db_instance.this.port}/leadscore?sslmode=require"
  secret_string_wo_version = var.credentials_version
}
