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
  description = "Networks allowed to reach the load balancer (the Dagster UI has no login of its own: keep this to your office or VPN)."
  type        = list(string)
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
