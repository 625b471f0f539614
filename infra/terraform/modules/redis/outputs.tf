output "url_secret_arn" {
  value = aws_secretsmanager_secret.url.arn
}

output "security_group_id" {
  value = aws_security_group.redis.id
}

output "ingress" {
  description = "Who may reach Redis: client name => security group and port"
  value = {
    for k, r in aws_vpc_security_group_ingress_rule.redis :
    k => { source = r.referenced_security_group_id, port = r.from_port, cidr = r.cidr_ipv4 }
  }
}

output "transit_encryption" {
  value = aws_elasticache_replication_group.this.transit_encryption_enabled
}
