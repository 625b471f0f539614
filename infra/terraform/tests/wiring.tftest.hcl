# Offline wiring checks: the AWS provider is mocked, so plan and apply run without an
# account. Known values are pinned where the assertions compare them.

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_elb_service_account" {
    defaults = { arn = "arn:aws:iam::127311923021:root" }
  }
  mock_data "aws_secretsmanager_random_password" {
    defaults = { random_password = "MockPassword0123456789abcdefghijklmnopqrstuvwxyz" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
  }
  mock_resource "aws_cloudwatch_log_group" {
    defaults = { arn = "arn:aws:logs:us-east-1:123456789012:log-group:/leadscore/mock" }
  }
  mock_resource "aws_lb" {
    defaults = { arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/leadscore-api/mock" }
  }
  mock_resource "aws_lb_target_group" {
    defaults = { arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/leadscore-api/mock" }
  }
  mock_resource "aws_lb_listener" {
    defaults = { arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/leadscore-api/mock/mock" }
  }
  mock_resource "aws_secretsmanager_secret" {
    defaults = { arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/mock-dddddd" }
  }
  mock_resource "aws_ecs_task_definition" {
    defaults = { arn = "arn:aws:ecs:us-east-1:123456789012:task-definition/leadscore-mock:1" }
  }
  mock_resource "aws_ecs_cluster" {
    defaults = { arn = "arn:aws:ecs:us-east-1:123456789012:cluster/leadscore" }
  }
  mock_resource "aws_service_discovery_service" {
    defaults = { arn = "arn:aws:servicediscovery:us-east-1:123456789012:service/srv-mock" }
  }
  mock_resource "aws_s3_bucket" {
    defaults = { arn = "arn:aws:s3:::leadscore-alb-logs-mock" }
  }
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:us-east-1:123456789012:key/mock" }
  }
  mock_resource "aws_msk_cluster" {
    defaults = {
      arn                          = "arn:aws:kafka:us-east-1:123456789012:cluster/leadscore/mock"
      bootstrap_brokers_sasl_scram = "b-1.mock.kafka.us-east-1.amazonaws.com:9096,b-2.mock.kafka.us-east-1.amazonaws.com:9096"
    }
  }
  mock_resource "aws_msk_configuration" {
    defaults = { arn = "arn:aws:kafka:us-east-1:123456789012:configuration/leadscore/mock", latest_revision = 1 }
  }
}

override_resource {
  target = module.postgres.aws_secretsmanager_secret.dsn
  values = { arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_PG_DSN-aaaaaa" }
}

override_resource {
  target = module.redis.aws_secretsmanager_secret.url
  values = { arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_REDIS_URL-bbbbbb" }
}

override_resource {
  target = module.msk.aws_secretsmanager_secret.scram
  values = { arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:AmazonMSK_leadscore_leadscore-dddddd" }
}

override_resource {
  target = aws_secretsmanager_secret.clickhouse_dsn
  values = { arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_CLICKHOUSE_DSN-cccccc" }
}

override_resource {
  target = module.postgres.aws_secretsmanager_secret.api_dsn
  values = { arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_API_PG_DSN-eeeeee" }
}

override_resource {
  target = aws_secretsmanager_secret.webhook_secret_key
  values = { arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_WEBHOOK_SECRET_KEY-ffffff" }
}

override_resource {
  target = aws_secretsmanager_secret.kek
  values = { arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_KEK-hhhhhh" }
}

override_resource {
  target = aws_secretsmanager_secret.schema_registry_password
  values = { arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_SCHEMA_REGISTRY_PASSWORD-gggggg" }
}

variables {
  webhook_secret_key  = "MockFernetKeyMockFernetKeyMockFernetKey0123=,OlderFernetKeyOlderFernetKeyOlderFernetK012="
  kek                 = "MockKekMockKekMockKekMockKekMockKekMockKek0=,OlderKekOlderKekOlderKekOlderKekOlderKek012="
  image               = "123456789012.dkr.ecr.us-east-1.amazonaws.com/leadscore:test"
  acm_certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/mock"
  clickhouse_dsn      = "https://leadscore:secret@clickhouse.example.com:8443/leadscore"
}

run "workers_get_brokers_and_secrets" {
  command = apply

  assert {
    condition     = output.leadscore_environment["LEADSCORE_KAFKA_BOOTSTRAP"] == "b-1.mock.kafka.us-east-1.amazonaws.com:9096,b-2.mock.kafka.us-east-1.amazonaws.com:9096"
    error_message = "LEADSCORE_KAFKA_BOOTSTRAP is not the brokers' SASL/SCRAM bootstrap string"
  }

  assert {
    condition = alltrue([
      for svc, defs in module.services.task_definitions :
      contains(defs[0].environment, { name = "LEADSCORE_KAFKA_BOOTSTRAP", value = "b-1.mock.kafka.us-east-1.amazonaws.com:9096,b-2.mock.kafka.us-east-1.amazonaws.com:9096" })
    ])
    error_message = "a task definition lacks the brokers' bootstrap string"
  }

  assert {
    condition = toset(module.services.task_definitions["worker"][0].secrets) == toset([
      { name = "LEADSCORE_PG_DSN", valueFrom = "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_PG_DSN-aaaaaa" },
      { name = "LEADSCORE_REDIS_URL", valueFrom = "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_REDIS_URL-bbbbbb" },
      { name = "LEADSCORE_CLICKHOUSE_DSN", valueFrom = "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_CLICKHOUSE_DSN-cccccc" },
      { name = "LEADSCORE_KAFKA_SASL_PASSWORD", valueFrom = "arn:aws:secretsmanager:us-east-1:123456789012:secret:AmazonMSK_leadscore_leadscore-dddddd:password::" },
      { name = "LEADSCORE_API_PG_DSN", valueFrom = "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_API_PG_DSN-eeeeee" },
      { name = "LEADSCORE_WEBHOOK_SECRET_KEY", valueFrom = "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_WEBHOOK_SECRET_KEY-ffffff" },
      { name = "LEADSCORE_SCHEMA_REGISTRY_PASSWORD", valueFrom = "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_SCHEMA_REGISTRY_PASSWORD-gggggg" },
      { name = "LEADSCORE_KEK", valueFrom = "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_KEK-hhhhhh" },
    ])
    error_message = "the worker's task definition does not take the eight secrets from Secrets Manager"
  }

  assert {
    condition = alltrue([
      for svc, defs in module.services.task_definitions : alltrue([
        contains(defs[0].environment, { name = "LEADSCORE_KAFKA_SECURITY_PROTOCOL", value = "SASL_SSL" }),
        contains(defs[0].environment, { name = "LEADSCORE_KAFKA_SASL_MECHANISM", value = "SCRAM-SHA-512" }),
        contains(defs[0].environment, { name = "LEADSCORE_KAFKA_SASL_USERNAME", value = "leadscore" }),
      ])
    ])
    error_message = "a task does not authenticate to MSK as the SCRAM user over TLS"
  }

  assert {
    condition     = contains(jsondecode(module.services.secrets_policy)["Statement"][0]["Resource"], "arn:aws:secretsmanager:us-east-1:123456789012:secret:AmazonMSK_leadscore_leadscore-dddddd")
    error_message = "the execution role cannot read MSK's SCRAM secret"
  }

  assert {
    condition = alltrue([
      for svc, defs in module.services.task_definitions :
      alltrue([for e in defs[0].environment : !can(regex("(?i)(password|secret|://[^/]*:[^/]*@)", e.value))])
    ])
    error_message = "a credential is in a plain environment variable"
  }

  assert {
    condition     = contains(module.services.task_definitions["worker"][0].environment, { name = "LEADSCORE_WORKER_RELAY", value = "false" })
    error_message = "workers must leave the relay to the relay service"
  }

  assert {
    condition     = module.services.task_definitions["worker"][0].command == ["worker"]
    error_message = "the worker service does not run leadscore worker (the image's entrypoint is leadscore)"
  }

  assert {
    condition     = module.services.worker_scaling.min == 2 && module.services.worker_scaling.max == 6 && module.services.worker_scaling.target == 20000
    error_message = "worker autoscaling bounds or lag target differ from the variables"
  }
}

run "production_mode_with_every_secret" {
  command = apply

  assert {
    condition = alltrue([
      for svc, defs in module.services.task_definitions :
      contains(defs[0].environment, { name = "LEADSCORE_ENVIRONMENT", value = "production" })
    ])
    error_message = "a task does not run with LEADSCORE_ENVIRONMENT=production"
  }

  # What production refuses to start without (adapters/settings.py, SECRETS), from
  # Secrets Manager in every task; tests/infra/test_terraform.py checks the list is whole.
  assert {
    condition = alltrue([
      for svc, defs in module.services.task_definitions : alltrue([
        for name in ["LEADSCORE_PG_DSN", "LEADSCORE_API_PG_DSN", "LEADSCORE_WEBHOOK_SECRET_KEY", "LEADSCORE_SCHEMA_REGISTRY_PASSWORD", "LEADSCORE_KAFKA_SASL_PASSWORD", "LEADSCORE_KEK"] :
        contains([for s in defs[0].secrets : s.name], name)
      ])
    ])
    error_message = "a task lacks a secret production requires"
  }

  assert {
    condition = length(setsubtract(
      [
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_API_PG_DSN-eeeeee",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_WEBHOOK_SECRET_KEY-ffffff",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_SCHEMA_REGISTRY_PASSWORD-gggggg",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:leadscore/LEADSCORE_KEK-hhhhhh",
      ],
      jsondecode(module.services.secrets_policy)["Statement"][0]["Resource"]
    )) == 0
    error_message = "the execution role cannot read the API DSN, webhook key or registry password"
  }

  assert {
    condition = alltrue([
      for svc, defs in module.services.task_definitions : alltrue([
        contains(defs[0].environment, { name = "LEADSCORE_METRICS_HOST", value = "0.0.0.0" }),
        contains(defs[0].environment, { name = "LEADSCORE_SHUTDOWN_TIMEOUT_S", value = "25" }),
        defs[0].stopTimeout == 30,
      ])
    ])
    error_message = "a task's stopTimeout does not leave the engine its shutdown time"
  }

  assert {
    condition = alltrue([
      for svc in ["worker", "relay"] :
      strcontains(join(" ", module.services.task_definitions[svc][0].healthCheck.command), "http://127.0.0.1:9400/healthz")
    ])
    error_message = "the worker and relay containers are not health-checked on /healthz"
  }
}

run "a_bad_webhook_key_is_refused" {
  command = plan

  variables {
    webhook_secret_key = "not-a-fernet-key"
  }

  expect_failures = [var.webhook_secret_key]
}

run "a_managed_registry_needs_its_password" {
  command = plan

  variables {
    schema_registry_url = "https://registry.example.com"
  }

  expect_failures = [var.schema_registry_password]
}

run "security_groups_allow_only_needed_ports" {
  command = apply

  assert {
    condition     = keys(module.msk.ingress) == ["relay", "worker"]
    error_message = "only the worker and the relay may reach Kafka"
  }
  assert {
    condition     = alltrue([for k, r in module.msk.ingress : r.port == 9096 && r.source == aws_security_group.service[k].id && r.cidr == null])
    error_message = "Kafka ingress is not 9096 from the services' own security groups"
  }
  assert {
    condition     = keys(module.postgres.ingress) == ["api", "projections", "registry", "relay", "worker"]
    error_message = "PostgreSQL is reachable from an unexpected service"
  }
  assert {
    condition     = alltrue([for k, r in module.postgres.ingress : r.port == 5432 && r.source == aws_security_group.service[k].id && r.cidr == null])
    error_message = "PostgreSQL ingress is not 5432 from the services' security groups"
  }
  assert {
    condition     = keys(module.redis.ingress) == ["api", "projections"]
    error_message = "only the API and the projections may reach Redis"
  }
  assert {
    condition     = alltrue([for k, r in module.redis.ingress : r.port == 6379 && r.source == aws_security_group.service[k].id && r.cidr == null])
    error_message = "Redis ingress is not 6379 from the services' security groups"
  }
  assert {
    condition     = keys(aws_vpc_security_group_ingress_rule.registry) == ["relay", "worker"]
    error_message = "the schema registry is reachable from an unexpected service"
  }
  assert {
    condition = alltrue([
      for k, r in aws_vpc_security_group_egress_rule.https : r.from_port == 443 && r.to_port == 443
    ])
    error_message = "the services' internet egress is not HTTPS only"
  }
  assert {
    condition     = module.postgres.publicly_accessible == false && module.redis.transit_encryption == true
    error_message = "PostgreSQL is public or Redis is without TLS"
  }
}

run "api_only_through_the_alb" {
  command = apply

  assert {
    condition = (
      aws_vpc_security_group_ingress_rule.api_from_alb.security_group_id == aws_security_group.service["api"].id &&
      aws_vpc_security_group_ingress_rule.api_from_alb.referenced_security_group_id == aws_security_group.alb.id &&
      aws_vpc_security_group_ingress_rule.api_from_alb.from_port == 8000 &&
      aws_vpc_security_group_ingress_rule.api_from_alb.cidr_ipv4 == null
    )
    error_message = "the API's only ingress must be port 8000 from the ALB's security group"
  }
  assert {
    condition     = alltrue([for r in aws_vpc_security_group_ingress_rule.alb_https : r.from_port == 443 && r.to_port == 443])
    error_message = "the ALB accepts something other than HTTPS"
  }
  assert {
    condition     = module.services.https_listener.port == 443 && module.services.https_listener.protocol == "HTTPS" && module.services.https_listener.cert == var.acm_certificate_arn
    error_message = "the ALB listener is not HTTPS with the given certificate"
  }
  assert {
    condition     = alltrue([for k, v in module.services.assign_public_ip : v == false])
    error_message = "a service's tasks get a public IP"
  }
  assert {
    condition = alltrue([
      for k, tgs in module.services.api_load_balancers : k == "api" ? tgs == [module.services.api_target_group_arn] : length(tgs) == 0
    ])
    error_message = "only the API service may sit behind the load balancer"
  }
}

run "managed_registry_url_replaces_the_registry_service" {
  command = plan

  variables {
    schema_registry_url      = "https://registry.example.com"
    schema_registry_password = "managed-registry-password"
  }

  assert {
    condition     = output.leadscore_environment["LEADSCORE_SCHEMA_REGISTRY_URL"] == "https://registry.example.com"
    error_message = "a managed registry URL must become LEADSCORE_SCHEMA_REGISTRY_URL"
  }
  assert {
    condition     = !contains(keys(aws_security_group.service), "registry")
    error_message = "the registry service must not run when a managed registry is given"
  }
}

run "more_workers_than_partitions_is_refused" {
  command = plan

  variables {
    topic_partitions = 4
    worker_max_count = 6
  }

  expect_failures = [var.worker_max_count]
}

# The pilot size of docs/deploy.md plans as written there.
run "small_size_plans" {
  command = plan

  variables {
    availability_zones      = ["us-east-1a", "us-east-1b"]
    nat_per_az              = false
    kafka_broker_count      = 2
    kafka_instance_type     = "kafka.t3.small"
    postgres_instance_class = "db.t4g.medium"
    postgres_multi_az       = false
    redis_node_type         = "cache.t4g.small"
    worker_max_count        = 4
  }

  assert {
    condition     = length(module.network.private_subnet_ids) == 2
    error_message = "two zones, two private subnets"
  }
}
