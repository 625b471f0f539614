# One security group per service; each may reach only what it uses:
#
#   worker       -> Kafka, PostgreSQL, schema registry
#   relay        -> Kafka, PostgreSQL, schema registry, webhook receivers (HTTPS)
#   projections  -> PostgreSQL, Redis, ClickHouse
#   api          -> PostgreSQL, Redis, ClickHouse; reached only from the ALB
#   registry     -> PostgreSQL; reached only from the worker and the relay
#
# Every task also reaches HTTPS endpoints through NAT: ECR, Secrets Manager, CloudWatch Logs.

locals {
  service_names = concat(["worker", "relay", "projections", "api"], local.run_registry ? ["registry"] : [])

  uses = {
    worker      = ["kafka", "postgres", "registry"]
    relay       = ["kafka", "postgres", "registry"]
    projections = ["postgres", "redis", "clickhouse"]
    api         = ["postgres", "redis", "clickhouse"]
    registry    = ["postgres"]
  }

  clients = {
    for store in ["kafka", "postgres", "redis", "registry"] : store => {
      for svc in local.service_names : svc => aws_security_group.service[svc].id
      if contains(local.uses[svc], store)
    }
  }

  store_ports = { kafka = 9096, postgres = 5432, redis = 6379, registry = var.registry_port }

  store_security_groups = merge(
    {
      kafka    = module.msk.security_group_id
      postgres = module.postgres.security_group_id
      redis    = module.redis.security_group_id
    },
    local.run_registry ? { registry = aws_security_group.service["registry"].id } : {}
  )

  # (service, store) pairs for the egress rules towards the VPC's own stores.
  service_store_pairs = {
    for pair in flatten([
      for svc in local.service_names : [
        for store in local.uses[svc] : { svc = svc, store = store }
        if contains(keys(local.store_security_groups), store)
      ]
    ]) : "${pair.svc}-${pair.store}" => pair
  }
}

resource "aws_security_group" "service" {
  for_each    = toset(local.service_names)
  name        = "${var.name}-${each.key}"
  description = "leadscore ${each.key} tasks"
  vpc_id      = module.network.vpc_id
}

resource "aws_vpc_security_group_egress_rule" "to_store" {
  for_each                     = local.service_store_pairs
  security_group_id            = aws_security_group.service[each.value.svc].id
  description                  = "${each.value.svc} to ${each.value.store}"
  referenced_security_group_id = local.store_security_groups[each.value.store]
  ip_protocol                  = "tcp"
  from_port                    = local.store_ports[each.value.store]
  to_port                      = local.store_ports[each.value.store]
}

resource "aws_vpc_security_group_egress_rule" "to_clickhouse" {
  for_each = {
    for pair in setproduct(["projections", "api"], var.clickhouse_cidrs) : "${pair[0]}-${pair[1]}" => pair
  }
  security_group_id = aws_security_group.service[each.value[0]].id
  description       = "${each.value[0]} to ClickHouse"
  cidr_ipv4         = each.value[1]
  ip_protocol       = "tcp"
  from_port         = var.clickhouse_port
  to_port           = var.clickhouse_port
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each          = toset(local.service_names)
  security_group_id = aws_security_group.service[each.key].id
  description       = "${each.key} to AWS APIs and ECR over NAT (and webhook receivers, for the relay)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_ingress_rule" "registry" {
  for_each                     = local.run_registry ? local.clients.registry : {}
  security_group_id            = aws_security_group.service["registry"].id
  description                  = "schema registry from ${each.key}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = var.registry_port
  to_port                      = var.registry_port
}

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "Query API load balancer: HTTPS in, the API tasks out"
  vpc_id      = module.network.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  #checkov:skip=CKV_AWS_260:not port 80; the public HTTPS entry point of the query API is meant to be reachable from api_ingress_cidrs
  for_each          = toset(var.api_ingress_cidrs)
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from ${each.key}"
  cidr_ipv4         = each.key
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "alb_to_api" {
  security_group_id            = aws_security_group.alb.id
  description                  = "ALB to the API tasks"
  referenced_security_group_id = aws_security_group.service["api"].id
  ip_protocol                  = "tcp"
  from_port                    = var.api_port
  to_port                      = var.api_port
}

resource "aws_vpc_security_group_ingress_rule" "api_from_alb" {
  security_group_id            = aws_security_group.service["api"].id
  description                  = "API from its load balancer only"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = var.api_port
  to_port                      = var.api_port
}
