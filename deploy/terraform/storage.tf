# One customer-managed key for the bucket, ECR, secrets, logs and the database.
resource "aws_kms_key" "main" {
  description             = "${var.name}: S3, ECR, Secrets Manager, CloudWatch Logs, RDS"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "main" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.main.key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:Key policies must name the key as "*" (it means this key); access is limited to this account's principals and CloudWatch Logs
  #checkov:skip=CKV_AWS_111:As above: "*" in a key policy is the key itself
  #checkov:skip=CKV_AWS_356:As above: "*" in a key policy is the key itself
  statement {
    sid       = "AccountAdministration"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
  statement {
    sid       = "CloudWatchLogs"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${var.region}:${data.aws_caller_identity.current.account_id}:log-group:/ecs/${var.name}*"]
    }
  }
}

# Asset values (taxi_assets/assets/...), compute logs (dagster/compute-logs/...), MLflow
# artifacts (mlflow/...) and the monthly trip files (taxi/green/...).
resource "aws_s3_bucket" "data" {
  #checkov:skip=CKV_AWS_18:Server access logs would need a second bucket; object-level access is audited with CloudTrail data events, configured account-wide
  #checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice left to the operator; versioning protects against overwrites here
  #checkov:skip=CKV2_AWS_62:Nothing consumes S3 event notifications; the new-data sensor lists the bucket itself
  bucket_prefix = "${var.name}-data-"
}

resource "aws_s3_bucket_versioning" "data" {
  bucket = aws_s3_bucket.data.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.main.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "data" {
  bucket                  = aws_s3_bucket.data.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_lifecycle_configuration" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    id     = "tidy"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
    noncurrent_version_expiration {
      noncurrent_days = 90
    }
  }
  rule {
    id     = "compute-logs"
    status = "Enabled"
    filter {
      prefix = "dagster/compute-logs/"
    }
    expiration {
      days = 180
    }
  }
}

resource "aws_ecr_repository" "app" {
  name                 = var.name
  image_tag_mutability = "IMMUTABLE"
  image_scanning_configuration {
    scan_on_push = true
  }
  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.main.arn
  }
}

resource "aws_ecr_lifecycle_policy" "app" {
  repository = aws_ecr_repository.app.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Keep the last 50 images"
      selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 50 }
      action       = { type = "expire" }
    }]
  })
}

# Secrets: the inference API token and the SMTP password are set out of band (README); the
# database password is created and rotated by RDS itself (manage_master_user_password).
resource "aws_secretsmanager_secret" "api_token" {
  #checkov:skip=CKV2_AWS_57:The API token is shared with clients; it is rotated by hand with them, not by a Lambda
  name_prefix = "${var.name}/api-token-"
  kms_key_id  = aws_kms_key.main.arn
}

resource "aws_secretsmanager_secret" "smtp_password" {
  #checkov:skip=CKV2_AWS_57:The SMTP password belongs to the mail provider; rotate it there and update this secret
  name_prefix = "${var.name}/smtp-password-"
  kms_key_id  = aws_kms_key.main.arn
}
