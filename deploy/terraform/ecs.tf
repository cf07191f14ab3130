resource "aws_ecs_cluster" "main" {
  name = var.name
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_cloudwatch_log_group" "ecs" {
  name              = "/ecs/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

locals {
  image     = "${aws_ecr_repository.app.repository_url}:${var.image_tag}"
  pg_secret = aws_db_instance.main.master_user_secret[0].secret_arn
  # Where production_model publishes the model that serves (a pointer and the archives it names,
  # taxi_assets/lib/serving_pointer.py): all the inference service reads, and all its role may read.
  serving_prefix = "taxi_assets/serving"
  # The MLflow server, in the VPC by its Cloud Map name and in the browser under this path of the
  # load balancer, behind the Dagster UI's login (network.tf: one name, one certificate, one client
  # at the identity provider, one login for both UIs). It serves every route under the prefix.
  mlflow_prefix   = "/mlflow"
  mlflow_internal = "mlflow.${var.name}.internal:5000"
  # The name browsers use for the load balancer: MLflow's security middleware accepts requests for
  # it (host header) and the UI's own POSTs from it (origin), and refuses every other name.
  public_hostname = var.public_hostname != "" ? var.public_hostname : "*.${var.region}.elb.amazonaws.com"

  # Each service gets the environment and the secrets it uses, nothing more (docs/deploying-and-
  # scaling.md, "What runs where"; test_deploy.py holds them).
  #
  # Every process that opens the Dagster instance: deploy/dagster-ecs.yaml (baked into the image at
  # /opt/dagster/ecs-home) reads these, and the database password (dagster_secrets).
  instance_environment = [
    { name = "DAGSTER_HOME", value = "/opt/dagster/ecs-home" },
    { name = "DAGSTER_PG_HOST", value = aws_db_instance.main.address },
    { name = "DAGSTER_PG_PORT", value = tostring(aws_db_instance.main.port) },
    { name = "DAGSTER_PG_DB", value = "dagster" },
    { name = "DAGSTER_PG_USERNAME", value = aws_db_instance.main.username },
    { name = "DAGSTER_PG_PASSWORD_SECRET_ARN", value = "${local.pg_secret}:password::" },
    { name = "DAGSTER_MAX_CONCURRENT_RUNS", value = tostring(var.max_concurrent_runs) },
    # Compute logs; for the code, the bucket of asset values too.
    { name = "TAXI_S3_BUCKET", value = aws_s3_bucket.data.bucket },
    { name = "AWS_REGION", value = var.region },
  ]
  # Every process that loads taxi_assets.definitions and runs its assets (taxi_assets/lib/settings.py).
  code_environment = [
    { name = "TAXI_ENV", value = "production" },
    { name = "TAXI_DATA_S3_BUCKET", value = aws_s3_bucket.data.bucket },
    { name = "MLFLOW_TRACKING_URI", value = "http://${local.mlflow_internal}${local.mlflow_prefix}" },
    { name = "TAXI_SERVING_PREFIX", value = local.serving_prefix },
    # The retraining job's executor and, with "ecs", each step's task size (its ecs/cpu and
    # ecs/memory tags); the runs and their steps read them where the job loads.
    { name = "TAXI_STEP_EXECUTOR", value = var.step_executor },
    { name = "TAXI_ECS_STEP_RESOURCES", value = jsonencode(var.step_resources) },
  ]
  # The daemon's, and so every run's: run tasks copy the daemon's task definition (EcsRunLauncher,
  # use_current_ecs_task_config) and add DAGSTER_RUN_JOB_NAME.
  dagster_environment = concat(local.instance_environment, local.code_environment, [
    # The daemon skips a backfill's iteration while the code location cannot load (a code server
    # restarting) instead of failing the backfill and canceling its runs (found by the chaos soak).
    { name = "DAGSTER_BACKFILL_RETRY_DEFINITION_CHANGED_ERROR", value = "1" },
    { name = "DAGSTER_CODE_LOCATION_HOST", value = "code-location.${var.name}.internal" },
  ])
  # Alerts are sent by sensors, which the code location's server evaluates; their links go to the UI
  # at its public name when it has one (else to 127.0.0.1).
  alert_environment = concat([
    { name = "TAXI_SMTP_HOST", value = var.smtp_host },
    { name = "TAXI_ALERT_TO", value = var.alert_email_to },
  ], var.public_hostname == "" ? [] : [{ name = "TAXI_DAGSTER_URL", value = "https://${var.public_hostname}" }])
  # The database password, for every process that opens the instance (runs get it from the run
  # launcher's `secrets` in deploy/dagster-ecs.yaml) and for MLflow's backend store.
  dagster_secrets = [
    { name = "DAGSTER_PG_PASSWORD", valueFrom = "${local.pg_secret}:password::" },
  ]

  target_groups = {
    webserver = aws_lb_target_group.webserver.arn
    inference = aws_lb_target_group.inference.arn
    mlflow    = aws_lb_target_group.mlflow.arn
  }

  services = {
    code-location = {
      # As the Dockerfile: `dagster api grpc` answers the run launcher's worker health check.
      command = ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "4000", "-m", "taxi_assets.definitions", "--location-name", "taxi_assets"]
      port    = 4000, cpu = 1024, memory = 4096, role = aws_iam_role.code_location.arn
      environment = concat(local.instance_environment, local.code_environment, [
        { name = "DAGSTER_CURRENT_IMAGE", value = local.image },
        # Handed to the run launcher with every run: run tasks are built from the daemon's task
        # definition but take the Dagster role, not the daemon's.
        { name = "DAGSTER_CONTAINER_CONTEXT", value = jsonencode({ ecs = { task_role_arn = aws_iam_role.dagster.arn } }) },
      ], local.alert_environment)
      secrets = concat(local.dagster_secrets, [{ name = "TAXI_SMTP_PASSWORD", valueFrom = aws_secretsmanager_secret.smtp_password.arn }])
    }
    webserver = {
      # The webserver keeps a pooled database connection; after a failover the first request on it
      # failed (500, found by the chaos soak). Connections older than 10 s are replaced before use.
      command     = ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "workspace.yaml", "--db-pool-recycle", "10"]
      port        = 3000, cpu = 1024, memory = 2048, role = aws_iam_role.webserver.arn
      environment = concat(local.instance_environment, [{ name = "DAGSTER_CODE_LOCATION_HOST", value = "code-location.${var.name}.internal" }])
      secrets     = local.dagster_secrets
    }
    daemon = {
      command     = ["dagster-daemon", "run", "-w", "workspace.yaml"]
      port        = null, cpu = 512, memory = 2048, role = aws_iam_role.daemon.arn
      environment = local.dagster_environment
      secrets     = local.dagster_secrets
    }
    mlflow = {
      # The mlflow database is created on first start if missing; artifacts go to the bucket.
      command = ["sh", "-c", join(" ", [
        "python -c \"import os,psycopg2;c=psycopg2.connect(host=os.environ['DAGSTER_PG_HOST'],dbname='dagster',user=os.environ['DAGSTER_PG_USERNAME'],password=os.environ['DAGSTER_PG_PASSWORD']);c.autocommit=True;cur=c.cursor();cur.execute(\\\"select 1 from pg_database where datname='mlflow'\\\");cur.fetchone() or cur.execute('create database mlflow')\"",
        "&& exec mlflow server --host 0.0.0.0 --port 5000",
        "--backend-store-uri \"postgresql+psycopg2://$DAGSTER_PG_USERNAME:$DAGSTER_PG_PASSWORD@$DAGSTER_PG_HOST:$DAGSTER_PG_PORT/mlflow?sslmode=require\"",
        "--artifacts-destination s3://${aws_s3_bucket.data.bucket}/mlflow",
        "--static-prefix ${local.mlflow_prefix}",
        # Its clients by the internal name, browsers by the public one (and loopback, as MLflow's
        # default: a check from inside the container). The health check is exempt.
        "--allowed-hosts '${local.mlflow_internal},${local.public_hostname},localhost:*,127.0.0.1:*'",
        "--cors-allowed-origins 'https://${local.public_hostname}'",
      ])]
      port = 5000, cpu = 512, memory = 2048, role = aws_iam_role.mlflow.arn
      environment = [
        { name = "DAGSTER_PG_HOST", value = aws_db_instance.main.address },
        { name = "DAGSTER_PG_PORT", value = tostring(aws_db_instance.main.port) },
        { name = "DAGSTER_PG_USERNAME", value = aws_db_instance.main.username },
        { name = "AWS_REGION", value = var.region },
      ]
      secrets = local.dagster_secrets
    }
    inference = {
      # It reads only the serving pointer and the archive it names (no database, no MLflow).
      command = ["taxi-assets", "serve", "--host", "0.0.0.0", "--port", "8080"]
      port    = 8080, cpu = 1024, memory = 2048, role = aws_iam_role.inference.arn
      environment = [
        { name = "TAXI_ENV", value = "production" },
        { name = "TAXI_S3_BUCKET", value = aws_s3_bucket.data.bucket },
        { name = "TAXI_SERVING_PREFIX", value = local.serving_prefix },
        { name = "AWS_REGION", value = var.region },
      ]
      secrets = [{ name = "TAXI_API_TOKEN", valueFrom = aws_secretsmanager_secret.api_token.arn }]
    }
  }
}

resource "aws_ecs_task_definition" "service" {
  #checkov:skip=CKV_AWS_336:Dagster writes compute logs and run artefacts under DAGSTER_HOME and /tmp before uploading them; the root filesystem stays writable, the container runs as a non-root user
  for_each                 = local.services
  family                   = "${var.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = each.value.cpu
  memory                   = each.value.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = each.value.role
  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }
  container_definitions = jsonencode([{
    name         = each.key
    image        = local.image
    command      = each.value.command
    essential    = true
    user         = "10001:10001"
    environment  = each.value.environment
    secrets      = each.value.secrets
    portMappings = each.value.port == null ? [] : [{ containerPort = each.value.port, protocol = "tcp" }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.ecs.name
        awslogs-region        = var.region
        awslogs-stream-prefix = each.key
      }
    }
  }])
}

resource "aws_ecs_service" "service" {
  for_each               = local.services
  name                   = each.key
  cluster                = aws_ecs_cluster.main.id
  task_definition        = aws_ecs_task_definition.service[each.key].arn
  desired_count          = 1
  launch_type            = "FARGATE"
  enable_execute_command = false
  propagate_tags         = "SERVICE"
  # The daemon must never run twice (two daemons would dequeue the same runs).
  deployment_minimum_healthy_percent = each.key == "daemon" ? 0 : 100
  deployment_maximum_percent         = each.key == "daemon" ? 100 : 200

  network_configuration {
    subnets = var.private_subnet_ids
    # The Dagster tasks share a group (runs copy the daemon's); MLflow and inference have their own.
    security_groups  = [each.key == "mlflow" ? aws_security_group.mlflow.id : (each.key == "inference" ? aws_security_group.inference.id : aws_security_group.tasks.id)]
    assign_public_ip = false
  }

  # The first start of MLflow migrates its database before it answers the health check.
  health_check_grace_period_seconds = contains(["webserver", "inference", "mlflow"], each.key) ? 120 : null

  dynamic "load_balancer" {
    for_each = contains(["webserver", "inference", "mlflow"], each.key) ? [local.target_groups[each.key]] : []
    content {
      target_group_arn = load_balancer.value
      container_name   = each.key
      container_port   = each.value.port
    }
  }

  dynamic "service_registries" {
    for_each = contains(["code-location", "mlflow"], each.key) ? [aws_service_discovery_service.internal[each.key].arn] : []
    content {
      registry_arn = service_registries.value
    }
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
}
