"""An ECS agent for tests: the tasks that moto's ECS records are run as local processes.

moto's ECS keeps tasks as records and starts nothing. ``EcsAgent`` does for every task of one
cluster what ECS's agent and Fargate do for a container:

- it polls the cluster (ListTasks, DescribeTasks) and starts each new task's container as a
  process in a session of its own (the container): the command of the task definition or of
  RunTask's container override; the environment of the image, the definition, its secrets (read
  from Secrets Manager, as the execution role lets ECS read them), the override's environment;
  the task role's credentials (moto's STS, AssumeRole as ecs-tasks.amazonaws.com does) served at
  ``AWS_CONTAINER_CREDENTIALS_FULL_URI``, and the task metadata endpoint
  (``ECS_CONTAINER_METADATA_URI_V4``: the task's ARN, cluster, and its ``Limits``, RunTask's
  cpu/memory overrides first);
- it reports the task RUNNING, and STOPPED with the container's exit code when the process ends
  (128 + the signal for a killed one, as Docker reports it), with SubmitTaskStateChange: the
  action the real agent uses, which ``servers.moto_server_process`` adds to moto (and with it
  StopTask as ECS does it: the desired status goes to STOPPED, the agent stops the container);
- a task whose desired status is STOPPED (StopTask) gets SIGTERM, and SIGKILL after its
  container's ``stopTimeout`` (ECS's default: 30 s); when the main process ends, whatever it
  left in its session is killed, as a container's processes end with it.

What one machine changes is ``Machine``: the image's environment and working directory, the
image's paths and the VPC's names and ports mapped to local ones, and settings over everything
(moto as the AWS endpoint). The container's ``user`` is not switched: processes run as the test.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_STOP_TIMEOUT = 30  # seconds between SIGTERM and SIGKILL, ECS's default


@dataclass
class Machine:
    """What a container sees on this machine instead of in its image and VPC.

    ``environment``: the image's ENV and what a container has without asking (PATH to the
    project's environment, HOME), below the task's own. ``replacements``: text in the task's
    environment and command naming a place in the image or the VPC, and where it is here
    (``/opt/dagster/ecs-home``, ``mlflow.taxi.internal:5000``, ``0.0.0.0``). ``ports``: per
    container name, its container ports and the local ports it listens on instead. ``overrides``:
    set over everything (``AWS_ENDPOINT_URL``: moto)."""

    environment: dict[str, str]
    workdir: Path
    replacements: dict[str, str] = field(default_factory=dict)
    ports: dict[str, dict[int, int]] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)

    def text(self, value: str) -> str:
        for old in sorted(self.replacements, key=len, reverse=True):
            value = value.replace(old, self.replacements[old])
        return value

    def command(self, container: str, command: list[str]) -> list[str]:
        """``command`` with its bind addresses, paths and ``-p``/``--port`` values made local
        (also inside a ``sh -c`` string)."""
        ports = self.ports.get(container, {})
        local = []
        for index, arg in enumerate(command):
            previous = command[index - 1] if index else ""
            if previous in ("-p", "--port") and arg.isdigit() and int(arg) in ports:
                arg = str(ports[int(arg)])
            else:
                arg = re.sub(
                    r"(--port|-p)([ =])(\d+)\b",
                    lambda m: f"{m[1]}{m[2]}{ports.get(int(m[3]), m[3])}",
                    arg,
                )
            local.append(self.text(arg))
        return local


@dataclass
class LocalTask:
    """One task the agent runs: its moto record's ARN, its container and process, and its log."""

    arn: str
    cluster: str
    definition: dict
    container: str
    command: list[str]
    environment: dict[str, str]
    limits: dict[str, float]
    process: subprocess.Popen
    log: Path
    credentials: dict[str, Any]
    token: str
    eni: dict[str, str]
    stop_deadline: float | None = None
    exit_code: int | None = None
    reported: bool = False

    @property
    def id(self) -> str:
        return self.arn.rsplit("/", 1)[-1]


def session_processes(session: int) -> list[int]:
    """Every process in ``session`` (field 6 of /proc/<pid>/stat): a container's processes."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == session:
            found.append(int(entry))
    return found


def kill_session(session: int) -> None:
    for pid in session_processes(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def exit_code(returncode: int) -> int:
    """The container's exit code as Docker and ECS report it: 128 + the signal that ended it."""
    return 128 - returncode if returncode < 0 else returncode


def container_environment(container: dict, override: dict, read_secret: Callable[[str], str]) -> dict[str, str]:
    """The environment ECS gives ``container``: its variables, its secrets (``valueFrom``: a
    secret's ARN, with ``:json-key::`` picking one key of a JSON secret), then the override's."""
    env = {item["name"]: item["value"] for item in container.get("environment", [])}
    for secret in container.get("secrets", []):
        parts = secret["valueFrom"].split(":")
        value = read_secret(":".join(parts[:7]))
        env[secret["name"]] = json.loads(value)[parts[7]] if len(parts) > 7 and parts[7] else value
    env |= {item["name"]: item["value"] for item in override.get("environment", [])}
    return env


def role_allows(iam, role_arn: str, action: str, resource: str) -> bool:
    """Whether an Allow statement of the role's inline or attached policies grants ``action`` on
    ``resource`` (``*`` and ``?`` as IAM matches them). The policies here have no Deny statements."""
    name = role_arn.rsplit("/", 1)[-1]
    documents = [
        iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
        for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]
    ]
    for attached in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
        version = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]["DefaultVersionId"]
        documents.append(
            iam.get_policy_version(PolicyArn=attached["PolicyArn"], VersionId=version)["PolicyVersion"]["Document"]
        )
    for document in documents:
        document = json.loads(document) if isinstance(document, str) else document
        for statement in document["Statement"]:
            actions = statement.get("Action", [])
            resources = statement.get("Resource", [])
            actions = [actions] if isinstance(actions, str) else actions
            resources = [resources] if isinstance(resources, str) else resources
            if statement.get("Effect") == "Allow" and any(fnmatch.fnmatchcase(action, a) for a in actions):
                if any(fnmatch.fnmatchcase(resource, r) for r in resources):
                    return True
    return False


class EcsAgent:
    """Runs the tasks of ``cluster`` in moto's ECS (see the module's docstring).
    ``aws(service, credentials=None)`` makes clients, with the rights of ECS itself (the test's
    administrator) unless given boto3's credential arguments (a role's). ``credentials(role)`` is
    a role's session as ECS gets it (AssumeRole as ecs-tasks.amazonaws.com: moto's STS judges
    only callers it knows, so the test assumes the roles before it enforces IAM). Each task's
    output goes to ``<directory>/<container>-<task id>.log``."""

    def __init__(
        self,
        aws: Callable[..., Any],
        cluster: str,
        machine: Machine,
        directory: Path,
        credentials: Callable[[str], dict[str, Any]],
    ):
        self.aws, self.cluster, self.machine, self.directory = aws, cluster, machine, directory
        self.role_credentials = credentials
        self.ecs = aws("ecs")
        self.tasks: dict[str, LocalTask] = {}
        self.errors: list[str] = []
        self._definitions: dict[str, dict] = {}
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.address = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._threads = [
            threading.Thread(target=self.httpd.serve_forever, daemon=True),
            threading.Thread(target=self._poll, daemon=True),
        ]

    def __enter__(self) -> EcsAgent:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._threads[1].join(timeout=60)
        with self._lock:
            for task in self.tasks.values():
                kill_session(task.process.pid)
                if task.process.poll() is None:
                    task.process.wait(timeout=30)
        self.httpd.shutdown()
        self.httpd.server_close()

    # The test's view ------------------------------------------------------------------------------

    def task(self, arn: str) -> LocalTask | None:
        with self._lock:
            return self.tasks.get(arn)

    def kill(self, arn: str) -> None:
        """SIGKILL to the task's main process, as when its container is lost (an OOM kill)."""
        task = self.task(arn)
        assert task is not None, f"the agent runs no task {arn}"
        os.kill(task.process.pid, signal.SIGKILL)

    def log(self, arn: str) -> str:
        task = self.task(arn)
        return task.log.read_text(errors="replace") if task else ""

    # Polling ------------------------------------------------------------------------------------

    def _poll(self) -> None:
        from botocore.exceptions import ConnectionError as Unreachable
        from botocore.exceptions import HTTPClientError

        while not self._stop.is_set():
            try:
                self._pass()
            except (Unreachable, HTTPClientError):  # moto busy: the next pass asks again
                pass
            except Exception as error:  # refused, or a bug here: the tests fail on it
                self.errors.append(f"{type(error).__name__}: {error}")
            self._stop.wait(0.5)

    def _pass(self) -> None:
        arns = [arn for page in self._pages() for arn in page]
        if not arns:
            return
        for start in range(0, len(arns), 100):
            for described in self.ecs.describe_tasks(cluster=self.cluster, tasks=arns[start : start + 100])["tasks"]:
                self._step(described)

    def _pages(self):
        token = None
        while True:
            page = self.ecs.list_tasks(cluster=self.cluster, **({"nextToken": token} if token else {}))
            yield page["taskArns"]
            token = page.get("nextToken")
            if not token:
                return

    def _step(self, described: dict) -> None:
        arn = described["taskArn"]
        task = self.task(arn)
        if task is None:
            if arn not in self._seen and described["lastStatus"] != "STOPPED":
                self._seen.add(arn)
                self._start(described)
            return
        if task.reported:
            return
        if described["desiredStatus"] == "STOPPED" and task.stop_deadline is None and task.process.poll() is None:
            task.stop_deadline = time.monotonic() + task.definition["containerDefinitions"][0].get(
                "stopTimeout", DEFAULT_STOP_TIMEOUT
            )
            os.kill(task.process.pid, signal.SIGTERM)
        if task.stop_deadline is not None and time.monotonic() > task.stop_deadline:
            kill_session(task.process.pid)
        if task.process.poll() is not None:
            self._stopped(task)

    def _stopped(self, task: LocalTask) -> None:
        kill_session(task.process.pid)  # the container ends with its main process
        task.exit_code = exit_code(task.process.returncode)
        self.ecs.submit_task_state_change(
            cluster=task.cluster,
            task=task.arn,
            status="STOPPED",
            reason="Essential container in task exited",
            containers=[
                {"containerName": task.container, "status": "STOPPED", "exitCode": task.exit_code,
                 "runtimeId": str(task.process.pid)}
            ],
        )  # fmt: skip
        task.reported = True

    # Starting a task ----------------------------------------------------------------------------

    def _definition(self, arn: str) -> dict:
        if arn not in self._definitions:
            self._definitions[arn] = self.ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
        return self._definitions[arn]

    def _start(self, described: dict) -> None:
        definition = self._definition(described["taskDefinitionArn"])
        [container] = definition["containerDefinitions"]
        overrides = described.get("overrides", {})
        override = next((o for o in overrides.get("containerOverrides", []) if o["name"] == container["name"]), {})
        token = secrets.token_hex(16)
        command = self.machine.command(container["name"], override.get("command") or container["command"])
        log = self.directory / f"{container['name']}-{described['taskArn'].rsplit('/', 1)[-1]}.log"
        try:
            environment = self._environment(definition, override, token)
            with open(log, "ab") as output:
                process = subprocess.Popen(
                    command, cwd=self.machine.workdir, env=environment, stdout=output, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
        except OSError as error:  # a secret it may not read, no such executable: it never starts
            self.errors.append(f"{described['taskArn']}: {error}")
            self.ecs.submit_task_state_change(
                cluster=described["clusterArn"], task=described["taskArn"], status="STOPPED", reason=str(error),
                containers=[{"containerName": container["name"], "status": "STOPPED", "reason": str(error)}],
            )  # fmt: skip
            return
        task = LocalTask(
            arn=described["taskArn"],
            cluster=described["clusterArn"],
            definition=definition,
            container=container["name"],
            command=command,
            environment=environment,
            limits={
                "CPU": int(overrides.get("cpu") or definition["cpu"]) / 1024,
                "Memory": int(overrides.get("memory") or definition["memory"]),
            },
            process=process,
            log=log,
            credentials=self._credentials(overrides.get("taskRoleArn") or definition.get("taskRoleArn")),
            token=token,
            eni={d["name"]: d["value"] for a in described["attachments"][:1] for d in a["details"]},
        )
        with self._lock:
            self.tasks[task.arn] = task
        self.ecs.submit_task_state_change(
            cluster=task.cluster,
            task=task.arn,
            status="RUNNING",
            containers=[{"containerName": task.container, "status": "RUNNING", "runtimeId": str(process.pid)}],
        )

    def _environment(self, definition: dict, override: dict, token: str) -> dict[str, str]:
        [container] = definition["containerDefinitions"]
        own = container_environment(container, override, lambda arn: self._secret(definition, arn))
        region = self.ecs.meta.region_name
        injected = {  # what ECS sets in every Fargate container
            "ECS_CONTAINER_METADATA_URI_V4": f"{self.address}/v4/{token}",
            "ECS_CONTAINER_METADATA_URI": f"{self.address}/v3/{token}",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{self.address}/v2/credentials/{token}",
            "AWS_EXECUTION_ENV": "AWS_ECS_FARGATE",
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
        }
        merged = self.machine.environment | own | injected
        return {name: self.machine.text(value) for name, value in merged.items()} | self.machine.overrides

    def _secret(self, definition: dict, arn: str) -> str:
        """A secret ECS reads for the container, if the task's execution role may read it. moto
        judges non-S3 actions against resource "*" only (a policy naming the secret's ARN is
        refused there), so the role's policies are evaluated here, as IAM would for the ARN."""
        role = definition.get("executionRoleArn")
        if not role or not role_allows(self.aws("iam"), role, "secretsmanager:GetSecretValue", arn):
            raise PermissionError(f"ResourceInitializationError: the execution role {role} may not read {arn}")
        return self.aws("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]

    def _credentials(self, role: str | None) -> dict[str, Any]:
        """What the container credentials endpoint answers for ``role`` (nothing without one)."""
        if not role:
            return {}
        credentials = self.role_credentials(role)
        return {
            "RoleArn": role,
            "AccessKeyId": credentials["AccessKeyId"],
            "SecretAccessKey": credentials["SecretAccessKey"],
            "Token": credentials["SessionToken"],
            "Expiration": credentials["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    # The endpoints a container asks ---------------------------------------------------------------

    def _by_token(self, token: str) -> LocalTask | None:
        with self._lock:
            return next((task for task in self.tasks.values() if task.token == token), None)

    def _metadata(self, task: LocalTask) -> tuple[dict, dict]:
        """Task metadata v4 for the task's container, and for the task."""
        definition = task.definition
        [container] = definition["containerDefinitions"]
        status = "STOPPED" if task.reported else "RUNNING"
        container_metadata = {
            "DockerId": f"{task.id}-{task.process.pid}",
            "Name": task.container,
            "DockerName": task.container,
            "Image": container["image"],
            "Labels": {
                "com.amazonaws.ecs.cluster": task.cluster,
                "com.amazonaws.ecs.container-name": task.container,
                "com.amazonaws.ecs.task-arn": task.arn,
                "com.amazonaws.ecs.task-definition-family": definition["family"],
                "com.amazonaws.ecs.task-definition-version": str(definition["revision"]),
            },
            "DesiredStatus": "RUNNING",
            "KnownStatus": status,
            "Limits": {"CPU": container.get("cpu", 0), "Memory": container.get("memory", 0)},
            "Type": "NORMAL",
            "LogDriver": container.get("logConfiguration", {}).get("logDriver"),
            "LogOptions": container.get("logConfiguration", {}).get("options"),
            "Networks": [{"NetworkMode": "awsvpc", "IPv4Addresses": [task.eni.get("privateIPv4Address")]}],
        }
        task_metadata = {
            "Cluster": task.cluster,
            "TaskARN": task.arn,
            "Family": definition["family"],
            "Revision": str(definition["revision"]),
            "DesiredStatus": "RUNNING",
            "KnownStatus": status,
            "LaunchType": "FARGATE",
            "Limits": task.limits,
            "Containers": [container_metadata],
        }
        return container_metadata, task_metadata

    def _answer(self, path: str) -> tuple[int, dict]:
        """The container's own paths hold its token (ECS's credential paths hold a random id)."""
        parts = path.split("?")[0].strip("/").split("/")
        if len(parts) == 3 and parts[:2] == ["v2", "credentials"]:
            task = self._by_token(parts[2])
            if task is None or not task.credentials:
                return 404, {"message": "no credentials for this container"}
            return 200, task.credentials
        if len(parts) in (2, 3) and parts[0] in ("v3", "v4"):
            task = self._by_token(parts[1])
            if task is None:
                return 404, {"message": "no such container"}
            container, whole = self._metadata(task)
            if len(parts) == 2:
                return 200, container
            if parts[2] == "task":
                return 200, whole
        return 404, {"message": "not found"}

    def _handler(self):
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                status, body = agent._answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler
