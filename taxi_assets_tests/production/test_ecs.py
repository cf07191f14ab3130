"""The ECS launch path for real: a backfill through the production instance on ``deploy/dagster-ecs.yaml``
(``EcsRunLauncher``) against moto's server, with what Terraform would have created.

The test plays Terraform and the ECS agent, and nothing else:

- Terraform: from ``deploy/terraform/*.tf`` (read by the small HCL reader below) it creates in moto
  the cluster, the log group, the bucket, the KMS key, the ECR repository, the secrets (the RDS
  password as RDS keeps it: JSON with ``password``), the IAM roles with their policies, a VPC,
  subnets and the tasks' security group; registers the services' task definitions and starts the
  daemon's task as its ECS service would.
- The ECS agent: each process gets its container's environment and command from its task
  definition, its secrets read from Secrets Manager, its task role's credentials (moto's STS), and
  the daemon its task metadata endpoint (``ECS_CONTAINER_METADATA_URI_V4``, a real HTTP server
  answering for the task moto started).

Then the real processes of a deployment (``dagster api grpc``, ``dagster-webserver``,
``dagster-daemon run``) with ``TAXI_ENV=production`` on a throwaway PostgreSQL, moto enforcing IAM
on every call they make. A backfill of three months of ``data_preparation`` goes in through the
webserver's GraphQL; the daemon's backfill and run-queue loops launch the runs. Checked in moto and
the instance: one task definition for the runs (the code location's image, the Terraform's roles,
environment, secrets and logs), three tasks, each running its run's ``dagster api execute_run``,
and each run tagged with its task. The runs never execute (moto starts no containers).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from taxi_assets_tests.helpers import REPO_ROOT
from taxi_assets_tests.production_stack import Postgres, sql
from taxi_assets_tests.servers import EcsMetadataServer, moto_api, moto_server_process
from taxi_assets_tests.stack import GraphQL, Processes, wait_for

pytestmark = pytest.mark.production

BIN = Path(sys.executable).parent
DEPLOY = REPO_ROOT / "deploy"
REGION = "us-east-1"
MONTHS = ["2024-01", "2024-02", "2024-03"]
SERVICES = ["code-location", "webserver", "daemon"]


# --- A reader for the part of HCL that deploy/terraform uses -------------------------------------
# Blocks, attributes and expressions: strings with ${} interpolation, numbers, bools, null, lists,
# objects, references with .attr and [index], function calls, == != && || ! and ?:. No for
# expressions, splats, heredocs or arithmetic (the files have none; the reader fails loudly on
# them). Kept here rather than adding python-hcl2, which leaves expressions as strings anyway.

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_NUMBER = re.compile(r"\d+(\.\d+)?")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


@dataclass
class Block:
    type: str
    labels: tuple[str, ...]
    attributes: dict[str, Any] = field(default_factory=dict)  # name -> expression tree
    blocks: list[Block] = field(default_factory=list)

    def children(self, kind: str) -> list[Block]:
        return [block for block in self.blocks if block.type == kind]


class _Parser:
    def __init__(self, text: str, where: str):
        self.s, self.i, self.where = text, 0, where

    def fail(self, what: str):
        raise SyntaxError(f"{self.where}:{self.s.count(chr(10), 0, self.i) + 1}: {what}")

    def skip(self):
        while self.i < len(self.s):
            if self.s[self.i].isspace():
                self.i += 1
            elif self.s[self.i] == "#" or self.s.startswith("//", self.i):
                end = self.s.find("\n", self.i)
                self.i = len(self.s) if end < 0 else end
            elif self.s.startswith("/*", self.i):
                self.i = self.s.index("*/", self.i) + 2
            else:
                return

    def peek(self, token: str) -> bool:
        self.skip()
        return self.s.startswith(token, self.i)

    def take(self, token: str):
        if not self.peek(token):
            self.fail(f"expected {token!r}, found {self.s[self.i : self.i + 20]!r}")
        self.i += len(token)

    def ident(self) -> str:
        self.skip()
        match = _IDENT.match(self.s, self.i)
        if not match:
            self.fail(f"expected a name, found {self.s[self.i : self.i + 20]!r}")
        self.i = match.end()
        return match.group()

    def body(self, nested: bool) -> tuple[dict, list[Block]]:
        attributes: dict[str, Any] = {}
        blocks: list[Block] = []
        while True:
            self.skip()
            if self.i >= len(self.s) or (nested and self.peek("}")):
                return attributes, blocks
            name = self.ident()
            if self.peek("=") and not self.peek("=="):
                self.take("=")
                attributes[name] = self.expression()
                continue
            labels = []
            while not self.peek("{"):
                labels.append(self.literal_string() if self.peek('"') else self.ident())
            self.take("{")
            inner_attributes, inner_blocks = self.body(nested=True)
            self.take("}")
            blocks.append(Block(name, tuple(labels), inner_attributes, inner_blocks))

    def literal_string(self) -> str:
        node = self.template()
        if any(not isinstance(part, str) for part in node[1]):
            self.fail("expected a literal string")
        return "".join(node[1])

    def expression(self):
        condition = self.binary(0)
        if self.peek("?"):
            self.take("?")
            yes = self.expression()
            self.take(":")
            return ("if", condition, yes, self.expression())
        return condition

    _LEVELS = (("||",), ("&&",), ("==", "!="))

    def binary(self, level: int):
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while op := next((op for op in self._LEVELS[level] if self.peek(op)), None):
            self.take(op)
            left = ("op", op, left, self.binary(level + 1))
        return left

    def unary(self):
        if self.peek("!") and not self.peek("!="):
            self.take("!")
            return ("not", self.unary())
        node = self.primary()
        while self.i < len(self.s) and self.s[self.i] in ".[":  # traversals: no space before
            if self.s[self.i] == ".":
                self.i += 1
                step = ("attr", self.ident())
            else:
                self.i += 1
                step = ("index", self.expression())
                self.take("]")
            node = ("get", node, step)
        return node

    def primary(self):
        self.skip()
        if self.peek('"'):
            return self.template()
        if self.peek("<<") or self.peek("%{"):
            self.fail("heredocs and template directives are not supported")
        if self.peek("["):
            self.take("[")
            items = []
            while not self.peek("]"):
                items.append(self.expression())
                if not self.peek("]"):
                    self.take(",")
            self.take("]")
            return ("list", items)
        if self.peek("{"):
            self.take("{")
            entries = []
            while not self.peek("}"):
                key = self.literal_string() if self.peek('"') else self.ident()
                self.take(":" if self.peek(":") else "=")
                entries.append((key, self.expression()))
                if self.peek(","):
                    self.take(",")
            self.take("}")
            return ("object", entries)
        if self.peek("("):
            self.take("(")
            node = self.expression()
            self.take(")")
            return node
        if number := _NUMBER.match(self.s, self.i):
            self.i = number.end()
            return ("value", float(number.group()) if number.group(1) else int(number.group()))
        name = self.ident()
        if name in ("true", "false", "null"):
            return ("value", {"true": True, "false": False, "null": None}[name])
        if self.s.startswith("(", self.i):
            self.i += 1
            args = []
            while not self.peek(")"):
                args.append(self.expression())
                if not self.peek(")"):
                    self.take(",")
            self.take(")")
            return ("call", name, args)
        return ("name", name)

    def template(self):
        self.take('"')
        parts: list[Any] = []
        text: list[str] = []
        while True:
            if self.i >= len(self.s) or self.s[self.i] == "\n":
                self.fail("unterminated string")
            char = self.s[self.i]
            if char == '"':
                self.i += 1
                break
            if char == "\\":
                text.append(_ESCAPES[self.s[self.i + 1]])
                self.i += 2
            elif self.s.startswith("$${", self.i):
                text.append("${")
                self.i += 3
            elif self.s.startswith("${", self.i):
                if text:
                    parts.append("".join(text))
                    text = []
                self.i += 2
                parts.append(self.expression())
                self.take("}")
            else:
                text.append(char)
                self.i += 1
        if text:
            parts.append("".join(text))
        return ("template", parts)


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise TypeError(f"cannot use {value!r} in a string")


_FUNCTIONS = {
    "tostring": _text,
    "jsonencode": lambda value: json.dumps(value, separators=(",", ":")),
    "concat": lambda *lists: [item for items in lists for item in items],
    "join": lambda separator, items: separator.join(items),
    "contains": lambda items, value: value in items,
    "toset": lambda items: list(dict.fromkeys(items)),
    "tolist": list,
}


class Terraform:
    """The configuration in ``directory``, evaluated as ``terraform apply`` would see it:
    ``variables`` as a tfvars file gives them (defaults from variables.tf for the rest) and
    ``known`` for what only exists once applied ("aws_iam_role.dagster.arn": ...). References to
    literal attributes of resources ("aws_db_instance.main.username") come from the files, data
    sources ``aws_iam_policy_document`` are rendered as Terraform renders their JSON."""

    def __init__(self, directory: Path, variables: dict[str, Any]):
        self.blocks: list[Block] = []
        for path in sorted(directory.glob("*.tf")):
            attributes, blocks = _Parser(path.read_text(), path.name).body(nested=False)
            assert not attributes, f"{path.name}: attributes outside blocks"
            self.blocks += blocks
        self.variables = {
            block.labels[0]: self.evaluate(block.attributes["default"])
            for block in self.blocks
            if block.type == "variable" and "default" in block.attributes
        } | variables
        self.locals = {
            name: node for block in self.blocks if block.type == "locals" for name, node in block.attributes.items()
        }
        self.known: dict[str, Any] = {}

    def block(self, kind: str, type_: str, name: str) -> Block:
        [found] = [block for block in self.blocks if block.type == kind and block.labels == (type_, name)]
        return found

    def resources(self, type_: str) -> list[Block]:
        return [block for block in self.blocks if block.type == "resource" and block.labels[0] == type_]

    def attribute(self, block: Block, name: str, each: dict | None = None, default: Any = None) -> Any:
        return self.evaluate(block.attributes[name], each) if name in block.attributes else default

    def local(self, name: str) -> Any:
        return self.evaluate(self.locals[name])

    def evaluate(self, node, each: dict | None = None) -> Any:
        kind = node[0]
        if kind == "value":
            return node[1]
        if kind == "template":
            parts = [part if isinstance(part, str) else self.evaluate(part, each) for part in node[1]]
            return parts[0] if len(parts) == 1 and not isinstance(node[1][0], str) else "".join(map(_text, parts))
        if kind == "list":
            return [self.evaluate(item, each) for item in node[1]]
        if kind == "object":
            return {key: self.evaluate(value, each) for key, value in node[1]}
        if kind == "call":
            return _FUNCTIONS[node[1]](*(self.evaluate(arg, each) for arg in node[2]))
        if kind == "if":
            return self.evaluate(node[2] if self.evaluate(node[1], each) else node[3], each)
        if kind == "not":
            return not self.evaluate(node[1], each)
        if kind == "op":
            left, right = self.evaluate(node[2], each), self.evaluate(node[3], each)
            return {"==": left == right, "!=": left != right, "&&": left and right, "||": left or right}[node[1]]
        if kind in ("name", "get"):
            return self._reference(node, each)
        raise ValueError(f"unknown expression {node!r}")

    def _reference(self, node, each: dict | None) -> Any:
        steps = []
        while node[0] == "get":
            steps.insert(0, node[2])
            node = node[1]
        if node[0] != "name":
            value = self.evaluate(node, each)
        else:
            root = node[1]
            names = [step[1] for step in steps]
            if root in ("var", "local", "each"):
                value = {"var": self.variables, "each": each, "local": None}[root]
                if root == "local":
                    value, steps = self.local(names[0]), steps[1:]
            else:
                value, steps = self._resource_value(root, steps, each)
        for step in steps:
            value = value[step[1]] if step[0] == "attr" else value[self.evaluate(step[1], each)]
        return value

    def _resource_value(self, root: str, steps: list, each: dict | None) -> tuple[Any, list]:
        path = root
        for number, step in enumerate(steps):
            path += f".{step[1]}" if step[0] == "attr" else f"[{_text(self.evaluate(step[1], each))}]"
            if path in self.known:
                return self.known[path], steps[number + 1 :]
        # Not known from the apply: a literal attribute in the files, or a rendered policy document.
        kind, head = ("data", steps[:3]) if root == "data" else ("resource", [("attr", root), *steps[:2]])
        if len(head) < 3 or any(step[0] != "attr" for step in head):
            raise KeyError(f"cannot resolve Terraform reference {path}")
        (_, type_), (_, name), (_, attribute) = head
        rest = steps[3:] if kind == "data" else steps[2:]
        if kind == "data" and type_ == "aws_iam_policy_document" and attribute == "json":
            return self.policy_document(name), rest
        block = self.block(kind, type_, name)
        if attribute in block.attributes:
            return self.evaluate(block.attributes[attribute]), rest
        raise KeyError(f"Terraform value {path} is known only after apply and the test did not supply it")

    def policy_document(self, name: str) -> str:
        statements = []
        for statement in self.block("data", "aws_iam_policy_document", name).children("statement"):
            rendered = {"Effect": self.attribute(statement, "effect", default="Allow")}
            if "sid" in statement.attributes:
                rendered["Sid"] = self.attribute(statement, "sid")
            rendered["Action"] = self.attribute(statement, "actions")
            if "resources" in statement.attributes:
                rendered["Resource"] = self.attribute(statement, "resources")
            for principal in statement.children("principals"):
                rendered.setdefault("Principal", {})[self.attribute(principal, "type")] = self.attribute(
                    principal, "identifiers"
                )
            for condition in statement.children("condition"):
                tests = rendered.setdefault("Condition", {}).setdefault(self.attribute(condition, "test"), {})
                tests[self.attribute(condition, "variable")] = self.attribute(condition, "values")
            statements.append(rendered)
        return json.dumps({"Version": "2012-10-17", "Statement": statements})

    def task_definition(self, service: str) -> dict:
        """``aws_ecs_task_definition.service["<service>"]`` as RegisterTaskDefinition arguments."""
        block = self.block("resource", "aws_ecs_task_definition", "service")
        each = {"key": service, "value": self.local("services")[service]}
        [platform] = block.children("runtime_platform")
        return {
            "family": self.attribute(block, "family", each),
            "requiresCompatibilities": self.attribute(block, "requires_compatibilities", each),
            "networkMode": self.attribute(block, "network_mode", each),
            "cpu": _text(self.attribute(block, "cpu", each)),
            "memory": _text(self.attribute(block, "memory", each)),
            "executionRoleArn": self.attribute(block, "execution_role_arn", each),
            "taskRoleArn": self.attribute(block, "task_role_arn", each),
            "runtimePlatform": {
                "operatingSystemFamily": self.attribute(platform, "operating_system_family"),
                "cpuArchitecture": self.attribute(platform, "cpu_architecture"),
            },
            "containerDefinitions": json.loads(self.attribute(block, "container_definitions", each)),
        }


# --- Playing Terraform in moto --------------------------------------------------------------------


def _suffix() -> str:
    return secrets.token_hex(4)


def _moto_policy(document: str) -> str:
    """moto evaluates no IAM conditions (a statement with one is treated as a Deny) and matches
    non-S3 resources only against "*": the conditions go, the actions and S3 resources stay."""
    policy = json.loads(document)
    for statement in policy["Statement"]:
        statement.pop("Condition", None)
    return json.dumps(policy)


def apply_terraform(tf: Terraform, aws, database: dict) -> dict[str, list[str]]:
    """Create in moto what ``terraform apply`` creates for the ECS path; fill ``tf.known`` with the
    values it would learn (the RDS instance is ``database``: host, port, password). Returns each
    role's policy documents as the Terraform renders them."""
    known = tf.known
    known["data.aws_caller_identity.current.account_id"] = aws("sts").get_caller_identity()["Account"]
    known["data.aws_partition.current.partition"] = "aws"

    key = aws("kms").create_key(Description=tf.attribute(tf.block("resource", "aws_kms_key", "main"), "description"))
    known["aws_kms_key.main.arn"] = key["KeyMetadata"]["Arn"]

    repository = aws("ecr").create_repository(
        repositoryName=tf.attribute(tf.block("resource", "aws_ecr_repository", "app"), "name")
    )["repository"]
    known["aws_ecr_repository.app.repository_url"] = repository["repositoryUri"]

    bucket = tf.attribute(tf.block("resource", "aws_s3_bucket", "data"), "bucket_prefix") + _suffix()
    aws("s3").create_bucket(Bucket=bucket)
    known |= {"aws_s3_bucket.data.bucket": bucket, "aws_s3_bucket.data.id": bucket}
    known["aws_s3_bucket.data.arn"] = f"arn:aws:s3:::{bucket}"

    cluster = aws("ecs").create_cluster(
        clusterName=tf.attribute(tf.block("resource", "aws_ecs_cluster", "main"), "name"),
        settings=[{"name": "containerInsights", "value": "enabled"}],
    )["cluster"]
    known |= {"aws_ecs_cluster.main.arn": cluster["clusterArn"], "aws_ecs_cluster.main.id": cluster["clusterArn"]}
    known["aws_ecs_cluster.main.name"] = cluster["clusterName"]

    log_group = tf.block("resource", "aws_cloudwatch_log_group", "ecs")
    aws("logs").create_log_group(logGroupName=tf.attribute(log_group, "name"), kmsKeyId=known["aws_kms_key.main.arn"])
    aws("logs").put_retention_policy(
        logGroupName=tf.attribute(log_group, "name"), retentionInDays=tf.attribute(log_group, "retention_in_days")
    )

    # The database, and its password as RDS keeps it (manage_master_user_password): a JSON secret.
    known |= {"aws_db_instance.main.address": database["host"], "aws_db_instance.main.port": database["port"]}
    username = tf.attribute(tf.block("resource", "aws_db_instance", "main"), "username")
    master = aws("secretsmanager").create_secret(
        Name=f"rds!db-{_suffix()}",
        SecretString=json.dumps({"username": username, "password": database["password"]}),
        KmsKeyId=known["aws_kms_key.main.arn"],
    )
    known["aws_db_instance.main.master_user_secret[0].secret_arn"] = master["ARN"]
    for block in tf.resources("aws_secretsmanager_secret"):
        secret = aws("secretsmanager").create_secret(
            Name=tf.attribute(block, "name_prefix") + _suffix(), SecretString=secrets.token_urlsafe(16)
        )
        known[f"aws_secretsmanager_secret.{block.labels[1]}.arn"] = secret["ARN"]

    # Networking the variables point at (an existing VPC and its subnets) and the tasks' group.
    ec2 = aws("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    # Cloud Map's private DNS namespace (network.tf) needs DNS hostnames in the VPC (moto's ENIs,
    # too: without them it fails RunTask with an AttributeError).
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{n}.0/24", AvailabilityZone=f"{REGION}{zone}")["Subnet"][
            "SubnetId"
        ]
        for n, zone in ((1, "a"), (2, "b"), (11, "a"), (12, "b"))
    ]
    tf.variables |= {"vpc_id": vpc, "private_subnet_ids": subnets[:2], "public_subnet_ids": subnets[2:]}
    for group in tf.resources("aws_security_group"):  # the tasks', MLflow's, inference's, ...
        known[f"aws_security_group.{group.labels[1]}.id"] = ec2.create_security_group(
            GroupName=tf.attribute(group, "name_prefix") + _suffix(),
            Description=tf.attribute(group, "description"),
            VpcId=vpc,
        )["GroupId"]

    # The ECS tasks' roles (those ecs-tasks.amazonaws.com may assume), their inline policies and
    # attachments, exactly as rendered from iam.tf. (RDS's monitoring role is no part of this.)
    iam = aws("iam")
    for block in tf.resources("aws_iam_role"):
        trust = tf.attribute(block, "assume_role_policy")
        if "ecs-tasks.amazonaws.com" not in trust:
            continue
        role = iam.create_role(RoleName=tf.attribute(block, "name_prefix") + _suffix(), AssumeRolePolicyDocument=trust)[
            "Role"
        ]
        prefix = f"aws_iam_role.{block.labels[1]}"
        known |= {f"{prefix}.arn": role["Arn"], f"{prefix}.id": role["RoleName"], f"{prefix}.name": role["RoleName"]}
    policies = apply_role_policies(tf, iam)
    for block in tf.resources("aws_iam_role_policy_attachment"):
        try:
            role = tf.attribute(block, "role")
        except KeyError:
            continue
        iam.attach_role_policy(RoleName=role, PolicyArn=tf.attribute(block, "policy_arn"))
    return policies


def apply_role_policies(tf: Terraform, iam) -> dict[str, list[str]]:
    """The inline policies of the roles created above, as rendered from iam.tf (a policy whose
    ``count`` is 0 for these variables is not created; again after a change of variables, what
    ``terraform apply`` adds). Returns each role's policy documents."""
    policies: dict[str, list[str]] = {}
    for block in tf.resources("aws_iam_role_policy"):
        if tf.attribute(block, "count", default=1) == 0:
            continue
        try:
            role = tf.attribute(block, "role")
        except KeyError:  # a role not created above
            continue
        document = tf.attribute(block, "policy")
        policies.setdefault(role, []).append(document)
        iam.put_role_policy(RoleName=role, PolicyName=block.labels[1], PolicyDocument=_moto_policy(document))
    return policies


def register_and_start_daemon(tf: Terraform, ecs) -> dict:
    """What ``aws_ecs_service.service["daemon"]`` does: its task definition registered, one task
    started with the service's launch type and network configuration."""
    definitions = {
        service: ecs.register_task_definition(**tf.task_definition(service))["taskDefinition"] for service in SERVICES
    }
    service = tf.block("resource", "aws_ecs_service", "service")
    each = {"key": "daemon", "value": tf.local("services")["daemon"]}
    [network] = service.children("network_configuration")
    task = ecs.run_task(
        cluster=tf.attribute(service, "cluster", each),
        taskDefinition=definitions["daemon"]["taskDefinitionArn"],
        launchType=tf.attribute(service, "launch_type", each),
        group="service:daemon",
        startedBy="ecs-svc/terraform",
        networkConfiguration={
            "awsvpcConfiguration": {
                "subnets": tf.attribute(network, "subnets", each),
                "securityGroups": tf.attribute(network, "security_groups", each),
                "assignPublicIp": "ENABLED" if tf.attribute(network, "assign_public_ip", each) else "DISABLED",
            }
        },
    )["tasks"][0]
    return {"definitions": definitions, "task": task}


def metadata_for(ecs, cluster: str, task_arn: str, definition: dict) -> tuple[dict, dict]:
    """The v4 metadata the ECS agent serves to the daemon's container, from moto's view of it."""
    [container] = definition["containerDefinitions"]
    task = ecs.describe_tasks(cluster=cluster, tasks=[task_arn])["tasks"][0]
    eni = {d["name"]: d["value"] for d in task["attachments"][0]["details"]}
    container_metadata = {
        "DockerId": task_arn.rsplit("/", 1)[-1] + "-0",
        "Name": container["name"],
        "DockerName": container["name"],
        "Image": container["image"],
        "Labels": {
            "com.amazonaws.ecs.cluster": cluster,
            "com.amazonaws.ecs.container-name": container["name"],
            "com.amazonaws.ecs.task-arn": task_arn,
            "com.amazonaws.ecs.task-definition-family": definition["family"],
            "com.amazonaws.ecs.task-definition-version": str(definition["revision"]),
        },
        "DesiredStatus": "RUNNING",
        "KnownStatus": task["lastStatus"],
        "Type": "NORMAL",
        "LogDriver": container["logConfiguration"]["logDriver"],
        "LogOptions": container["logConfiguration"]["options"],
        "Networks": [{"NetworkMode": "awsvpc", "IPv4Addresses": [eni["privateIPv4Address"]]}],
    }
    task_metadata = {
        "Cluster": cluster,
        "TaskARN": task_arn,
        "Family": definition["family"],
        "Revision": str(definition["revision"]),
        "DesiredStatus": "RUNNING",
        "KnownStatus": task["lastStatus"],
        "LaunchType": task.get("launchType", "FARGATE"),
        "Limits": {"CPU": int(definition["cpu"]) / 1024, "Memory": int(definition["memory"])},
        "Containers": [container_metadata],
    }
    return container_metadata, task_metadata


def container_environment(aws, definition: dict) -> dict[str, str]:
    """A container's environment as the ECS agent builds it: variables, then the secrets it reads
    with Secrets Manager (``arn:...:secret:name-abc123:json-key::`` picks one key of a JSON secret)."""
    [container] = definition["containerDefinitions"]
    env = {item["name"]: item["value"] for item in container.get("environment", [])}
    for secret in container.get("secrets", []):
        parts = secret["valueFrom"].split(":")
        value = aws("secretsmanager").get_secret_value(SecretId=":".join(parts[:7]))["SecretString"]
        env[secret["name"]] = json.loads(value)[parts[7]] if len(parts) > 7 and parts[7] else value
    return env


def role_credentials(aws, role_arn: str, session: str) -> dict[str, str]:
    """The task role's credentials, as the agent's credential endpoint would hand them out."""
    credentials = aws("sts").assume_role(RoleArn=role_arn, RoleSessionName=session)["Credentials"]
    return {
        "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
        "AWS_SESSION_TOKEN": credentials["SessionToken"],
    }


def _statements_allowing(documents: list[str], action: str) -> list[dict]:
    found = []
    for document in documents:
        for statement in json.loads(document)["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if statement["Effect"] == "Allow" and action in actions:
                found.append(statement)
    return found


def test_backfill_launches_one_ecs_task_per_month(tmp_path):
    import boto3
    import psycopg2
    from dagster._grpc.types import ExecuteRunArgs
    from dagster._serdes import deserialize_value

    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        raise RuntimeError("PostgreSQL's initdb and pg_ctl must be on PATH for this test")
    started = time.monotonic()
    launcher_config = yaml.safe_load((DEPLOY / "dagster-ecs.yaml").read_text())["run_launcher"]
    assert launcher_config["class"] == "EcsRunLauncher" and launcher_config["config"]["use_current_ecs_task_config"]

    postgres = Postgres()
    with (
        contextlib.closing(postgres),
        moto_server_process(tmp_path, {"MOTO_IAM_LOAD_MANAGED_POLICIES": "true"}) as endpoint,
    ):
        pg = postgres.start()
        postgres.create_databases("dagster", "mlflow")
        # Until IAM is switched on (below), moto takes any credentials: Terraform's own.
        admin = {"aws_access_key_id": "terraform", "aws_secret_access_key": "terraform"}

        def aws(service: str):
            return boto3.client(service, endpoint_url=endpoint, region_name=REGION, **admin)

        # The database user Terraform names (aws_db_instance.main.username), with its own password.
        tf = Terraform(
            DEPLOY / "terraform", {"image_tag": "0123456789abcdef", "certificate_arn": "-", "allowed_cidrs": []}
        )
        username = tf.attribute(tf.block("resource", "aws_db_instance", "main"), "username")
        db_password = secrets.token_hex(12)
        connection = psycopg2.connect(dbname="postgres", **pg)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE ROLE "{username}" LOGIN PASSWORD %s', (db_password,))
            cursor.execute(f'ALTER DATABASE dagster OWNER TO "{username}"')
        connection.close()

        policies = apply_terraform(tf, aws, {"host": pg["host"], "port": pg["port"], "password": db_password})
        # moto moves a task one status on at each DescribeTasks (to STOPPED after four); real
        # tasks stay RUNNING while their container runs. Hold them there.
        moto_api(
            endpoint,
            "state-manager/set-transition",
            {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 10**9}},
        )
        ecs = aws("ecs")
        cluster = tf.known["aws_ecs_cluster.main.arn"]
        deployed = register_and_start_daemon(tf, ecs)
        daemon_task, definitions = deployed["task"], deployed["definitions"]
        image = tf.local("image")

        # From here on moto checks every call against the caller's IAM policies (the test keeps
        # an administrator of its own for looking).
        iam = aws("iam")
        iam.create_user(UserName="test-admin")
        iam.put_user_policy(
            UserName="test-admin",
            PolicyName="everything",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
            ),
        )
        key = iam.create_access_key(UserName="test-admin")["AccessKey"]
        credentials = {
            service: role_credentials(aws, definitions[service]["taskRoleArn"], service) for service in SERVICES
        }
        environments = {service: container_environment(aws, definitions[service]) for service in SERVICES}
        moto_api(endpoint, "reset-auth", "0")
        admin = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        ecs = aws("ecs")

        home = tmp_path / "ecs-home"
        home.mkdir()
        shutil.copy(DEPLOY / "dagster-ecs.yaml", home / "dagster.yaml")
        workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
        assert workspace["load_from"][0]["grpc_server"]["port"] == 4000
        ports = {"4000": "4000", "3000": "3000"}  # Terraform's ports -> the ones the servers got here
        local = {  # what differs on one machine: paths, addresses, and moto as the AWS endpoint
            "DAGSTER_HOME": str(home),
            "DAGSTER_CODE_LOCATION_HOST": "127.0.0.1",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_DEFAULT_REGION": environments["daemon"]["AWS_REGION"],  # ECS sets both
        }
        base = {k: v for k, v in os.environ.items() if not k.startswith(("TAXI_", "DAGSTER_", "MLFLOW_", "AWS_"))}

        def command(service: str) -> list[str]:
            [container] = definitions[service]["containerDefinitions"]
            mapped = {"0.0.0.0": "127.0.0.1", **ports}
            mapped["workspace.yaml"] = str(tmp_path / "workspace.yaml")
            return [str(BIN / container["command"][0]), *(mapped.get(arg, arg) for arg in container["command"][1:])]

        def metadata():
            return metadata_for(ecs, cluster, daemon_task["taskArn"], definitions["daemon"])

        processes = {
            service: Processes(tmp_path, base | environments[service] | credentials[service] | local)
            for service in SERVICES
        }
        with EcsMetadataServer(lambda: metadata()[0], lambda: metadata()[1]) as agent:
            processes["daemon"].env["ECS_CONTAINER_METADATA_URI_V4"] = agent.uri
            try:
                from dagster._grpc.client import DagsterGrpcClient

                def code_loaded(port: int) -> bool:
                    try:
                        DagsterGrpcClient(port=port, host="127.0.0.1").list_repositories()
                        return True
                    except Exception:
                        return False

                def webserver_up(port: int) -> bool:
                    try:
                        return GraphQL(f"http://127.0.0.1:{port}").location_loaded()
                    except OSError:
                        return False

                def serve(service: str, terraform_port: str, ready) -> int:
                    def on(port: int) -> list[str]:
                        ports[terraform_port] = str(port)
                        return command(service)

                    try:
                        return processes[service].start_on_a_free_port(service, on, ready, timeout=240)
                    except (RuntimeError, TimeoutError) as error:
                        pytest.fail(f"{service} did not come up: {error}")

                code_port = serve("code-location", "4000", code_loaded)
                workspace["load_from"][0]["grpc_server"]["port"] = code_port
                (tmp_path / "workspace.yaml").write_text(yaml.safe_dump(workspace))
                web_port = serve("webserver", "3000", webserver_up)
                graphql = GraphQL(f"http://127.0.0.1:{web_port}")
                # This test counts tasks and task definitions: the daily schedule launches none.
                graphql.stop_schedule("daily_health_schedule")

                # The backfill first, then the daemon: its backfill loop picks it up on its first
                # iteration instead of 30 s later. The data_preparation job's partition set: one
                # run per month with all three assets (an asset backfill would hold training_set
                # back until the previous month's cleaned_trips exist, which never happens here).
                answer = graphql(
                    """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
                         __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
                    {
                        "params": {
                            "selector": {
                                "partitionSetName": "data_preparation_partition_set",
                                "repositorySelector": {
                                    "repositoryLocationName": "taxi_assets",
                                    "repositoryName": "__repository__",
                                },
                            },
                            "partitionNames": MONTHS,
                        }
                    },
                )["launchPartitionBackfill"]
                assert answer["__typename"] == "LaunchBackfillSuccess", answer
                backfill = answer["backfillId"]
                processes["daemon"].start("daemon", command("daemon"))

                def launched():
                    rows = sql(
                        pg,
                        "SELECT r.run_id, r.status, t.key, t.value FROM runs r JOIN run_tags t ON t.run_id = r.run_id"
                        " WHERE r.run_id IN (SELECT run_id FROM run_tags WHERE key = 'dagster/backfill' AND value = %s)",
                        backfill,
                    )
                    runs: dict[str, dict] = {}
                    for run_id, status, key_, value in rows:
                        runs.setdefault(run_id, {"status": status})[key_] = value
                    if any(run["status"] == "FAILURE" for run in runs.values()):
                        pytest.fail(f"a run failed to launch: {runs}\n{processes['daemon'].log('daemon')}")
                    done = len(runs) == len(MONTHS) and all("ecs/task_arn" in run for run in runs.values())
                    return runs if done else None

                try:
                    runs = wait_for(launched, 300, "three runs launched in ECS tasks")
                except TimeoutError:
                    pytest.fail("runs not launched:\n" + processes["daemon"].log("daemon"))
            finally:
                for group in processes.values():
                    group.stop_all()

        # The instance: one run per month, each STARTING in its own task of this cluster.
        assert sorted(run["dagster/partition"] for run in runs.values()) == MONTHS
        assert {run["status"] for run in runs.values()} == {"STARTING"}
        assert {run["ecs/cluster"] for run in runs.values()} == {cluster}
        task_arns = {run["ecs/task_arn"]: run_id for run_id, run in runs.items()}
        assert len(task_arns) == len(MONTHS)
        # The launcher asked the agent which task it runs in, as use_current_ecs_task_config does.
        assert agent.requests["/task"] >= 1 and agent.requests["/"] >= 1

        # moto: the cluster holds the daemon's task and one task per run, nothing else.
        listed = set(ecs.list_tasks(cluster=cluster)["taskArns"])
        assert listed == {daemon_task["taskArn"], *task_arns}, listed
        tasks = ecs.describe_tasks(cluster=cluster, tasks=list(task_arns), include=["TAGS"])["tasks"]
        assert len(tasks) == len(MONTHS)

        # One task definition registered for the runs (the second and third runs reuse it).
        families = {task["taskDefinitionArn"].rsplit("/", 1)[1].split(":")[0] for task in tasks}
        [family] = families
        assert family.startswith(launcher_config["config"].get("task_definition_prefix", "run") + "_")
        registered = ecs.list_task_definitions()["taskDefinitionArns"]
        assert sorted(registered) == sorted(
            [*(d["taskDefinitionArn"] for d in definitions.values()), tasks[0]["taskDefinitionArn"]]
        ), registered
        assert tasks[0]["taskDefinitionArn"].endswith(":1")
        run_definition = ecs.describe_task_definition(taskDefinition=tasks[0]["taskDefinitionArn"])["taskDefinition"]
        [daemon_container] = tf.task_definition("daemon")["containerDefinitions"]
        [container] = run_definition["containerDefinitions"]
        resources = launcher_config["config"]["run_resources"]

        # ...with the code location's image, the Terraform's roles, environment, secrets and logs.
        assert container["name"] == launcher_config["config"].get("container_name", "run")
        assert container["image"] == image == environments["code-location"]["DAGSTER_CURRENT_IMAGE"]
        assert image == f"{tf.known['aws_ecr_repository.app.repository_url']}:{tf.variables['image_tag']}"
        assert run_definition["taskRoleArn"] == tf.known["aws_iam_role.dagster.arn"]
        assert run_definition["taskRoleArn"] != definitions["daemon"]["taskRoleArn"]
        assert run_definition["executionRoleArn"] == tf.known["aws_iam_role.execution.arn"]
        environment = {item["name"]: item["value"] for item in container["environment"]}
        terraform_environment = {item["name"]: item["value"] for item in tf.local("dagster_environment")}
        assert environment == terraform_environment | {"DAGSTER_RUN_JOB_NAME": "data_preparation"}
        assert environment["DAGSTER_PG_PASSWORD_SECRET_ARN"].startswith(
            tf.known["aws_db_instance.main.master_user_secret[0].secret_arn"]
        )
        assert container["secrets"] == tf.local("dagster_secrets")
        assert [s["name"] for s in container["secrets"]] == ["DAGSTER_PG_PASSWORD"]
        assert container["logConfiguration"] == daemon_container["logConfiguration"]
        assert container["logConfiguration"]["options"]["awslogs-group"] == tf.attribute(
            tf.block("resource", "aws_cloudwatch_log_group", "ecs"), "name"
        )
        assert container["user"] == daemon_container["user"]
        assert (run_definition["cpu"], run_definition["memory"]) == (resources["cpu"], resources["memory"])
        assert run_definition["requiresCompatibilities"] == ["FARGATE"]
        assert run_definition["networkMode"] == "awsvpc"
        assert run_definition["runtimePlatform"] == definitions["daemon"]["runtimePlatform"]

        # The execution role can read every secret the runs get; the daemon may pass both roles.
        readable = [
            resource
            for statement in _statements_allowing(
                policies[tf.known["aws_iam_role.execution.id"]], "secretsmanager:GetSecretValue"
            )
            for resource in statement["Resource"]
        ]
        assert all(":".join(s["valueFrom"].split(":")[:7]) in readable for s in container["secrets"]), readable
        passable = [
            resource
            for statement in _statements_allowing(policies[tf.known["aws_iam_role.daemon.id"]], "iam:PassRole")
            for resource in statement["Resource"]
        ]
        assert {run_definition["taskRoleArn"], run_definition["executionRoleArn"]} <= set(passable), passable

        # Each task: its run's `dagster api execute_run`, on the daemon's network, tagged with the run.
        daemon_eni = {d["name"]: d["value"] for d in daemon_task["attachments"][0]["details"]}
        for task in tasks:
            run_id = task_arns[task["taskArn"]]
            assert task["launchType"] == "FARGATE"
            assert {tag["key"]: tag["value"] for tag in task["tags"]}["dagster/run_id"] == run_id
            [override] = task["overrides"]["containerOverrides"]
            assert override["name"] == container["name"]
            assert override["command"][:3] == ["dagster", "api", "execute_run"]
            args = deserialize_value(override["command"][3], ExecuteRunArgs)
            assert args.run_id == run_id
            assert args.job_origin.job_name == "data_preparation"
            origin = args.job_origin.repository_origin  # the code the run task loads, in its image
            assert origin.code_pointer.module == "taxi_assets.definitions"
            assert origin.container_image == image
            assert not origin.container_context  # stripped: it only shaped the task definition
            assert (override["cpu"], override["memory"]) == (int(resources["cpu"]), int(resources["memory"]))
            eni = {d["name"]: d["value"] for d in task["attachments"][0]["details"]}
            assert eni["subnetId"] == daemon_eni["subnetId"]
            [interface] = aws("ec2").describe_network_interfaces(NetworkInterfaceIds=[eni["networkInterfaceId"]])[
                "NetworkInterfaces"
            ]
            assert [group["GroupId"] for group in interface["Groups"]] == [tf.known["aws_security_group.tasks.id"]]
            assert interface.get("Association", {}).get("PublicIp") is None

        # The runs' ECS launch recorded in their event logs, with the task.
        events = sql(
            pg,
            "SELECT run_id, event FROM event_logs WHERE dagster_event_type = 'ENGINE_EVENT' AND event LIKE %s",
            "%Launching run in ECS task%",
        )
        assert {run_id for run_id, _ in events} == set(runs)
        assert all(
            next(arn for arn, owner in task_arns.items() if owner == run_id) in event for run_id, event in events
        )
        print(f"ECS launch path: {time.monotonic() - started:.0f} s")
