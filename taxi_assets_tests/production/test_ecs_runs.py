"""Runs that execute on ECS: the deployment of ``deploy/terraform`` in moto's server (IAM enforced),
every service and every run an ECS task that the test's agent (``taxi_assets_tests/ecs_agent.py``)
runs as a local process, on ``deploy/dagster-ecs.yaml``.

``test_ecs.py`` plays Terraform (its HCL reader and ``apply_terraform`` are used here); this module
then starts the services as their ECS services would (RunTask with the service's network), the
MLflow server among them, from its own task definition (its backend store in PostgreSQL, which
requires TLS as RDS's ``rds.force_ssl`` does; its artifacts in the bucket). Each container gets
its task role's credentials and no others; the run tasks are the ones ``EcsRunLauncher`` starts.

- A new trip file in the bucket is noticed by the sensor (the daemon), its retraining runs in its
  own task; that task is killed mid-run (SIGKILL to its container's process); the launcher's
  health check sees the STOPPED task (exit code 137), the run fails, and run retries re-execute
  it in a new task, to SUCCESS: values and MLflow artifacts in S3, MLflow's runs in PostgreSQL.
  The inference service, from its own task definition (its role, no database secret), serves the
  published decision and answers the course's request.
- Applied again with ``step_executor = "ecs"``, a retraining's steps each run in a task of their
  own, with the step's cpu and memory (``step_resources``), XGBoost on the cores its task has, and
  the inference service follows the new decision.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from taxi_assets.ml.hyperparameters import DEEPEST_XGBOOST
from taxi_assets.ml.value_files import load_value
from taxi_assets_tests.ecs_agent import EcsAgent, Machine
from taxi_assets_tests.helpers import COURSE_SHAPES, DATA_DIR, REPO_ROOT, TINY_BUDGET
from taxi_assets_tests.production.test_ecs import REGION, Terraform, apply_role_policies, apply_terraform
from taxi_assets_tests.production_stack import Postgres, sql
from taxi_assets_tests.servers import moto_api, moto_server_process, port_was_taken, unused_port
from taxi_assets_tests.stack import GraphQL, wait_for

pytestmark = pytest.mark.production

BIN = Path(sys.executable).parent
DEPLOY = REPO_ROOT / "deploy"
TERRAFORM_VARIABLES = {"image_tag": "0123456789abcdef", "certificate_arn": "-", "allowed_cidrs": []}
SERVICE_PORTS = {"mlflow": 5000, "code-location": 4000, "webserver": 3000, "inference": 8080}


# --- The deployment -------------------------------------------------------------------------------


class EcsDeployment:
    """deploy/terraform applied in moto (IAM enforced from the first service on), PostgreSQL as
    the RDS instance, and the services started as ECS tasks the agent runs (``start``); applied
    again with other variables by ``redeploy``. The retrainings' budgets are the test's own: the
    file ``budgets`` (TAXI_RETRAINING_RUN_CONFIG, read by the sensor at each tick) in every container."""

    def __init__(self, root: Path):
        self.root = root
        self.budgets = root / "retraining.yaml"
        write_budgets(self.budgets)
        self._exit = contextlib.ExitStack()
        self.admin = {"aws_access_key_id": "terraform", "aws_secret_access_key": "terraform"}
        self.ports: dict[str, int] = {}
        self.service_tasks: dict[str, str] = {}

    def __enter__(self) -> EcsDeployment:
        try:
            self._deploy()
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._exit.close()

    def _deploy(self) -> None:
        if not shutil.which("initdb") or not shutil.which("pg_ctl"):
            raise RuntimeError("PostgreSQL's initdb and pg_ctl must be on PATH for this test")
        self.postgres = Postgres(require_tls=True)
        self._exit.callback(self.postgres.close)
        self.pg = self.postgres.start()
        settings = {"MOTO_IAM_LOAD_MANAGED_POLICIES": "true"}
        self.endpoint = self._exit.enter_context(moto_server_process(self.root, settings))
        self.tf = Terraform(DEPLOY / "terraform", dict(TERRAFORM_VARIABLES))
        database = self._database_of_rds()
        self.policies = apply_terraform(self.tf, self.aws, database)
        self.cluster = self.tf.known["aws_ecs_cluster.main.arn"]
        self.bucket = self.tf.known["aws_s3_bucket.data.bucket"]
        self._register_services()
        # The task states are the agent's to report: moto moves none of them on by itself.
        moto_api(
            self.endpoint,
            "state-manager/set-transition",
            {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 10**9}},
        )
        sessions = self._task_role_sessions()
        self._enforce_iam()
        self.agent = self._exit.enter_context(
            EcsAgent(self.aws, self.cluster, self._machine(), self.root, lambda role: sessions[role])
        )

    def aws(self, service: str, credentials: dict | None = None):
        """A client as the test's administrator (Terraform's own credentials until IAM is
        enforced: moto takes any then), or with ``credentials`` (boto3's keyword arguments)."""
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION, **(credentials or self.admin))

    def _database_of_rds(self) -> dict:
        """The database user Terraform names, with a password and CREATEDB (as RDS's master
        user), owning the ``dagster`` database Terraform's ``db_name`` creates."""
        import psycopg2

        username = self.tf.attribute(self.tf.block("resource", "aws_db_instance", "main"), "username")
        password = secrets.token_hex(12)
        connection = psycopg2.connect(dbname="postgres", **self.pg)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE ROLE "{username}" LOGIN CREATEDB PASSWORD %s', (password,))
            cursor.execute(f'CREATE DATABASE dagster OWNER "{username}"')
        connection.close()
        return {"host": self.pg["host"], "port": self.pg["port"], "password": password}

    def _register_services(self) -> None:
        ecs = self.aws("ecs")
        self.definitions = {}
        for service in self.tf.local("services"):
            self.definitions[service] = ecs.register_task_definition(**self.tf.task_definition(service))[
                "taskDefinition"
            ]

    def _task_role_sessions(self) -> dict[str, dict]:
        """A session of every role ECS tasks may assume (their trust policy names ecs-tasks),
        taken as the service would: moto's STS cannot tell a service principal from a caller."""
        sts = self.aws("sts")
        roles = {
            self.tf.known[f"aws_iam_role.{block.labels[1]}.arn"]
            for block in self.tf.resources("aws_iam_role")
            if f"aws_iam_role.{block.labels[1]}.arn" in self.tf.known
        }
        return {role: sts.assume_role(RoleArn=role, RoleSessionName="ecs-tasks")["Credentials"] for role in roles}

    def _enforce_iam(self) -> None:
        iam = self.aws("iam")
        iam.create_user(UserName="test-admin")
        everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="test-admin", PolicyName="everything", PolicyDocument=json.dumps(everything))
        key = iam.create_access_key(UserName="test-admin")["AccessKey"]
        self.admin = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        moto_api(self.endpoint, "reset-auth", "0")

    def _machine(self) -> Machine:
        """The image and the VPC on this machine: DAGSTER_HOME's instance files, the working
        directory with workspace.yaml, Cloud Map's names and the services' ports on 127.0.0.1."""
        homes = {"/opt/dagster/ecs-home": DEPLOY / "dagster-ecs.yaml", "/opt/dagster/home": DEPLOY / "dagster.yaml"}
        replacements = {"0.0.0.0": "127.0.0.1"}
        for image_path, instance in homes.items():
            local = self.root / image_path.strip("/").replace("/", "-")
            local.mkdir()
            shutil.copy(instance, local / "dagster.yaml")
            replacements[image_path] = str(local)
        self.workdir = self.root / "app"
        self.workdir.mkdir()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("TAXI_", "DAGSTER_", "MLFLOW_", "AWS_", "PG"))}
        image = {"PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1", "DAGSTER_HOME": "/opt/dagster/home",
                 "TAXI_ENV": "production"}  # fmt: skip  # the Dockerfile's ENV
        overrides = {  # what differs on one machine: moto is AWS, the database is not on 5432
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "no-aws-credentials"),
            "AWS_CONFIG_FILE": str(self.root / "no-aws-config"),
            "PGPORT": str(self.pg["port"]),  # the MLflow service's `python -c` connects without a port
            "TAXI_RETRAINING_RUN_CONFIG": str(self.budgets),  # the test's budgets
        }
        return Machine(base | image, self.workdir, replacements, {}, overrides)

    # Services ------------------------------------------------------------------------------------

    def start(self, service: str, timeout: float = 240, same_port: bool = False) -> None:
        """What ``aws_ecs_service.service[service]`` does: one task of its definition, with the
        service's launch type and network; waits until it answers (again on another local port
        if its port was taken before it could bind it). ``same_port``: first try the port it had
        (a service's address stays when ECS replaces its task)."""
        name = self.tf.variables["name"]
        for attempt in range(5):
            port = SERVICE_PORTS.get(service)
            if port:
                self.ports[service] = self.ports[service] if same_port and attempt == 0 else unused_port()
                self.agent.machine.ports[service] = {port: self.ports[service]}
                self.agent.machine.replacements[f"{service}.{name}.internal:{port}"] = (
                    f"127.0.0.1:{self.ports[service]}"
                )
                self.agent.machine.replacements[f"{service}.{name}.internal"] = "127.0.0.1"
            if service == "code-location":
                self._workspace(self.ports[service])
            arn = self._run_service_task(service)
            started = wait_for(lambda arn=arn: self.agent.task(arn) or self._agent_failed(), 60, f"{service} started")
            deadline = time.monotonic() + timeout
            while not self._ready(service):
                if started.process.poll() is not None:
                    if port_was_taken(self.agent.log(arn)):
                        break  # another process has its port: another task on another port
                    pytest.fail(f"{service} exited with {started.process.returncode}:\n{self.agent.log(arn)[-4000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{service} was not ready within {timeout:.0f} s:\n{self.agent.log(arn)[-4000:]}")
                time.sleep(0.5)
            else:
                self.service_tasks[service] = arn
                return
        pytest.fail(f"{service}: every port tried was taken")

    def _agent_failed(self) -> None:
        if self.agent.errors:
            pytest.fail("the ECS agent failed:\n" + "\n".join(self.agent.errors[-5:]))

    def _workspace(self, port: int) -> None:
        """The image's workspace.yaml, with the code location's local port."""
        workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
        workspace["load_from"][0]["grpc_server"]["port"] = port
        (self.workdir / "workspace.yaml").write_text(yaml.safe_dump(workspace))

    def _run_service_task(self, service: str) -> str:
        block = self.tf.block("resource", "aws_ecs_service", "service")
        each = {"key": service, "value": self.tf.local("services")[service]}
        [network] = block.children("network_configuration")
        return self.aws("ecs").run_task(
            cluster=self.tf.attribute(block, "cluster", each),
            taskDefinition=self.definitions[service]["taskDefinitionArn"],
            launchType=self.tf.attribute(block, "launch_type", each),
            group=f"service:{service}",
            startedBy="ecs-svc/terraform",
            networkConfiguration={
                "awsvpcConfiguration": {
                    "subnets": self.tf.attribute(network, "subnets", each),
                    "securityGroups": self.tf.attribute(network, "security_groups", each),
                    "assignPublicIp": "ENABLED" if self.tf.attribute(network, "assign_public_ip", each) else "DISABLED",
                }
            },
        )["tasks"][0]["taskArn"]

    def _ready(self, service: str) -> bool:
        port = self.ports.get(service)
        if service == "daemon":
            return True
        if service == "code-location":
            from dagster._grpc.client import DagsterGrpcClient

            try:
                DagsterGrpcClient(port=port, host="127.0.0.1").list_repositories()
                return True
            except Exception:
                return False
        if service == "webserver":
            try:
                return GraphQL(f"http://127.0.0.1:{port}").location_loaded()
            except OSError:
                return False
        path = "/ping" if service == "inference" else f"{self.tf.local('mlflow_prefix')}/health"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                return response.status == 200
        except urllib.error.HTTPError:
            return service == "inference"  # listening: 503 until a decision is published
        except OSError:
            return False

    def start_all(self) -> None:
        for service in ("mlflow", "code-location", "webserver", "daemon"):
            self.start(service)

    def stop(self, service: str) -> None:
        """StopTask on the service's task, as ECS does when it replaces it; waits until the
        agent has stopped its container."""
        arn = self.service_tasks.pop(service)
        self.aws("ecs").stop_task(cluster=self.cluster, task=arn, reason="a new deployment")
        wait_for(lambda: self._last_status(arn) == "STOPPED", 120, f"{service}'s task to stop")

    def _last_status(self, arn: str) -> str:
        return self.aws("ecs").describe_tasks(cluster=self.cluster, tasks=[arn])["tasks"][0]["lastStatus"]

    def redeploy(self, variables: dict, services: tuple[str, ...] = ("code-location", "daemon")) -> None:
        """What ``terraform apply`` with other ``variables`` does here: the role policies they
        add, a new revision of every service's task definition, and ``services`` rolled onto it
        (the daemon stopped first: it must never run twice; the code location keeps its port)."""
        self.tf.variables |= variables
        apply_role_policies(self.tf, self.aws("iam"))
        self._register_services()
        for service in reversed(services):
            self.stop(service)
        port = self.ports.get("code-location")
        for service in services:
            self.start(service, same_port=True)
        if "code-location" in services and self.ports["code-location"] != port:  # the webserver's workspace
            self.stop("webserver")
            self.start("webserver", same_port=True)

    @property
    def graphql(self) -> GraphQL:
        return GraphQL(f"http://127.0.0.1:{self.ports['webserver']}")

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow']}{self.tf.local('mlflow_prefix')}"

    def put_trips(self, month: str) -> None:
        year, number = month.split("-")
        self.aws("s3").upload_file(
            str(DATA_DIR / year / f"{number}.parquet"), self.bucket, f"taxi/green/{year}/{number}.parquet"
        )

    def runs(self) -> dict[str, dict]:
        """Every run with its status, job and tags, from PostgreSQL."""
        found: dict[str, dict] = {}
        for run_id, status, job, key, value in sql(
            self.pg,
            "SELECT r.run_id, r.status, r.pipeline_name, t.key, t.value FROM runs r "
            "LEFT JOIN run_tags t ON t.run_id = r.run_id ORDER BY r.create_timestamp",
        ):
            found.setdefault(run_id, {"status": status, "job": job, "tags": {}})["tags"][key] = value
        return found

    def log(self, *services: str) -> str:
        return "".join(f"--- {s}\n{self.agent.log(self.service_tasks[s])[-4000:]}\n" for s in services)


def step_started(pg: dict, run_id: str, step_key: str) -> bool:
    return bool(
        sql(
            pg,
            "SELECT 1 FROM event_logs WHERE run_id = %s AND step_key = %s AND dagster_event_type = 'STEP_START'",
            run_id,
            step_key,
        )
    )


# --- The tests ------------------------------------------------------------------------------------

# XGBoost in the deepest corner of the space for 25 s: the attempt whose task is killed is still
# training then, however fast the machine (its retry searches as long).
LASTING_XGBOOST = {
    "max_evaluations": 1000,
    "timeout_seconds": 25,
    "start_from_known_good": False,
    "early_stopping_rounds": 1000,
    "fixed_params": DEEPEST_XGBOOST,
}
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """One deployment for the module's tests, in order: runs in their own tasks, then (redeployed)
    steps in their own tasks. Each test writes the retrainings' budgets (TAXI_RETRAINING_RUN_CONFIG,
    read by the sensor at every tick) before it puts a trip file in the bucket."""
    with EcsDeployment(tmp_path_factory.mktemp("ecs-runs")) as deployed:
        deployed.start_all()
        deployed.graphql.stop_schedule("daily_health_schedule")  # the tests count runs and tasks
        yield deployed
        assert not deployed.agent.errors, deployed.agent.errors


def write_budgets(path: Path, xgboost: dict | None = None) -> None:
    """The least a retraining can do (one trial each), XGBoost's config replaced if given."""
    config = TINY_BUDGET.to_config_dict()
    if xgboost:
        config["ops"]["xgboost_model"] = {"config": xgboost}
    path.write_text(yaml.safe_dump(config))


def runs_of(deployment: EcsDeployment, month: str, count: int = 1) -> dict[str, dict] | None:
    """The month's retraining runs once ``count`` of them have finished."""
    runs = {
        run_id: run
        for run_id, run in deployment.runs().items()
        if run["job"] == "retraining" and run["tags"].get("dagster/partition") == month
    }
    return runs if sum(run["status"] in FINISHED for run in runs.values()) >= count else None


def put_trips_once(deployment: EcsDeployment, month: str) -> None:
    """Put the month's file in the bucket unless it is there (a second upload is a new version)."""
    year, number = month.split("-")
    listed = deployment.aws("s3").list_objects_v2(Bucket=deployment.bucket, Prefix=f"taxi/green/{year}/{number}.")
    if not listed.get("KeyCount"):
        deployment.put_trips(month)


def first_event(pg: dict, run_id: str, event_type: str, like: str = "%") -> str | None:
    rows = sql(
        pg,
        "SELECT event FROM event_logs WHERE run_id = %s AND dagster_event_type = %s AND event LIKE %s ORDER BY id",
        run_id,
        event_type,
        like,
    )
    return rows[0][0] if rows else None


def materialization_metadata(pg: dict, run_id: str, asset: str) -> dict:
    from dagster._core.events.log import EventLogEntry
    from dagster._serdes import deserialize_value

    event = first_event(pg, run_id, "ASSET_MATERIALIZATION", f'%"{asset}"%')
    assert event, f"{run_id} materialized no {asset}"
    materialization = deserialize_value(event, EventLogEntry).asset_materialization
    assert materialization is not None
    return {key: value.value for key, value in materialization.metadata.items()}


def stopped_tasks(deployment: EcsDeployment, arns: list[str], wait: bool = True) -> dict[str, dict] | None:
    """The tasks (their tags as a dict), once all have stopped (``wait``; a run's status is final
    a moment before its process ends)."""
    ecs = deployment.aws("ecs")
    tasks = [
        task | {"tags": {tag["key"]: tag["value"] for tag in task.get("tags", [])}}
        for start in range(0, len(arns), 100)
        for task in ecs.describe_tasks(cluster=deployment.cluster, tasks=arns[start : start + 100], include=["TAGS"])[
            "tasks"
        ]
    ]
    done = not wait or all(task["lastStatus"] == "STOPPED" for task in tasks)
    return {task["taskArn"]: task for task in tasks} if done else None


def mlflow_store_runs(deployment: EcsDeployment) -> int:
    """Runs in the MLflow server's backend store: the ``mlflow`` database its task created."""
    import psycopg2

    connection = psycopg2.connect(dbname="mlflow", **deployment.pg)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM runs")
            return cursor.fetchone()[0]
    finally:
        connection.close()


# ../shared/README.md: the course's request, word for word, and the same trips with integer ids.
COURSE_REQUEST = {
    "inputs": [
        {"DOLocationID": "239", "PULocationID": "236", "trip_distance": 1.98},
        {"DOLocationID": "170", "PULocationID": "65", "trip_distance": 6.54},
    ]
}
COURSE_TRIPS = [
    {"PULocationID": 236, "DOLocationID": 239, "trip_distance": 1.98},
    {"PULocationID": 65, "DOLocationID": 170, "trip_distance": 6.54},
]


def inference_role_reads_only_the_serving_prefix(deployment: EcsDeployment, credentials: dict) -> None:
    """As the inference task's role (moto enforcing IAM): the database secret and every write to
    the bucket are refused; the published pointer reads."""
    from botocore.exceptions import ClientError

    role = {"aws_access_key_id": credentials["AccessKeyId"], "aws_secret_access_key": credentials["SecretAccessKey"],
            "aws_session_token": credentials["Token"]}  # fmt: skip
    secret = deployment.tf.known["aws_db_instance.main.master_user_secret[0].secret_arn"]
    s3, bucket = deployment.aws("s3", role), deployment.bucket
    refusals = {
        "the database secret": lambda: deployment.aws("secretsmanager", role).get_secret_value(SecretId=secret),
        "a write to the pointer": lambda: s3.put_object(
            Bucket=bucket, Key="taxi_assets/serving/current.json", Body=b"{}"
        ),
        "a write to the values": lambda: s3.put_object(Bucket=bucket, Key="taxi_assets/assets/x", Body=b"x"),
        "a read of the values": lambda: s3.get_object(Bucket=bucket, Key="taxi_assets/assets/production_model/2024-01"),
    }
    for what, call in refusals.items():
        with pytest.raises(ClientError) as refused:
            call()
        # moto's IAM check answers 403 before the service's own parser: the status is the refusal.
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403, (what, refused.value.response)
    assert s3.get_object(Bucket=bucket, Key="taxi_assets/serving/current.json")["Body"].read()


def served_answer(deployment: EcsDeployment, decision, decided_by: str) -> list[float]:
    """The inference service, started from its own task definition (its role, its environment,
    the API token its only secret), once it serves ``decision`` (the pointer the run that decided
    published): its answer to the course's request, checked against the decision's own model."""
    if "inference" not in deployment.service_tasks:
        deployment.start("inference")
    task = deployment.agent.task(deployment.service_tasks["inference"])
    assert task is not None
    assert task.credentials["RoleArn"] == deployment.tf.known["aws_iam_role.inference.arn"]
    assert not {"DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST", "MLFLOW_TRACKING_URI"} & set(task.environment)
    inference_role_reads_only_the_serving_prefix(deployment, task.credentials)
    url = f"http://127.0.0.1:{deployment.ports['inference']}"
    expected = {"name": decision.name, "partition": decision.model_partition, "version": decision.model_version,
                "run_id": decided_by}  # fmt: skip

    def serving():
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
                return json.load(response)["model"] == expected
        except OSError:  # 503 before the first decision
            return False

    wait_for(serving, 120, f"the inference service to serve {expected}")
    token = deployment.aws("secretsmanager").get_secret_value(
        SecretId=deployment.tf.known["aws_secretsmanager_secret.api_token.arn"]
    )["SecretString"]
    request = urllib.request.Request(
        f"{url}/predict",
        data=json.dumps(COURSE_REQUEST).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    assert answer["model"] == expected
    # /predict rounds to 4 decimals; the decision's own model, in this process, on the integer ids.
    assert answer["predictions"] == [round(float(minutes), 4) for minutes in decision.predictor.predict(COURSE_TRIPS)]
    assert all(0 < minutes < 120 for minutes in answer["predictions"])
    return answer["predictions"]


def test_a_new_file_retrains_in_its_own_task_and_a_killed_task_is_retried(deployment):
    started = time.monotonic()
    pg, agent, ecs = deployment.pg, deployment.agent, deployment.aws("ecs")
    write_budgets(deployment.budgets, LASTING_XGBOOST)

    # 1. The sensor prepares the first month in the bucket (nothing before it to train on).
    deployment.put_trips("2023-12")
    [(prepare_run, prepare)] = wait_for(lambda: runs_of(deployment, "2023-12"), 420, "2023-12's run").items()
    assert prepare["status"] == "SUCCESS", deployment.log("daemon") + agent.log(prepare["tags"]["ecs/task_arn"])

    # 2. A new file: its retraining starts in a task of its own, which is killed while XGBoost trains.
    deployment.put_trips("2024-01")

    def training():
        [*runs] = (runs_of(deployment, "2024-01", count=0) or {}).items()
        if len(runs) == 1 and "ecs/task_arn" in runs[0][1]["tags"] and step_started(pg, runs[0][0], "xgboost_model"):
            return runs[0]
        return None

    killed_run, killed = wait_for(training, 600, "the 2024-01 retraining's XGBoost step")
    killed_task = killed["tags"]["ecs/task_arn"]
    agent.kill(killed_task)

    # 3. The launcher's health check sees the STOPPED task: the run fails, run retries re-execute it.
    retried = wait_for(lambda: runs_of(deployment, "2024-01", count=2), 900, "the killed run's retry")
    runs = deployment.runs()
    assert runs[killed_run]["status"] == "FAILURE", runs[killed_run]
    assert first_event(pg, killed_run, "PIPELINE_FAILURE", "%exit code 137%"), "the failure names the killed task"
    [retry_run] = [run_id for run_id in retried if run_id != killed_run]
    retry = runs[retry_run]
    assert retry["tags"]["dagster/parent_run_id"] == killed_run
    assert retry["status"] == "SUCCESS", deployment.log("daemon") + agent.log(retry["tags"]["ecs/task_arn"])

    # In moto: each run in a task of its own, of the launcher's run task definition and the
    # Dagster role, each STOPPED with its container's exit code.
    arns = {run_id: runs[run_id]["tags"]["ecs/task_arn"] for run_id in (prepare_run, killed_run, retry_run)}
    assert len(set(arns.values())) == 3
    tasks = wait_for(lambda: stopped_tasks(deployment, [*arns.values()]), 120, "the runs' tasks to stop")
    exit_codes = {run_id: tasks[arn]["containers"][0]["exitCode"] for run_id, arn in arns.items()}
    assert exit_codes == {prepare_run: 0, killed_run: 137, retry_run: 0}
    [definition] = {tasks[arn]["taskDefinitionArn"] for arn in arns.values()}
    run_definition = ecs.describe_task_definition(taskDefinition=definition)["taskDefinition"]
    assert run_definition["family"].startswith("run_")
    assert run_definition["taskRoleArn"] == deployment.tf.known["aws_iam_role.dagster.arn"]
    assert agent.task(arns[retry_run]).credentials["RoleArn"] == run_definition["taskRoleArn"]

    # The values in the bucket: the month's decision and its training set, the course's shapes.
    s3 = deployment.aws("s3")

    def value(asset: str, month: str):
        body = s3.get_object(Bucket=deployment.bucket, Key=f"taxi_assets/assets/{asset}/{month}")["Body"].read()
        return load_value(body, asset)

    assert value("training_set", "2024-01").shapes()["X_train"][0] > 0
    decision = value("production_model", "2024-01")

    # MLflow: the retry's models and decision tracked on the server (PostgreSQL), artifacts in S3.
    import mlflow

    client = mlflow.MlflowClient(deployment.mlflow_uri, registry_uri=deployment.mlflow_uri)
    experiment = client.get_experiment_by_name("taxi-duration")
    assert experiment is not None
    tracked = client.search_runs([experiment.experiment_id], f"tags.`dagster.run_id` = '{retry_run}'")
    parents = sorted(
        run.data.tags.get("model", run.data.tags["dagster.asset"]) for run in tracked if "trial" not in run.data.tags
    )
    assert parents == ["LinearRegression", "production_model", "xgboost"], parents
    version = client.get_model_version_by_alias(f"taxi-duration-{decision.name}", "champion")
    assert version.tags["dagster.run_id"] == retry_run
    assert s3.list_objects_v2(Bucket=deployment.bucket, Prefix="mlflow/").get("KeyCount", 0) > 0
    assert mlflow_store_runs(deployment) >= len(tracked)

    # The inference service serves the decision and answers the course's request.
    served_answer(deployment, decision, retry_run)
    print(f"runs in their own ECS tasks, one killed and retried: {time.monotonic() - started:.0f} s")


# The steps' sizes in the step-per-task test: XGBoost on one vCPU, so that its threads follow its
# task (1) and not this machine's cores (2); data preparation bigger than load_models.
STEP_RESOURCES = {
    "data": {"cpu": "1024", "memory": "4096"},
    "xgboost": {"cpu": "1024", "memory": "8192"},
    "default": {"cpu": "512", "memory": "2048"},
}
DATA_STEPS = {"raw_trips", "cleaned_trips", "training_set", "cleaned_trips_invariants", "training_set_build_checks"}


def test_a_retraining_runs_each_step_in_a_task_of_its_size(deployment):
    started = time.monotonic()
    pg, agent, ecs = deployment.pg, deployment.agent, deployment.aws("ecs")
    write_budgets(deployment.budgets)
    # terraform apply with the step executor: the runs' role may now start its steps' tasks.
    iam, runs_role = deployment.aws("iam"), deployment.tf.known["aws_iam_role.dagster.id"]
    assert "dagster_steps" not in iam.list_role_policies(RoleName=runs_role)["PolicyNames"]
    deployment.redeploy({"step_executor": "ecs", "step_resources": STEP_RESOURCES})
    assert "dagster_steps" in iam.list_role_policies(RoleName=runs_role)["PolicyNames"]

    # A new month (after the month before it, which the previous test may have put already).
    put_trips_once(deployment, "2024-01")
    deployment.put_trips("2024-02")
    [(run_id, run)] = wait_for(lambda: runs_of(deployment, "2024-02"), 900, "2024-02's retraining").items()
    run_task = run["tags"]["ecs/task_arn"]
    assert run["status"] == "SUCCESS", deployment.log("daemon") + agent.log(run_task)[-6000:]

    # In moto: the run's own task, and one task per step it executed, sized for the step.
    from dagster_aws.ecs.utils import sanitize_tag

    steps = {
        step
        for (step,) in sql(
            pg,
            "SELECT DISTINCT step_key FROM event_logs WHERE run_id = %s AND dagster_event_type = 'STEP_START'",
            run_id,
        )
    }
    assert {"raw_trips", "training_set", "xgboost_model", "sklearn_models.load_models", "production_model"} <= steps
    listed = [
        arn for page in ecs.get_paginator("list_tasks").paginate(cluster=deployment.cluster) for arn in page["taskArns"]
    ]
    mine = [
        arn
        for arn, task in (stopped_tasks(deployment, listed, wait=False) or {}).items()
        if task["tags"].get("dagster/run_id") == run_id
    ]
    tasks = list(wait_for(lambda: stopped_tasks(deployment, mine), 120, "the run's tasks to stop").values())
    [launched] = [task for task in tasks if task["taskArn"] == run_task]
    untagged = [task for task in tasks if task is not launched and "dagster/step-key" not in task["tags"]]
    assert not untagged, (
        f"tasks of run {run_id} that are neither its run task nor a step's: "
        + json.dumps(
            [
                {key: task.get(key) for key in ("taskArn", "tags", "overrides", "startedBy", "createdAt")}
                for task in untagged
            ],
            default=str,
        )
        + deployment.log("daemon")[-8000:]
    )
    step_tasks = {task["tags"]["dagster/step-key"]: task for task in tasks if task is not launched}
    assert len(step_tasks) == len(tasks) - 1 == len(steps)  # one task per step, none twice
    assert set(step_tasks) == {sanitize_tag(step) for step in steps}
    for step in steps:
        task = step_tasks[sanitize_tag(step)]
        size = STEP_RESOURCES["xgboost" if step == "xgboost_model" else "data" if step in DATA_STEPS else "default"]
        assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == (size["cpu"], size["memory"]), step
        [override] = task["overrides"]["containerOverrides"]
        assert override["command"][:3] == ["dagster", "api", "execute_step"], step
        assert task["taskDefinitionArn"] == launched["taskDefinitionArn"]  # the run task's definition
        assert task["containers"][0]["exitCode"] == 0, step
    # XGBoost used the one vCPU of its task (this machine has more cores than that).
    assert materialization_metadata(pg, run_id, "xgboost_model")["threads"] == 1
    assert agent.task(step_tasks["xgboost_model"]["taskArn"]).limits == {"CPU": 1.0, "Memory": 8192}

    # The month's values in the bucket and its models in MLflow, as for a run in one task.
    s3 = deployment.aws("s3")

    def value(asset: str):
        body = s3.get_object(Bucket=deployment.bucket, Key=f"taxi_assets/assets/{asset}/2024-02")["Body"].read()
        return load_value(body, asset)

    shapes = value("training_set").shapes()  # built in its own task: the course's matrices
    assert {name: shapes[name] for name in COURSE_SHAPES} == COURSE_SHAPES
    decision = value("production_model")
    import mlflow

    client = mlflow.MlflowClient(deployment.mlflow_uri, registry_uri=deployment.mlflow_uri)
    experiment = client.get_experiment_by_name("taxi-duration")
    assert experiment is not None
    tracked = client.search_runs([experiment.experiment_id], f"tags.`dagster.run_id` = '{run_id}'")
    assert {"production_model", "xgboost"} <= {
        run.data.tags.get("model", run.data.tags["dagster.asset"]) for run in tracked
    }
    assert decision.decided_for == "2024-02"
    served_answer(deployment, decision, run_id)  # the inference service follows the new decision
    print(f"a retraining's {len(steps)} steps in their own ECS tasks: {time.monotonic() - started:.0f} s")
