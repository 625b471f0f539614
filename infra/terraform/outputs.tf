# The engine's settings, exactly as adapters/settings.py names them (LEADSCORE_ + field
# name in capitals); tests/infra/test_terraform.py compares these keys with the fields.

output "leadscore_environment" {
  description = "LEADSCORE_* settings every service gets as environment variables"
  value       = local.leadscore_environment
}

output "leadscore_secrets" {
  description = "LEADSCORE_* settings held in Secrets Manager: setting name => secret ARN"
  value       = local.leadscore_secrets
}

output "api_url" {
  description = "The query API's load balancer (point the certificate's DNS name at it)"
  value       = "https://${module.services.alb_dns_name}"
}

output "kafka_scram_secret_arn" {
  description = "SASL/SCRAM user of the brokers (username and password, JSON)"
  value       = module.msk.scram_secret_arn
}
