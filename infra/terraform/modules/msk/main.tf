# Amazon MSK on the Kafka line of the dev stack (devtools/services/kafka.py pins 3.9.1).
# Clients authenticate with SASL/SCRAM over TLS; nothing else is accepted.

resource "aws_security_group" "brokers" {
  name        = "${var.name}-msk"
  description = "MSK brokers: SASL/SCRAM over TLS from the leadscore services only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "scram" {
  for_each                     = var.client_security_group_ids
  security_group_id            = aws_security_group.brokers.id
  description                  = "Kafka SASL/SCRAM+TLS from ${each.key}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 9096
  to_port                      = 9096
}

resource "aws_msk_configuration" "this" {
  name           = "${var.name}-kafka"
  kafka_versions = [var.kafka_version]
  # Outside the dev stack (where `leadscore services up` creates them) nothing creates
  # the engine's topics: the brokers do on first use, with the partitions and retention
  # given here (LEADSCORE_TOPIC_PARTITIONS says the same number to the workers).
  server_properties = <<-PROPERTIES
    auto.create.topics.enable=true
    num.partitions=${var.partitions}
    default.replication.factor=${min(3, var.broker_count)}
    min.insync.replicas=${min(2, var.broker_count)}
    log.retention.hours=${var.retention_hours}
    allow.everyone.if.no.acl.found=true
  PROPERTIES
}

resource "aws_cloudwatch_log_group" "brokers" {
  name              = "/${var.name}/msk"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_msk_cluster" "this" {
  cluster_name           = var.name
  kafka_version          = var.kafka_version
  number_of_broker_nodes = var.broker_count
  enhanced_monitoring    = "PER_TOPIC_PER_BROKER"

  broker_node_group_info {
    instance_type   = var.instance_type
    client_subnets  = var.subnet_ids
    security_groups = [aws_security_group.brokers.id]
    storage_info {
      ebs_storage_info {
        volume_size = var.volume_gb
      }
    }
    connectivity_info {
      public_access {
        type = "DISABLED"
      }
    }
  }

  client_authentication {
    unauthenticated = false
    sasl {
      scram = true
    }
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = var.kms_key_arn
    encryption_in_transit {
      client_broker = "TLS"
      in_cluster    = true
    }
  }

  configuration_info {
    arn      = aws_msk_configuration.this.arn
    revision = aws_msk_configuration.this.latest_revision
  }

  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.brokers.name
      }
    }
  }
}

locals {
  scram_username = "leadscore" # LEADSCORE_KAFKA_SASL_USERNAME
}

# MSK reads SCRAM users only from secrets named AmazonMSK_* under a customer-managed key.
resource "aws_secretsmanager_secret" "scram" {
  #checkov:skip=CKV2_AWS_57:MSK SCRAM users have no rotation Lambda; rotate by bumping credentials_version
  name                    = "AmazonMSK_${var.name}_leadscore"
  description             = "SASL/SCRAM user of the leadscore services on MSK"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = 7
}

# Drawn anew on every plan, written only when credentials_version changes.
data "aws_secretsmanager_random_password" "scram" {
  password_length     = 40
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret_version" "scram" {
  secret_id = aws_secretsmanager_secret.scram.id
  secret_string_wo = jsonencode({
    username = local.scram_username
    password = data.aws_secretsmanager_random_password.scram.random_password
  })
  secret_string_wo_version = var.credentials_version
}

resource "aws_msk_scram_secret_association" "this" {
  cluster_arn     = aws_msk_cluster.this.arn
  secret_arn_list = [aws_secretsmanager_secret.scram.arn]
  depends_on      = [aws_secretsmanager_secret_version.scram]
}
