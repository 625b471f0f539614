output "cluster_name" {
  value = aws_ecs_cluster.this.name
}

output "alb_dns_name" {
  value = aws_lb.api.dns_name
}

output "alb_arn" {
  value = aws_lb.api.arn
}

output "task_definitions" {
  description = "Container definitions (decoded JSON) by service"
  value       = { for k, td in aws_ecs_task_definition.service : k => jsondecode(td.container_definitions) }
}

output "assign_public_ip" {
  description = "Whether each service's tasks get a public IP (none should)"
  value       = { for k, s in aws_ecs_service.service : k => one(s.network_configuration).assign_public_ip }
}

output "api_load_balancers" {
  description = "Load balancer attachments of each service"
  value       = { for k, s in aws_ecs_service.service : k => [for lb in s.load_balancer : lb.target_group_arn] }
}

output "api_target_group_arn" {
  value = aws_lb_target_group.api.arn
}

output "https_listener" {
  value = {
    port       = aws_lb_listener.https.port
    protocol   = aws_lb_listener.https.protocol
    ssl_policy = aws_lb_listener.https.ssl_policy
    cert       = aws_lb_listener.https.certificate_arn
  }
}

output "worker_scaling" {
  value = {
    min    = aws_appautoscaling_target.worker.min_capacity
    max    = aws_appautoscaling_target.worker.max_capacity
    target = one(aws_appautoscaling_policy.worker_lag.target_tracking_scaling_policy_configuration).target_value
  }
}

output "secrets_policy" {
  description = "The execution role's policy: the secrets it may read (checked by the wiring tests)"
  value       = aws_iam_role_policy.secrets.policy
}
