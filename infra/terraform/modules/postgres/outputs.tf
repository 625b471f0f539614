output "dsn_secret_arn" {
  value = aws_secretsmanager_secret.dsn.arn
}

output "api_dsn_secret_arn" {
  value = aws_secretsmanager_secret.api_dsn.arn
}

output "security_group_id" {
  value = aws_security_group.db.id
}

output "address" {
  value = aws_db_instance.this.address
}

output "ingress" {
  description = "Who may reach PostgreSQL: client name => security group and port"
  value = {
    for k, r in aws_vpc_security_group_ingress_rule.postgres :
    k => { source = r.referenced_security_group_id, port = r.from_port, cidr = r.cidr_ipv4 }
  }
}

output "publicly_accessible" {
  value = aws_db_instance.this.publicly_accessible
}
