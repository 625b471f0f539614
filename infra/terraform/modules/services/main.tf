# ECS Fargate: workers (autoscaled on consumer lag), the relay, the projections, the
# query API behind an HTTPS ALB and, unless a managed one is given, the schema registry.
# Every task gets the same LEADSCORE_* environment and secrets (the root module's
# outputs), plus a few per-service settings below.

locals {
  registry_enabled = var.run_schema_registry

  services = merge(
    {
      worker = {
        command = ["worker"]
        # The relay and the projections run as services of their own (below). "," is an
        # empty projection list: ECS drops environment variables whose value is "".
        environment = { LEADSCORE_WORKER_RELAY = "false", LEADSCORE_WORKER_PROJECTIONS = "," }
        cpu         = var.worker_cpu
        memory      = var.worker_memory
        count       = var.worker_min_count
        port        = null
        probe       = "/healthz" # streams/probes.py: the worker's event loop turns
      }
      relay = {
        command     = ["relay"]
        environment = {}
        cpu         = 512
        memory      = 1024
        count       = 1
        port        = null
        probe       = "/healthz"
      }
      projections = {
        command     = ["projections", "run", "postgres", "redis", "clickhouse"]
        environment = {}
        cpu         = 1024
        memory      = 2048
        count       = 1
        port        = null
        probe       = null
      }
      api = {
        command     = ["api"]
        environment = {}
        cpu         = var.api_cpu
        memory      = var.api_memory
        count       = var.api_count
        port        = var.api_port
        probe       = null # the load balancer health-checks /health
      }
    },
    local.registry_enabled ? {
      registry = {
        command = ["registry"]
        # The registry binds to the host of this URL: all interfaces inside its task.
        environment = { LEADSCORE_SCHEMA_REGISTRY_URL = "http://0.0.0.0:${var.registry_port}" }
        cpu         = 256
        memory      = 512
        count       = 2
        port        = var.registry_port
        probe       = null
      }
    } : {}
  )
}

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_cloudwatch_log_group" "service" {
  for_each          = local.services
  name              = "/${var.name}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_iam_role" "execution" {
  name = "${var.name}-ecs-execution"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ecs-tasks.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

# The execution role reads exactly the secrets the tasks are given, nothing else.
resource "aws_iam_role_policy" "secrets" {
  name = "read-leadscore-secrets"
  role = aws_iam_role.execution.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect = "Allow"
        Action = ["secretsmanager:GetSecretValue"]
        # A valueFrom may name one JSON key of a secret (ARN:key::); the policy the secret.
        Resource = sort(distinct([
          for v in values(var.secrets) : regex("^arn:[^:]+:secretsmanager:[^:]+:[^:]+:secret:[^:]+", v)
        ]))
      },
      {
        Effect   = "Allow"
        Action   = ["kms:Decrypt"]
        Resource = [var.kms_key_arn]
      },
    ]
  })
}

# The engine calls no AWS API itself: its task role has no policy.
resource "aws_iam_role" "task" {
  name = "${var.name}-ecs-task"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ecs-tasks.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_ecs_task_definition" "service" {
  for_each                 = local.services
  family                   = "${var.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = each.value.cpu
  memory                   = each.value.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  # The writable places of a read-only container: LEADSCORE_RUN_DIR (Faust's data
  # directory among others) and /tmp.
  volume {
    name = "run"
  }

  volume {
    name = "tmp"
  }

  # Keys with nothing to say are left out: ECS drops them and Terraform would see a diff.
  container_definitions = jsonencode([merge(
    {
      name                   = each.key
      image                  = var.image
      command                = each.value.command
      essential              = true
      readonlyRootFilesystem = true
      stopTimeout            = var.stop_timeout_s
      environment = [
        for k, v in merge(var.environment, each.value.environment) : { name = k, value = v }
      ]
      secrets = [
        for k, arn in var.secrets : { name = k, valueFrom = arn }
      ]
      mountPoints = [
        { sourceVolume = "run", containerPath = var.environment["LEADSCORE_RUN_DIR"], readOnly = false },
        { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
      ]
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.service[each.key].name
          awslogs-region        = var.region
          awslogs-stream-prefix = each.key
        }
      }
    },
    each.value.port == null ? {} : {
      portMappings = [{ containerPort = each.value.port, protocol = "tcp" }]
    },
    # The metrics server's liveness path, asked from inside the container: no security
    # group admits the metrics port (open it to a scraper's group to scrape).
    each.value.probe == null ? {} : {
      healthCheck = {
        command     = ["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${var.environment["LEADSCORE_METRICS_PORT"]}${each.value.probe}', timeout=3)"]
        interval    = 15
        timeout     = 5
        retries     = 3
        startPeriod = 60
      }
    },
  )])
}

# Cloud Map: the registry's private DNS name, which LEADSCORE_SCHEMA_REGISTRY_URL names.
resource "aws_service_discovery_private_dns_namespace" "this" {
  count = local.registry_enabled ? 1 : 0
  name  = var.internal_domain
  vpc   = var.vpc_id
}

resource "aws_service_discovery_service" "registry" {
  count = local.registry_enabled ? 1 : 0
  name  = "registry"

  dns_config {
    namespace_id   = aws_service_discovery_private_dns_namespace.this[0].id
    routing_policy = "MULTIVALUE"
    dns_records {
      ttl  = 10
      type = "A"
    }
  }

  health_check_custom_config {
    failure_threshold = 1
  }
}

resource "aws_ecs_service" "service" {
  for_each               = local.services
  name                   = each.key
  cluster                = aws_ecs_cluster.this.id
  task_definition        = aws_ecs_task_definition.service[each.key].arn
  desired_count          = each.value.count
  launch_type            = "FARGATE"
  enable_execute_command = false
  propagate_tags         = "SERVICE"

  # A release whose tasks do not come up is rolled back instead of replacing healthy ones.
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [var.security_group_ids[each.key]]
    assign_public_ip = false
  }

  dynamic "load_balancer" {
    for_each = each.key == "api" ? [1] : []
    content {
      target_group_arn = aws_lb_target_group.api.arn
      container_name   = "api"
      container_port   = var.api_port
    }
  }

  dynamic "service_registries" {
    for_each = each.key == "registry" ? [1] : []
    content {
      registry_arn = aws_service_discovery_service.registry[0].arn
    }
  }

  # The worker count belongs to the autoscaler once the service exists.
  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [aws_lb_listener.https]
}
