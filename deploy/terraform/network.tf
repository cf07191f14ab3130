resource "aws_security_group" "alb" {
  name_prefix = "${var.name}-alb-"
  description = "Load balancer: HTTPS from the allowed networks"
  vpc_id      = var.vpc_id

  ingress {
    description = "HTTPS from allowed networks"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = var.allowed_cidrs
  }
  egress {
    description = "To the webserver's tasks in the VPC"
    from_port   = 3000
    to_port     = 3000
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.main.cidr_block]
  }
  egress {
    description = "To the MLflow server's tasks in the VPC"
    from_port   = 5000
    to_port     = 5000
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.main.cidr_block]
  }
  egress {
    description = "To the inference tasks in the VPC"
    from_port   = 8080
    to_port     = 8080
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.main.cidr_block]
  }
  egress {
    description = "To the OpenID Connect provider's token and user info endpoints (the UI's login)"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

data "aws_vpc" "main" {
  id = var.vpc_id
}

# Dagster's tasks: code location, webserver, daemon, and the run (and step) tasks, which copy the
# daemon's network configuration. MLflow and inference have groups of their own (below).
resource "aws_security_group" "tasks" {
  name_prefix = "${var.name}-tasks-"
  description = "ECS tasks of Dagster: code location, webserver, daemon, runs and their steps"
  vpc_id      = var.vpc_id

  ingress {
    description     = "Webserver from the load balancer"
    from_port       = 3000
    to_port         = 3000
    protocol        = "tcp"
    security_groups = [aws_security_group.alb.id]
  }
  ingress {
    description = "Code location gRPC from the webserver, the daemon and the runs"
    from_port   = 4000
    to_port     = 4000
    protocol    = "tcp"
    self        = true
  }
  egress {
    description = "AWS APIs (S3, ECR, ECS, Secrets Manager, CloudWatch) over HTTPS"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
  egress {
    description = "Code location gRPC between Dagster's tasks"
    from_port   = 4000
    to_port     = 4000
    protocol    = "tcp"
    self        = true
  }
  egress {
    description = "MLflow (its own group admits only these tasks and the load balancer)"
    from_port   = 5000
    to_port     = 5000
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.main.cidr_block]
  }
  egress {
    description     = "PostgreSQL"
    from_port       = 5432
    to_port         = 5432
    protocol        = "tcp"
    security_groups = [aws_security_group.database.id]
  }
  egress {
    description = "SMTP submission for failure alerts"
    from_port   = 587
    to_port     = 587
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

# The MLflow server: its port from the load balancer (the UI, after the login) and from Dagster's
# tasks (the runs track there) only; out, its database and S3 (artifacts).
resource "aws_security_group" "mlflow" {
  name_prefix = "${var.name}-mlflow-"
  description = "MLflow server: from the load balancer and Dagster's tasks; to PostgreSQL and S3"
  vpc_id      = var.vpc_id

  ingress {
    description     = "The UI from the load balancer"
    from_port       = 5000
    to_port         = 5000
    protocol        = "tcp"
    security_groups = [aws_security_group.alb.id]
  }
  ingress {
    description     = "Tracking from Dagster's tasks"
    from_port       = 5000
    to_port         = 5000
    protocol        = "tcp"
    security_groups = [aws_security_group.tasks.id]
  }
  egress {
    description = "AWS APIs (S3, ECR, Secrets Manager, CloudWatch) over HTTPS"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
  egress {
    description     = "PostgreSQL"
    from_port       = 5432
    to_port         = 5432
    protocol        = "tcp"
    security_groups = [aws_security_group.database.id]
  }
}

# The public inference service: requests from the load balancer; out, only HTTPS to AWS (S3 for the
# serving pointer, ECR, Secrets Manager for its token, CloudWatch). It reaches no database, no
# other task, no mail server.
resource "aws_security_group" "inference" {
  name_prefix = "${var.name}-infer-"
  description = "Inference server: from the load balancer; to AWS APIs only"
  vpc_id      = var.vpc_id

  ingress {
    description     = "Predictions from the load balancer"
    from_port       = 8080
    to_port         = 8080
    protocol        = "tcp"
    security_groups = [aws_security_group.alb.id]
  }
  egress {
    description = "AWS APIs (S3, ECR, Secrets Manager, CloudWatch) over HTTPS"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_security_group" "database" {
  name_prefix = "${var.name}-db-"
  description = "PostgreSQL: only from the ECS tasks"
  vpc_id      = var.vpc_id
}

resource "aws_security_group_rule" "database_from_tasks" {
  description              = "PostgreSQL from the ECS tasks"
  type                     = "ingress"
  from_port                = 5432
  to_port                  = 5432
  protocol                 = "tcp"
  security_group_id        = aws_security_group.database.id
  source_security_group_id = aws_security_group.tasks.id
}

resource "aws_security_group_rule" "database_from_mlflow" {
  description              = "PostgreSQL from the MLflow server"
  type                     = "ingress"
  from_port                = 5432
  to_port                  = 5432
  protocol                 = "tcp"
  security_group_id        = aws_security_group.database.id
  source_security_group_id = aws_security_group.mlflow.id
}

resource "aws_lb" "main" {
  #checkov:skip=CKV2_AWS_28:A WAF web ACL is an account-level choice; ingress is already limited to allowed_cidrs
  #checkov:skip=CKV_AWS_91:ALB access logs need an SSE-S3 bucket of their own; enable them with the account's central log bucket
  name_prefix                = "taxi-"
  load_balancer_type         = "application"
  internal                   = false
  security_groups            = [aws_security_group.alb.id]
  subnets                    = var.public_subnet_ids
  drop_invalid_header_fields = true
  enable_deletion_protection = true
}

# The Dagster UI has no login of its own: the load balancer asks for one (OpenID Connect) before it
# forwards anything to the webserver.
resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.main.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn
  default_action {
    type  = "authenticate-oidc"
    order = 1
    authenticate_oidc {
      issuer                     = var.oidc_issuer
      authorization_endpoint     = var.oidc_authorization_endpoint
      token_endpoint             = var.oidc_token_endpoint
      user_info_endpoint         = var.oidc_user_info_endpoint
      client_id                  = var.oidc_client_id
      client_secret              = data.aws_secretsmanager_secret_version.oidc_client_secret.secret_string
      scope                      = var.oidc_scope
      session_timeout            = var.oidc_session_seconds
      on_unauthenticated_request = "authenticate"
    }
  }
  default_action {
    type             = "forward"
    order            = 2
    target_group_arn = aws_lb_target_group.webserver.arn
  }
}

# The client secret is created out of band (README, "Deploying"); the load balancer's API takes its
# value, so it is read here (and kept, like every value Terraform reads, in the encrypted state).
data "aws_secretsmanager_secret_version" "oidc_client_secret" {
  secret_id = var.oidc_client_secret_arn
}

# Every path the inference server serves (taxi_assets/apps/server.py, ROUTES: test_deploy.py holds
# the two together) goes to it without the UI's login: it checks its own bearer token. A rule takes
# at most five path values.
resource "aws_lb_listener_rule" "inference" {
  listener_arn = aws_lb_listener.https.arn
  priority     = 10
  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.inference.arn
  }
  condition {
    path_pattern {
      values = ["/invocations", "/ping", "/version", "/predict", "/health"]
    }
  }
}

# The MLflow UI under /mlflow (local.mlflow_prefix, the server's --static-prefix), behind the same
# login as the Dagster UI: its experiments, runs and registered models are for the team only.
resource "aws_lb_listener_rule" "mlflow" {
  listener_arn = aws_lb_listener.https.arn
  priority     = 20
  action {
    type  = "authenticate-oidc"
    order = 1
    authenticate_oidc {
      issuer                     = var.oidc_issuer
      authorization_endpoint     = var.oidc_authorization_endpoint
      token_endpoint             = var.oidc_token_endpoint
      user_info_endpoint         = var.oidc_user_info_endpoint
      client_id                  = var.oidc_client_id
      client_secret              = data.aws_secretsmanager_secret_version.oidc_client_secret.secret_string
      scope                      = var.oidc_scope
      session_timeout            = var.oidc_session_seconds
      on_unauthenticated_request = "authenticate"
    }
  }
  action {
    type             = "forward"
    order            = 2
    target_group_arn = aws_lb_target_group.mlflow.arn
  }
  condition {
    path_pattern {
      values = [local.mlflow_prefix, "${local.mlflow_prefix}/*"]
    }
  }
}

resource "aws_lb_target_group" "webserver" {
  #checkov:skip=CKV_AWS_378:TLS ends at the load balancer; the hop to the task stays inside the VPC, restricted by security groups
  name_prefix = "dgweb-"
  port        = 3000
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = var.vpc_id
  health_check {
    path    = "/server_info"
    matcher = "200"
  }
}

resource "aws_lb_target_group" "inference" {
  #checkov:skip=CKV_AWS_378:TLS ends at the load balancer; the hop to the task stays inside the VPC, restricted by security groups
  name_prefix = "infer-"
  port        = 8080
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = var.vpc_id
  health_check {
    path    = "/health"
    matcher = "200"
  }
}

resource "aws_lb_target_group" "mlflow" {
  #checkov:skip=CKV_AWS_378:TLS ends at the load balancer; the hop to the task stays inside the VPC, restricted by security groups
  name_prefix = "mlflw-"
  port        = 5000
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = var.vpc_id
  health_check {
    path    = "${local.mlflow_prefix}/health"
    matcher = "200"
  }
}

# Private DNS for task-to-task calls: code-location.<name>.internal:4000, mlflow.<name>.internal:5000/mlflow.
resource "aws_service_discovery_private_dns_namespace" "main" {
  name = "${var.name}.internal"
  vpc  = var.vpc_id
}

resource "aws_service_discovery_service" "internal" {
  for_each = toset(["code-location", "mlflow"])
  name     = each.key
  dns_config {
    namespace_id = aws_service_discovery_private_dns_namespace.main.id
    dns_records {
      ttl  = 10
      type = "A"
    }
  }
  health_check_custom_config {
    failure_threshold = 1
  }
}
