variable "region" {
  description = "AWS region for everything."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Prefix of every resource name."
  type        = string
  default     = "taxi-assets"
}

variable "vpc_id" {
  description = "VPC to deploy into (an existing one, with private subnets that reach AWS APIs through a NAT or VPC endpoints)."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets for ECS tasks and RDS (at least two availability zones)."
  type        = list(string)
}

variable "public_subnet_ids" {
  description = "Public subnets for the load balancer."
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate for the load balancer's HTTPS listener."
  type        = string
}

variable "allowed_cidrs" {
  description = "Networks allowed to reach the load balancer (the Dagster UI is behind the OIDC login below; keep this to your office or VPN all the same)."
  type        = list(string)
}

# The Dagster UI's login: the load balancer's authenticate-oidc action, with your identity
# provider (Okta, Auth0, Google, Microsoft Entra ID, Keycloak, ...). Register a web client whose
# redirect URI is https://<load balancer DNS name or your domain>/oauth2/idpresponse.
variable "oidc_issuer" {
  description = "OIDC issuer URL of the identity provider (https://...)."
  type        = string
  validation {
    condition     = startswith(var.oidc_issuer, "https://")
    error_message = "The OIDC issuer must be an https:// URL."
  }
}

variable "oidc_authorization_endpoint" {
  description = "The identity provider's authorization endpoint (https://...)."
  type        = string
  validation {
    condition     = startswith(var.oidc_authorization_endpoint, "https://")
    error_message = "The OIDC authorization endpoint must be an https:// URL."
  }
}

variable "oidc_token_endpoint" {
  description = "The identity provider's token endpoint (https://...)."
  type        = string
  validation {
    condition     = startswith(var.oidc_token_endpoint, "https://")
    error_message = "The OIDC token endpoint must be an https:// URL."
  }
}

variable "oidc_user_info_endpoint" {
  description = "The identity provider's user info endpoint (https://...)."
  type        = string
  validation {
    condition     = startswith(var.oidc_user_info_endpoint, "https://")
    error_message = "The OIDC user info endpoint must be an https:// URL."
  }
}

variable "oidc_client_id" {
  description = "The client id of the web client registered for the Dagster UI."
  type        = string
}

variable "oidc_client_secret_arn" {
  description = "ARN of the Secrets Manager secret whose SecretString is that client's secret (created by hand, never in the repository or tfvars)."
  type        = string
}

variable "oidc_scope" {
  description = "Scopes the load balancer asks for."
  type        = string
  default     = "openid email"
}

variable "oidc_session_seconds" {
  description = "How long a UI login lasts, in seconds."
  type        = number
  default     = 43200
}

variable "public_hostname" {
  description = "The name users reach the load balancer by (your DNS record for it, the name on certificate_arn's certificate). The MLflow UI answers only for it, and alerts link there. Empty: the load balancer's own *.<region>.elb.amazonaws.com name."
  type        = string
  default     = ""
  validation {
    condition     = can(regex("^[A-Za-z0-9.-]*$", var.public_hostname))
    error_message = "public_hostname is a host name (taxi.example.com), without scheme, port or path."
  }
}

variable "image_tag" {
  description = "Tag of the image in ECR to run (the deploy workflow passes the commit SHA)."
  type        = string
}

variable "db_instance_class" {
  description = "RDS instance class for PostgreSQL (Dagster and MLflow databases)."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_multi_az" {
  description = "Run PostgreSQL in two availability zones."
  type        = bool
  default     = true
}

variable "max_concurrent_runs" {
  description = "Dagster runs at once (each is its own Fargate task); the queue holds the rest."
  type        = number
  default     = 4
}

variable "alert_email_to" {
  description = "Comma-separated recipients of failure alerts (empty: alerts off)."
  type        = string
  default     = ""
}

variable "smtp_host" {
  description = "SMTP server for failure alerts (e.g. email-smtp.us-east-1.amazonaws.com)."
  type        = string
  default     = ""
}

variable "log_retention_days" {
  description = "CloudWatch retention of container logs."
  type        = number
  default     = 365
}
