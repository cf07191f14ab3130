"""The tests' ECS agent (taxi_assets_tests/ecs_agent.py) against moto's server: what a task's
container gets (command, environment, secret, credentials, metadata) and how its end is reported
(its own exit, StopTask with SIGTERM and then SIGKILL, a kill, a secret it may not read)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import boto3
import pytest

from taxi_assets_tests.ecs_agent import EcsAgent, Machine
from taxi_assets_tests.servers import moto_api, moto_server_process
from taxi_assets_tests.stack import wait_for

REGION = "us-east-1"
TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}
# The container: writes what it got to a file named by its first argument, then ends as asked.
CONTAINER = r"""
import json, os, signal, subprocess, sys, time, urllib.request
out, how = sys.argv[1], sys.argv[2]
meta = os.environ["ECS_CONTAINER_METADATA_URI_V4"]
task = json.load(urllib.request.urlopen(meta + "/task"))
credentials = json.load(urllib.request.urlopen(os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"]))
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
seen = {"env": dict(os.environ), "cwd": os.getcwd(), "task": task, "key": credentials["AccessKeyId"], "child": child.pid}
open(out + ".tmp", "w").write(json.dumps(seen)); os.replace(out + ".tmp", out)
if how == "exit":
    sys.exit(3)
signal.signal(signal.SIGTERM, signal.SIG_IGN if how == "stubborn" else lambda *a: sys.exit(0))
time.sleep(600)
"""


@pytest.fixture
def ecs_cluster(tmp_path):
    with moto_server_process(tmp_path) as endpoint:

        def aws(service: str, credentials: dict | None = None):
            keys = credentials or {"aws_access_key_id": "ecs", "aws_secret_access_key": "ecs"}
            return boto3.client(service, endpoint_url=endpoint, region_name=REGION, **keys)

        moto_api(
            endpoint,
            "state-manager/set-transition",
            {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 10**9}},
        )
        ec2 = aws("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        cluster = aws("ecs").create_cluster(clusterName="agent")["cluster"]["clusterArn"]
        secrets = aws("secretsmanager")
        readable = secrets.create_secret(Name="db", SecretString=json.dumps({"password": "s3cret"}))["ARN"]
        unreadable = secrets.create_secret(Name="other", SecretString="nope")["ARN"]
        iam = aws("iam")
        roles = {
            name: iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST))["Role"]["Arn"]
            for name in ("task", "execution")
        }
        may_read = {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"], "Resource": [readable]}
        iam.put_role_policy(
            RoleName="execution",
            PolicyName="secrets",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [may_read]}),
        )
        sessions = {
            role: aws("sts").assume_role(RoleArn=role, RoleSessionName="ecs")["Credentials"] for role in roles.values()
        }
        workdir = tmp_path / "app"
        workdir.mkdir()
        machine = Machine(
            environment={"PATH": os.environ["PATH"], "IMAGE_SETTING": "from-the-image"},
            workdir=workdir,
            replacements={"/opt/image/out": str(tmp_path)},
        )
        with EcsAgent(aws, cluster, machine, tmp_path, lambda role: sessions[role]) as agent:
            yield {
                "aws": aws, "agent": agent, "cluster": cluster, "subnet": subnet, "roles": roles,
                "secrets": {"readable": readable, "unreadable": unreadable}, "sessions": sessions, "root": tmp_path,
            }  # fmt: skip


def run_task(cluster: dict, how: str, secret: str = "readable", stop_timeout: int = 30, **task_overrides) -> str:
    """The ARN of a probe task started with RunTask's task-level ``task_overrides`` (cpu, memory)."""
    return start_task(cluster, how, secret, stop_timeout, task_overrides)["tasks"][0]["taskArn"]


def start_task(
    cluster: dict, how: str, secret: str = "readable", stop_timeout: int = 30, task_overrides=None, **run_task_args
) -> dict:
    """RunTask's answer for a probe task; ``run_task_args`` go to RunTask as they are (clientToken)."""
    ecs = cluster["aws"]("ecs")
    definition = ecs.register_task_definition(
        family="probe",
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="512",
        memory="1024",
        taskRoleArn=cluster["roles"]["task"],
        executionRoleArn=cluster["roles"]["execution"],
        containerDefinitions=[
            {
                "name": "probe",
                "image": "probe:1",
                "command": [sys.executable, "-c", CONTAINER, f"/opt/image/out/{how}.json", how],
                "environment": [{"name": "FROM_DEFINITION", "value": "kept"}, {"name": "OVERRIDDEN", "value": "no"}],
                "secrets": [{"name": "DB_PASSWORD", "valueFrom": f"{cluster['secrets'][secret]}:password::"}],
                "stopTimeout": stop_timeout,
            }
        ],
    )["taskDefinition"]
    return ecs.run_task(
        cluster=cluster["cluster"],
        taskDefinition=definition["taskDefinitionArn"],
        launchType="FARGATE",
        networkConfiguration={"awsvpcConfiguration": {"subnets": [cluster["subnet"]], "securityGroups": []}},
        overrides={"containerOverrides": [{"name": "probe", "environment": [{"name": "OVERRIDDEN", "value": "yes"}]}]}
        | (task_overrides or {}),
        **run_task_args,
    )


def stopped(cluster: dict, arn: str, timeout: float = 120) -> dict:
    ecs = cluster["aws"]("ecs")

    def done():
        [task] = ecs.describe_tasks(cluster=cluster["cluster"], tasks=[arn])["tasks"]
        return task if task["lastStatus"] == "STOPPED" else None

    return wait_for(done, timeout, f"task {arn} stopped")


def seen_by(cluster: dict, how: str) -> dict:
    path = Path(cluster["root"]) / f"{how}.json"
    return json.loads(wait_for(lambda: path.exists() and path.read_text(), 120, f"the {how} container's report"))


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_container_gets_its_task_and_its_exit_code_is_reported(ecs_cluster):
    arn = run_task(ecs_cluster, "exit", cpu="1024", memory="2048")
    seen = seen_by(ecs_cluster, "exit")
    task = stopped(ecs_cluster, arn)
    [container] = task["containers"]
    assert (task["stopCode"], container["exitCode"], container["lastStatus"]) == (
        "EssentialContainerExited",
        3,
        "STOPPED",
    )
    env = seen["env"]
    assert env["IMAGE_SETTING"] == "from-the-image" and env["FROM_DEFINITION"] == "kept"
    assert env["OVERRIDDEN"] == "yes"  # RunTask's override over the definition
    assert env["DB_PASSWORD"] == "s3cret"  # one key of a JSON secret, read as the execution role may
    assert seen["cwd"] == str(ecs_cluster["root"] / "app")
    assert seen["task"]["TaskARN"] == arn and seen["task"]["Cluster"] == ecs_cluster["cluster"]
    assert seen["task"]["Limits"] == {"CPU": 1.0, "Memory": 2048}  # the overrides, not the definition
    assert seen["key"] == ecs_cluster["sessions"][ecs_cluster["roles"]["task"]]["AccessKeyId"]  # the task role
    assert not alive(seen["child"])  # the container's other processes end with it


def test_stop_task_sends_sigterm_then_sigkill_after_the_stop_timeout(ecs_cluster):
    ecs = ecs_cluster["aws"]("ecs")
    polite, stubborn = run_task(ecs_cluster, "polite"), run_task(ecs_cluster, "stubborn", stop_timeout=2)
    seen = {how: seen_by(ecs_cluster, how) for how in ("polite", "stubborn")}
    for arn in (polite, stubborn):
        ecs.stop_task(cluster=ecs_cluster["cluster"], task=arn, reason="the test")
    started = time.monotonic()
    assert stopped(ecs_cluster, polite)["containers"][0]["exitCode"] == 0  # it exits on SIGTERM
    task = stopped(ecs_cluster, stubborn)
    assert task["containers"][0]["exitCode"] == 137  # killed after ignoring SIGTERM
    assert time.monotonic() - started >= 2 - 0.5  # not before its stop timeout
    assert (task["stopCode"], task["stoppedReason"]) == ("UserInitiated", "the test")
    assert not alive(seen["stubborn"]["child"]) and not alive(seen["polite"]["child"])


def test_a_killed_container_is_reported_with_exit_code_137(ecs_cluster):
    arn = run_task(ecs_cluster, "killed")
    seen_by(ecs_cluster, "killed")
    ecs_cluster["agent"].kill(arn)
    assert stopped(ecs_cluster, arn)["containers"][0]["exitCode"] == 137


def test_a_secret_the_execution_role_may_not_read_keeps_the_container_from_starting(ecs_cluster):
    arn = run_task(ecs_cluster, "unreadable", secret="unreadable")
    task = stopped(ecs_cluster, arn)
    assert "ResourceInitializationError" in task["stoppedReason"]
    assert "exitCode" not in task["containers"][0]
    assert not (ecs_cluster["root"] / "unreadable.json").exists()
    assert ecs_cluster["agent"].errors  # noted: the deployment tests fail on it
    ecs_cluster["agent"].errors.clear()


def test_run_task_repeated_with_its_client_token_starts_one_task(ecs_cluster):
    """As on ECS (dagster-aws sends a clientToken so that botocore's retry of a RunTask whose answer
    was lost starts no second run worker): the repeat answers with the first request's task."""
    first = start_task(ecs_cluster, "exit", clientToken="launch-1")["tasks"]
    again = start_task(ecs_cluster, "exit", clientToken="launch-1")["tasks"]
    other = start_task(ecs_cluster, "exit", clientToken="launch-2")["tasks"]
    assert [task["taskArn"] for task in again] == [task["taskArn"] for task in first]
    assert other[0]["taskArn"] != first[0]["taskArn"]
    listed = ecs_cluster["aws"]("ecs").list_tasks(cluster=ecs_cluster["cluster"])["taskArns"]
    assert sorted(listed) == sorted([first[0]["taskArn"], other[0]["taskArn"]])
    assert stopped(ecs_cluster, first[0]["taskArn"])["containers"][0]["exitCode"] == 3
