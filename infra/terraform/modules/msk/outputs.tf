output "bootstrap_brokers" {
  description = "SASL/SCRAM over TLS bootstrap string (port 9096)"
  value       = aws_msk_cluster.this.bootstrap_brokers_sasl_scram
}

output "cluster_name" {
  value = aws_msk_cluster.this.cluster_name
}

output "security_group_id" {
  value = aws_security_group.brokers.id
}

output "scram_secret_arn" {
  value = aws_secretsmanager_secret.scram.arn
}

output "ingress" {
  description = "Who may reach the brokers: client name => security group and port"
  value = {
    for k, r in aws_vpc_security_group_ingress_rule.scram :
    k => { source = r.referenced_security_group_id, port = r.from_port, cidr = r.cidr_ipv4 }
  }
}

output "scram_username" {
  description = "The SCRAM user of the leadscore services (LEADSCORE_KAFKA_SASL_USERNAME)"
  value       = local.scram_username
}
