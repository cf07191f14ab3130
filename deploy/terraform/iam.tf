data "aws_iam_policy_document" "ecs_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

# Execution role: what ECS itself needs to start a container (pull, log, inject secrets).
resource "aws_iam_role" "execution" {
  name_prefix        = "${var.name}-exec-"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid     = "ReadTheSecretsTasksNeed"
    actions = ["secretsmanager:GetSecretValue"]
    resources = [
      aws_db_instance.main.master_user_secret[0].secret_arn,
      aws_secretsmanager_secret.api_token.arn,
      aws_secretsmanager_secret.smtp_password.arn,
    ]
  }
  statement {
    sid       = "DecryptThem"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
  }
}

resource "aws_iam_role_policy" "execution" {
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# Dagster role: every run (and, with the step executor, every step). Reads and writes the data
# bucket (asset values, trip files, compute logs, predictions, the serving pointer).
resource "aws_iam_role" "dagster" {
  name_prefix        = "${var.name}-dagster-"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
}

data "aws_iam_policy_document" "data_bucket" {
  statement {
    sid       = "ListTheBucket"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]
  }
  statement {
    sid       = "ObjectsInIt"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.data.arn}/*"]
  }
  statement {
    sid       = "ItsKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.main.arn]
  }
}

resource "aws_iam_role_policy" "dagster" {
  role   = aws_iam_role.dagster.id
  policy = data.aws_iam_policy_document.data_bucket.json
}

# With the step executor (step_executor = "ecs"), a run's process starts each step as a task of the
# run's own task definition (dagster-aws's ecs_executor: its network, roles and environment), then
# watches and, if the run is stopped, stops it. As the daemon does for runs, minus registering
# task definitions.
data "aws_iam_policy_document" "step_launcher" {
  statement {
    # The run task's subnets and security groups, for its steps' tasks (no resource-level
    # restriction exists for it).
    sid       = "TheRunTasksNetwork"
    actions   = ["ec2:DescribeNetworkInterfaces"]
    resources = ["*"]
  }
  statement {
    sid       = "StepTasksInThisCluster"
    actions   = ["ecs:RunTask", "ecs:DescribeTasks", "ecs:StopTask", "ecs:TagResource"]
    resources = ["*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.main.arn]
    }
  }
  statement {
    sid       = "PassOnlyTheseRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.execution.arn, aws_iam_role.dagster.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "dagster_steps" {
  count  = var.step_executor == "ecs" ? 1 : 0
  role   = aws_iam_role.dagster.id
  policy = data.aws_iam_policy_document.step_launcher.json
}

# Code location role: the bucket as the runs have it. Its server evaluates the sensors (the trip
# files they list, the compute logs of their ticks) and may publish the serving pointer; it
# launches nothing.
resource "aws_iam_role" "code_location" {
  name_prefix        = "${var.name}-code-"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
}

resource "aws_iam_role_policy" "code_location" {
  role   = aws_iam_role.code_location.id
  policy = data.aws_iam_policy_document.data_bucket.json
}

# Webserver role: the compute logs it shows, and the run tasks it stops when a run is terminated in
# the UI (the run coordinator calls EcsRunLauncher.terminate in the webserver's process).
resource "aws_iam_role" "webserver" {
  name_prefix        = "${var.name}-web-"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
}

data "aws_iam_policy_document" "webserver" {
  statement {
    sid       = "ListComputeLogs"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["dagster/compute-logs/*"]
    }
  }
  statement {
    sid       = "ReadComputeLogs"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/dagster/compute-logs/*"]
  }
  statement {
    sid       = "DecryptThem"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
  statement {
    sid       = "StopRunTasks"
    actions   = ["ecs:DescribeTasks", "ecs:StopTask"]
    resources = ["arn:${data.aws_partition.current.partition}:ecs:${var.region}:${data.aws_caller_identity.current.account_id}:task/${aws_ecs_cluster.main.name}/*"]
  }
}

resource "aws_iam_role_policy" "webserver" {
  role   = aws_iam_role.webserver.id
  policy = data.aws_iam_policy_document.webserver.json
}

# MLflow role: its artifacts (s3://<bucket>/mlflow/...), nothing else of the bucket.
resource "aws_iam_role" "mlflow" {
  name_prefix        = "${var.name}-mlflow-"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
}

data "aws_iam_policy_document" "mlflow" {
  statement {
    sid       = "ListArtifacts"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["mlflow/*"]
    }
  }
  statement {
    sid       = "Artifacts"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.data.arn}/mlflow/*"]
  }
  statement {
    sid       = "ItsKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "mlflow" {
  role   = aws_iam_role.mlflow.id
  policy = data.aws_iam_policy_document.mlflow.json
}

# Daemon role: the Dagster role, plus launching one ECS task per run (EcsRunLauncher). Run tasks
# copy the daemon's task definition (network, execution role, environment) but run with the
# Dagster role (DAGSTER_CONTAINER_CONTEXT in ecs.tf), so the daemon may pass only that role and
# the execution role.
resource "aws_iam_role" "daemon" {
  name_prefix        = "${var.name}-daemon-"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
}

resource "aws_iam_role_policy" "daemon_data" {
  role   = aws_iam_role.daemon.id
  policy = data.aws_iam_policy_document.data_bucket.json
}

data "aws_iam_policy_document" "run_launcher" {
  #checkov:skip=CKV_AWS_111:ecs:RegisterTaskDefinition and the Describe/List calls support no resource-level restriction
  #checkov:skip=CKV_AWS_356:As above; task-level actions are limited to this cluster
  statement {
    sid       = "TaskDefinitions"
    actions   = ["ecs:RegisterTaskDefinition", "ecs:DescribeTaskDefinition", "ecs:ListTaskDefinitions", "ec2:DescribeNetworkInterfaces", "secretsmanager:ListSecrets"]
    resources = ["*"]
  }
  statement {
    sid       = "RunTasksInThisCluster"
    actions   = ["ecs:RunTask", "ecs:StopTask", "ecs:DescribeTasks", "ecs:TagResource", "ecs:ListTagsForResource"]
    resources = ["*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.main.arn]
    }
  }
  statement {
    sid       = "PassOnlyTheseRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.execution.arn, aws_iam_role.dagster.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "daemon_launcher" {
  role   = aws_iam_role.daemon.id
  policy = data.aws_iam_policy_document.run_launcher.json
}

# Inference role: read-only, and only what production_model publishes for serving (the pointer
# and the archives it names, under local.serving_prefix): no other value, no secret, no writes.
resource "aws_iam_role" "inference" {
  name_prefix        = "${var.name}-infer-"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
}

data "aws_iam_policy_document" "inference" {
  statement {
    sid       = "ListTheServingPrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.serving_prefix}/*"]
    }
  }
  statement {
    sid       = "ReadWhatServes"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/${local.serving_prefix}/*"]
  }
  statement {
    sid       = "DecryptItThroughS3"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "inference" {
  role   = aws_iam_role.inference.id
  policy = data.aws_iam_policy_document.inference.json
}
