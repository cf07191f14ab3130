output "url" {
  description = "The Dagster UI, behind the OIDC login (and, under /predict, /health, /invocations, /ping and /version, the inference server, with its bearer token)."
  value       = "https://${aws_lb.main.dns_name}"
}

output "mlflow_url" {
  description = "The MLflow UI, behind the same OIDC login."
  value       = "https://${var.public_hostname != "" ? var.public_hostname : aws_lb.main.dns_name}${local.mlflow_prefix}/"
}

output "ecr_repository_url" {
  description = "Where the deploy workflow pushes images."
  value       = aws_ecr_repository.app.repository_url
}

output "cluster_name" {
  value = aws_ecs_cluster.main.name
}

output "data_bucket" {
  value = aws_s3_bucket.data.bucket
}

output "api_token_secret_arn" {
  description = "Put the inference API token here (aws secretsmanager put-secret-value)."
  value       = aws_secretsmanager_secret.api_token.arn
}

output "smtp_password_secret_arn" {
  value = aws_secretsmanager_secret.smtp_password.arn
}
