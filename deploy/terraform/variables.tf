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

variable "step_executor" {
  description = "How a retraining run executes its steps: \"ecs\", each step in a Fargate task of its own, sized by step_resources (dagster-aws's ecs_executor); \"process\", all of them in the run's task (run_resources in deploy/dagster-ecs.yaml). docs/deploying-and-scaling.md says when to choose which."
  type        = string
  default     = "process"
  validation {
    condition     = contains(["ecs", "process"], var.step_executor)
    error_message = "step_executor is \"ecs\" (a task per step) or \"process\" (the steps in the run's task)."
  }
}

variable "step_resources" {
  description = "Each step task's Fargate size under the ecs step executor, by class of step: data (raw_trips, cleaned_trips, training_set), xgboost (xgboost_model), default (every other step). cpu in CPU units (1024 = 1 vCPU), memory in MiB, as strings; XGBoost uses as many threads as its task has vCPUs."
  type = object({
    data    = object({ cpu = string, memory = string })
    xgboost = object({ cpu = string, memory = string })
    default = object({ cpu = string, memory = string })
  })
  default = {
    data    = { cpu = "1024", memory = "4096" }
    xgboost = { cpu = "2048", memory = "8192" }
    default = { cpu = "512", memory = "2048" }
  }
  # Fargate's (Linux) CPU and memory pairs, written out: every class's pair must be one of them.
  validation {
    condition = length(setsubtract([
      "${var.step_resources.data.cpu}/${var.step_resources.data.memory}",
      "${var.step_resources.xgboost.cpu}/${var.step_resources.xgboost.memory}",
      "${var.step_resources.default.cpu}/${var.step_resources.default.memory}",
      ], [
      "256/512", "256/1024", "256/2048",
      "512/1024", "512/2048", "512/3072", "512/4096",
      "1024/2048", "1024/3072", "1024/4096", "1024/5120", "1024/6144", "1024/7168", "1024/8192",
      "2048/4096", "2048/5120", "2048/6144", "2048/7168", "2048/8192", "2048/9216", "2048/10240",
      "2048/11264", "2048/12288", "2048/13312", "2048/14336", "2048/15360", "2048/16384",
      "4096/8192", "4096/9216", "4096/10240", "4096/11264", "4096/12288", "4096/13312", "4096/14336",
      "4096/15360", "4096/16384", "4096/17408", "4096/18432", "4096/19456", "4096/20480", "4096/21504",
      "4096/22528", "4096/23552", "4096/24576", "4096/25600", "4096/26624", "4096/27648", "4096/28672",
      "4096/29696", "4096/30720",
      "8192/16384", "8192/20480", "8192/24576", "8192/28672", "8192/32768", "8192/36864", "8192/40960",
      "8192/45056", "8192/49152", "8192/53248", "8192/57344", "8192/61440",
      "16384/32768", "16384/40960", "16384/49152", "16384/57344", "16384/65536", "16384/73728",
      "16384/81920", "16384/90112", "16384/98304", "16384/106496", "16384/114688", "16384/122880",
    ])) == 0
    error_message = "Each step_resources class needs a Fargate CPU/memory pair: 256 with 512-2048 MiB; 512 with 1024-4096; 1024 with 2048-8192; 2048 with 4096-16384; 4096 with 8192-30720 (1024 steps); 8192 with 16384-61440 (4096 steps); 16384 with 32768-122880 (8192 steps)."
  }
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
