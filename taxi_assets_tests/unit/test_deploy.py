"""The deployment files and the production switch (the running stack is in test_production.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
from urllib.parse import urlparse

import dagster as dg
import pytest
import yaml

from taxi_assets.definitions import build_defs
from taxi_assets.lib.settings import ProductionConfigError
from taxi_assets.lib.sources import S3TripSource
from taxi_assets.lib.tracking import MlflowTracking
from taxi_assets_tests.helpers import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
INSTANCE_ENV = {
    "DAGSTER_PG_HOST": "db.internal",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "from-the-environment",
    "TAXI_S3_BUCKET": "assets",
    "DAGSTER_MAX_CONCURRENT_RUNS": "3",
    "DAGSTER_PG_PASSWORD_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:db:password::",
}
PRODUCTION_ENV = {
    "TAXI_S3_BUCKET": "assets",
    "TAXI_DATA_S3_BUCKET": "trips",
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
}


@pytest.fixture
def production(monkeypatch):
    for name in ("TAXI_DATA_DIR", "AWS_ENDPOINT_URL", *PRODUCTION_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TAXI_ENV", "production")
    return monkeypatch


def test_production_needs_its_settings(production):
    # Dagster wraps what a defs module raises; the message keeps ours, naming every setting.
    with pytest.raises(Exception) as error:
        build_defs()
    cause = error.value
    while cause is not None and not isinstance(cause, ProductionConfigError):
        cause = cause.__cause__ or cause.__context__
    assert isinstance(cause, ProductionConfigError), error.value
    for name in PRODUCTION_ENV:
        assert name in str(cause)


def test_one_variable_switches_every_resource(production, tmp_path):
    from taxi_assets.lib.io_managers import S3ValueIOManager

    for name, value in PRODUCTION_ENV.items():
        production.setenv(name, value)
    production.setenv("TAXI_DATA_DIR", str(tmp_path))  # ignored in production: trips come from S3
    resources = build_defs().resources
    assert isinstance(resources["io_manager"], S3ValueIOManager)
    assert isinstance(resources["trip_source"], S3TripSource)
    assert isinstance(resources["mlflow"], MlflowTracking)
    with dg.build_resources({key: resources[key] for key in ("io_manager", "trip_source", "mlflow")}) as built:
        assert (built.io_manager.s3_bucket, built.io_manager.s3_prefix) == ("assets", "taxi_assets/assets")
        assert built.trip_source.bucket == "trips"
    # Locally, the same call gives the local resources.
    production.setenv("TAXI_ENV", "local")
    assert type(build_defs().resources["io_manager"]).__name__ == "LocalValueIOManager"


@pytest.mark.parametrize("name", ["dagster.yaml", "dagster-ecs.yaml"])
def test_instance_configs_validate(monkeypatch, tmp_path, name):
    from dagster._config import process_config
    from dagster._core.instance.ref import InstanceRef

    for key, value in INSTANCE_ENV.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "dagster.yaml").write_text((DEPLOY / name).read_text())
    ref = InstanceRef.from_dir(str(tmp_path))
    assert ref.storage_data.class_name == "DagsterPostgresStorage"
    assert ref.run_coordinator_data.class_name == "QueuedRunCoordinator"
    assert ref.compute_logs_data.class_name == "S3ComputeLogManager"
    # Every configurable class's own schema accepts its section, env references resolved.
    for data in filter(
        None, (ref.storage_data, ref.run_coordinator_data, ref.compute_logs_data, ref.run_launcher_data)
    ):
        module = __import__(data.module_name, fromlist=[data.class_name])
        config_class = getattr(module, data.class_name)
        result = process_config(config_class.config_type(), yaml.safe_load(data.config_yaml))
        assert result.success, (name, data.class_name, result.errors)
    if name == "dagster-ecs.yaml":
        assert ref.run_launcher_data.class_name == "EcsRunLauncher"
    text = (DEPLOY / name).read_text()
    assert "from-the-environment" not in text and not re.search(r"password:\s*[^\s{]", text.replace("password:\n", ""))


def test_compose_stack_is_complete_and_keeps_secrets_out():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "code-location", "webserver", "daemon", "mlflow", "inference"} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    secrets = re.findall(
        r"(PASSWORD|TOKEN|SECRET_ACCESS_KEY)\s*:\s*(\S+)", (DEPLOY / "docker-compose.yaml").read_text()
    )
    assert secrets and all(value.startswith("${") for _, value in secrets), secrets
    assert "command" in services["daemon"] and services["daemon"]["command"][:2] == ["dagster-daemon", "run"]


def test_compose_restarts_every_long_running_service():
    """The daemon, the servers and what they stand on come back after a crash or a reboot; the
    one-shot bucket setup does not loop."""
    services = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())["services"]
    one_shot = {name for name, service in services.items() if service.get("restart") == "no"}
    assert one_shot == {"buckets"}, one_shot
    for name in ("postgres", "minio", "mlflow", "code-location", "webserver", "daemon", "inference"):
        assert services[name].get("restart") == "unless-stopped", name


def test_dockerfile_basics():
    text = (REPO_ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.M)
    pythons = [base for base in bases if not base.startswith("ghcr.io/astral-sh/uv:")]
    assert pythons and all(re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base) for base in pythons)
    assert re.search(r"^USER 10001:10001$", text, re.M) and "HEALTHCHECK" in text
    assert not re.search(r"(?i)(password|secret|token)\s*=", text)


def test_every_install_path_uses_the_lock_and_one_uv():
    """The README's commands, .ci/run and the Dockerfile install from uv.lock, with one uv version."""
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    [image_uv] = re.findall(r"^FROM ghcr\.io/astral-sh/uv:(\S+) AS uv$", dockerfile, re.M)
    pinned = set(re.findall(r"pip install (?:--quiet )?uv==(\S+)", readme + ci))
    assert pinned == {image_uv}, (pinned, image_uv)
    assert "COPY pyproject.toml uv.lock" in dockerfile
    assert re.findall(r"RUN uv sync (--locked [^\n]*)", dockerfile) == [
        "--locked --no-install-project --extra deploy",
        "--locked --extra deploy",
    ]
    assert "pip install -e" not in readme + ci + dockerfile
    from taxi_assets_tests.readme_commands import setup_commands

    commands = setup_commands(readme)
    assert sorted(commands) == [1, 2] and all("uv sync --locked" in commands[n] for n in (1, 2))
    assert commands[2] in ci  # the test command, word for word
    assert "uv lock --check" in ci
    assert (REPO_ROOT / "uv.lock").is_file()


def test_experiment_created_concurrently_is_not_an_error(tmp_path, monkeypatch):
    # Two step processes against one tracking server: both see no experiment, one creates it,
    # the other's create fails with RESOURCE_ALREADY_EXISTS (seen with the PostgreSQL-backed
    # server in test_production). That must not fail the step.
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(uri).create_experiment("taxi-duration")
    monkeypatch.setattr(mlflow.MlflowClient, "get_experiment_by_name", lambda self, name: None)
    with dg.build_resources({"mlflow": MlflowTracking(tracking_uri=uri)}) as resources:
        resources.mlflow._activate()
    monkeypatch.undo()
    assert len(mlflow.MlflowClient(uri).search_experiments(filter_string="name = 'taxi-duration'")) == 1


def test_each_instance_tracks_in_its_own_store_within_one_process(tmp_path, monkeypatch):
    # MLflow's set_tracking_uri writes MLFLOW_TRACKING_URI into the environment; the resource
    # reads that variable as the user's choice. Two instances used one after the other in one
    # process (a notebook, a test session) must each get their own default store.
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    stores = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / name)) as instance:
            with dg.build_resources({"mlflow": MlflowTracking()}, instance=instance) as resources:
                resources.mlflow._activate()
                stores.append(resources.mlflow.uri)
                assert mlflow.get_registry_uri() == resources.mlflow.uri
    assert stores[0] != stores[1] and "first" in stores[0] and "second" in stores[1]
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ


def _ordered(tf, block, kind: str = "action") -> list:
    return sorted(block.children(kind), key=lambda action: tf.attribute(action, "order", default=0))


def _login_settings(tf, action) -> dict:
    assert tf.attribute(action, "type") == "authenticate-oidc"
    [settings] = action.children("authenticate_oidc")
    return {name: tf.attribute(settings, name) for name in settings.attributes}


def test_the_load_balancer_sends_every_served_path_to_the_inference_service_and_the_rest_through_a_login():
    """The listener's rules against the server's own route table (ROUTES), not a second list: every
    path it serves reaches it without the UI's login (it checks its bearer token), nothing else
    does; the MLflow UI's prefix goes to MLflow through the very login of the Dagster UI, and
    everything else through it to the Dagster webserver."""
    from taxi_assets.apps.server import ROUTES

    tf = _terraform()
    listener = tf.block("resource", "aws_lb_listener", "https")
    login, forward = _ordered(tf, listener, "default_action")
    assert (tf.attribute(forward, "type"), tf.attribute(forward, "target_group_arn")) == ("forward", "webserver")
    given = _login_settings(tf, login)
    for name in ("issuer", "authorization_endpoint", "token_endpoint", "user_info_endpoint", "client_id"):
        assert given[name] == OIDC[f"oidc_{name}"], name
    assert given["client_secret"] == "read from Secrets Manager"
    assert given["on_unauthenticated_request"] == "authenticate"
    secret = tf.block("data", "aws_secretsmanager_secret_version", "oidc_client_secret")
    assert tf.attribute(secret, "secret_id") == OIDC["oidc_client_secret_arn"]

    paths: dict[str, list[str]] = {"inference": [], "mlflow": []}
    priorities = []
    for rule in tf.resources("aws_lb_listener_rule"):
        assert tf.attribute(rule, "listener_arn") == "listener"
        priorities.append(tf.attribute(rule, "priority"))
        *before, last = _ordered(tf, rule)
        assert tf.attribute(last, "type") == "forward"
        target = tf.attribute(last, "target_group_arn")
        values = []
        for condition in rule.children("condition"):
            [pattern] = condition.children("path_pattern")
            values += tf.attribute(pattern, "values")
            assert len(tf.attribute(pattern, "values")) <= 5, (
                "an ALB rule takes at most five condition values: add a rule"
            )
        if target == "inference":  # a plain forward: no login in front of the API
            assert before == [] and not any(wildcard in value for value in values for wildcard in "*?"), values
        else:  # MLflow: the Dagster UI's login, setting for setting
            [mlflow_login] = before
            assert target == "mlflow" and _login_settings(tf, mlflow_login) == given
        paths[target] += values
    assert sorted(paths["inference"]) == sorted(ROUTES)
    prefix = _mlflow_options(tf)["static-prefix"]
    assert sorted(paths["mlflow"]) == [prefix, f"{prefix}/*"]
    assert not any(route.startswith(prefix) for route in ROUTES)
    assert len(set(priorities)) == len(priorities)
    # No secret has a default: nothing secret lives in the repository.
    variables = [block for block in tf.blocks if block.type == "variable" and "secret" in block.labels[0]]
    assert variables and all("default" not in block.attributes for block in variables)


def _mlflow_options(tf) -> dict[str, str]:
    """The MLflow server's command-line options, as its task definition gives them."""
    [script] = _container(tf, "mlflow")["command"][2:]
    server = script[script.index("mlflow server") :]
    return {name: value.strip("'\"") for name, value in re.findall(r"--([a-z-]+)[ =]('[^']*'|\"[^\"]*\"|\S+)", server)}


@pytest.mark.parametrize(
    "public_hostname, browser_host",
    [("taxi.example.com", "taxi.example.com"), ("", "taxi-1234567890.us-east-1.elb.amazonaws.com")],
)
def test_mlflow_serves_under_the_routed_prefix_and_answers_its_clients_and_the_browser_only(
    monkeypatch, public_hostname, browser_host
):
    """The server's --static-prefix is the path the load balancer routes, the one its health check
    asks and the one the runs track at; MLflow's own host and origin checks (its security
    middleware, asked here) let the runs in by the internal name and the UI by the public one."""
    from mlflow.server.handlers import STATIC_PREFIX_ENV_VAR
    from mlflow.server.security_utils import is_allowed_host_header, is_health_endpoint, should_block_cors_request

    tf = _terraform({"public_hostname": public_hostname})
    tf.known["aws_lb_target_group.mlflow.arn"] = "mlflow"
    options = _mlflow_options(tf)
    prefix = options["static-prefix"]
    trackers = {_environment(tf, service)["MLFLOW_TRACKING_URI"] for service in ("code-location", "daemon")}
    [tracking] = trackers  # the runs copy the daemon's environment
    tracking = urlparse(tracking)
    assert tracking.path == prefix and tracking.port == int(options["port"])

    hosts = options["allowed-hosts"].split(",")
    assert is_allowed_host_header(hosts, tracking.netloc)
    assert is_allowed_host_header(hosts, browser_host)
    assert not is_allowed_host_header(hosts, "attacker.example.com")
    origins = options["cors-allowed-origins"].split(",")
    assert not should_block_cors_request(f"https://{browser_host}", "POST", origins)
    assert should_block_cors_request("https://attacker.example.com", "POST", origins)

    group = tf.block("resource", "aws_lb_target_group", "mlflow")
    [check] = group.children("health_check")
    monkeypatch.setenv(STATIC_PREFIX_ENV_VAR, prefix)
    # The load balancer asks by the task's address: the path must exist and skip the host check.
    assert tf.attribute(check, "path") == f"{prefix}/health" and is_health_endpoint(tf.attribute(check, "path"))
    assert tf.attribute(group, "port") == int(options["port"]) == tf.local("services")["mlflow"]["port"]
    # The MLflow service registers its tasks with that target group.
    service = tf.block("resource", "aws_ecs_service", "service")
    [dynamic] = [block for block in service.children("dynamic") if block.labels == ("load_balancer",)]
    each = {"key": "mlflow", "value": tf.local("services")["mlflow"]}
    assert tf.attribute(dynamic, "for_each", each) == ["mlflow"]
    if public_hostname:
        alerts = _environment(tf, "code-location")["TAXI_DAGSTER_URL"]
        assert alerts == f"https://{public_hostname}"
    else:
        assert "TAXI_DAGSTER_URL" not in _environment(tf, "code-location")


# --- The Terraform, evaluated: who gets which secret, setting and permission ---------------------

ACCOUNT = "123456789012"
OIDC = {
    "oidc_issuer": "https://idp.example.com",
    "oidc_authorization_endpoint": "https://idp.example.com/authorize",
    "oidc_token_endpoint": "https://idp.example.com/token",
    "oidc_user_info_endpoint": "https://idp.example.com/userinfo",
    "oidc_client_id": "dagster-ui",
    "oidc_client_secret_arn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:oidc",
}
SERVICES = ("code-location", "webserver", "daemon", "mlflow", "inference")
ROLES = ("dagster", "code_location", "webserver", "daemon", "mlflow", "inference", "execution", "rds_monitoring")


def _terraform(variables: dict | None = None):
    """deploy/terraform as `terraform apply` would see it, with stand-ins for what only the apply
    knows (ARNs, the database's address)."""
    from taxi_assets_tests.production.test_ecs import Terraform  # the HCL reader the ECS test uses

    base = {"certificate_arn": "-", "allowed_cidrs": [], "image_tag": "t"} | OIDC
    tf = Terraform(DEPLOY / "terraform", base | (variables or {}))
    tf.known |= {
        "data.aws_caller_identity.current.account_id": ACCOUNT,
        "data.aws_partition.current.partition": "aws",
        "aws_ecr_repository.app.repository_url": f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/taxi-assets",
        "aws_db_instance.main.address": "db.internal",
        "aws_db_instance.main.port": 5432,
        "aws_db_instance.main.master_user_secret[0].secret_arn": "secret:rds",
        "aws_secretsmanager_secret.api_token.arn": "secret:api-token",
        "aws_secretsmanager_secret.smtp_password.arn": "secret:smtp",
        "aws_s3_bucket.data.bucket": "data",
        "aws_s3_bucket.data.arn": "arn:aws:s3:::data",
        "aws_kms_key.main.arn": "key:main",
        "aws_ecs_cluster.main.arn": f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/taxi-assets",
        "aws_ecs_cluster.main.name": "taxi-assets",
        "aws_lb_listener.https.arn": "listener",
        "aws_lb_target_group.inference.arn": "inference",
        "aws_lb_target_group.webserver.arn": "webserver",
        "aws_lb_target_group.mlflow.arn": "mlflow",
        "data.aws_secretsmanager_secret_version.oidc_client_secret.secret_string": "read from Secrets Manager",
    }
    tf.known |= {f"aws_iam_role.{role}.{attr}": f"role:{role}" for role in ROLES for attr in ("arn", "id", "name")}
    return tf


def _container(tf, service: str) -> dict:
    [container] = tf.task_definition(service)["containerDefinitions"]
    return container


def _environment(tf, service: str) -> dict[str, str]:
    return {item["name"]: item["value"] for item in _container(tf, service)["environment"]}


def _secrets(tf, service: str) -> dict[str, str]:
    return {item["name"]: item["valueFrom"] for item in _container(tf, service)["secrets"]}


def _statements(tf, document: str) -> list[dict]:
    return json.loads(tf.policy_document(document))["Statement"]


def _policies_of(tf, role: str) -> tuple[list[str], list[str]]:
    """The inline policy documents and the managed policies attached to ``aws_iam_role.<role>``."""
    names = [block.labels[1] for block in tf.blocks if block.labels[:1] == ("aws_iam_policy_document",)]
    rendered = {tf.policy_document(name): name for name in names}
    documents = [
        rendered[tf.attribute(block, "policy")]
        for block in tf.resources("aws_iam_role_policy")
        if tf.attribute(block, "role") == f"role:{role}"
    ]
    attached = [
        tf.attribute(block, "policy_arn")
        for block in tf.resources("aws_iam_role_policy_attachment")
        if tf.attribute(block, "role") == f"role:{role}"
    ]
    return documents, attached


def test_the_inference_task_holds_only_its_token_and_reads_only_the_serving_prefix():
    """The public service: no database secret, no Dagster or MLflow setting; its role may read the
    serving pointer's prefix of the values bucket (and decrypt it through S3), nothing else."""
    tf = _terraform()
    definition = tf.task_definition("inference")
    assert definition["taskRoleArn"] == "role:inference"
    assert _secrets(tf, "inference") == {"TAXI_API_TOKEN": "secret:api-token"}
    environment = _environment(tf, "inference")
    assert set(environment) == {"TAXI_ENV", "TAXI_S3_BUCKET", "TAXI_SERVING_PREFIX", "AWS_REGION"}, environment
    assert environment["TAXI_ENV"] == "production" and environment["TAXI_S3_BUCKET"] == "data"
    prefix = environment["TAXI_SERVING_PREFIX"]
    assert prefix == "taxi_assets/serving"  # the default of taxi_assets/lib/serving_pointer.py

    # Its role: one inline policy, nothing attached.
    documents, attached = _policies_of(tf, "inference")
    assert documents == ["inference"] and attached == []
    allowed = {}
    for statement in _statements(tf, "inference"):
        assert statement["Effect"] == "Allow"
        for action in statement["Action"]:
            allowed[action] = statement
    assert set(allowed) == {"s3:GetObject", "s3:ListBucket", "kms:Decrypt"}, sorted(allowed)
    assert allowed["s3:GetObject"]["Resource"] == [f"arn:aws:s3:::data/{prefix}/*"]
    assert "Condition" not in allowed["s3:GetObject"]
    assert allowed["s3:ListBucket"]["Resource"] == ["arn:aws:s3:::data"]
    assert allowed["s3:ListBucket"]["Condition"] == {"StringLike": {"s3:prefix": [f"{prefix}/*"]}}
    assert allowed["kms:Decrypt"]["Resource"] == ["key:main"]
    assert allowed["kms:Decrypt"]["Condition"] == {"StringEquals": {"kms:ViaService": ["s3.us-east-1.amazonaws.com"]}}

    # Locally, too: the compose file's inference server gets no database or MLflow setting.
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())["services"]["inference"]
    assert not any(name.startswith(("DAGSTER_", "MLFLOW_")) for name in compose["environment"]), compose
    assert "code-location" not in compose.get("depends_on", {})


def _instance_variables() -> set[str]:
    """The variables deploy/dagster-ecs.yaml reads: what every process that opens the instance needs."""
    text = (DEPLOY / "dagster-ecs.yaml").read_text()
    return set(re.findall(r"\benv: (\w+)", text))


def test_each_service_gets_the_secrets_and_settings_it_uses_and_no_others():
    """Secrets: the database password to what opens the Dagster instance or MLflow's store, the
    SMTP password to the code location (its server evaluates the sensors that send alerts), the API
    token to inference. Settings: the instance's to every Dagster process, the code's to those that
    load it (the code location; the daemon, whose environment the runs copy), MLflow only what its
    command uses."""
    from taxi_assets.lib.settings import PRODUCTION_VARIABLES

    tf = _terraform()
    secrets = {service: _secrets(tf, service) for service in SERVICES}
    environments = {service: _environment(tf, service) for service in SERVICES}
    database = "secret:rds:password::"
    assert {s for s in SERVICES if "DAGSTER_PG_PASSWORD" in secrets[s]} == {
        "code-location",
        "webserver",
        "daemon",
        "mlflow",
    }
    assert all(secrets[s].get("DAGSTER_PG_PASSWORD", database) == database for s in SERVICES)
    assert {s: sorted(set(secrets[s]) - {"DAGSTER_PG_PASSWORD"}) for s in SERVICES} == {
        "code-location": ["TAXI_SMTP_PASSWORD"],
        "webserver": [],
        "daemon": [],
        "mlflow": [],
        "inference": ["TAXI_API_TOKEN"],
    }
    # The execution role can read each of them (and nothing is injected it could not).
    [readable] = [s for s in _statements(tf, "execution") if s["Action"] == ["secretsmanager:GetSecretValue"]]
    for service in SERVICES:
        assert all(":".join(arn.split(":")[:2]) in readable["Resource"] for arn in secrets[service].values())

    # Every Dagster process has what the instance config reads; the run launcher hands the runs the
    # same database secret.
    instance = _instance_variables()
    assert {"DAGSTER_PG_HOST", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_PASSWORD_SECRET_ARN", "TAXI_S3_BUCKET"} <= instance
    for service in ("code-location", "webserver", "daemon"):
        missing = instance - set(environments[service]) - set(secrets[service])
        assert not missing, (service, missing)
    launcher = yaml.safe_load((DEPLOY / "dagster-ecs.yaml").read_text())["run_launcher"]["config"]
    [run_secret] = launcher["secrets"]
    assert run_secret["name"] == "DAGSTER_PG_PASSWORD"
    assert environments["daemon"][run_secret["valueFrom"]["env"]] == database
    # The code's settings where the code loads, and nowhere else.
    code = set(PRODUCTION_VARIABLES) | {"TAXI_ENV", "TAXI_SERVING_PREFIX"}
    for service in ("code-location", "daemon"):
        assert code <= set(environments[service]), service
        assert environments[service]["TAXI_SERVING_PREFIX"] == environments["inference"]["TAXI_SERVING_PREFIX"]
    assert not (code - {"TAXI_S3_BUCKET"}) & set(environments["webserver"])
    assert not {"TAXI_SMTP_HOST", "TAXI_ALERT_TO", "DAGSTER_CURRENT_IMAGE"} & set(environments["daemon"])
    # MLflow: what its command reads, nothing more.
    [mlflow_command] = _container(tf, "mlflow")["command"][2:]
    used = set(re.findall(r"\$(\w+)|os\.environ\['(\w+)'\]", mlflow_command))
    used = {name for pair in used for name in pair if name}
    assert set(environments["mlflow"]) | set(secrets["mlflow"]) == used | {"AWS_REGION"}, used

    # Each service its own task role; the runs take the Dagster role, no service's.
    roles = {service: tf.task_definition(service)["taskRoleArn"] for service in SERVICES}
    assert roles == {
        "code-location": "role:code_location",
        "webserver": "role:webserver",
        "daemon": "role:daemon",
        "mlflow": "role:mlflow",
        "inference": "role:inference",
    }
    context = json.loads(environments["code-location"]["DAGSTER_CONTAINER_CONTEXT"])
    assert context == {"ecs": {"task_role_arn": "role:dagster"}}


def test_the_webserver_and_mlflow_roles_reach_only_their_part_of_the_bucket():
    """The webserver reads compute logs and stops run tasks; MLflow keeps its artifacts under mlflow/."""
    tf = _terraform()
    resources = {}
    for document in ("webserver", "mlflow"):
        for statement in _statements(tf, document):
            for action in statement["Action"]:
                resources.setdefault(document, {})[action] = statement["Resource"]
    assert resources["webserver"] == {
        "s3:ListBucket": ["arn:aws:s3:::data"],
        "s3:GetObject": ["arn:aws:s3:::data/dagster/compute-logs/*"],
        "kms:Decrypt": ["key:main"],
        # A run terminated in the UI: the run coordinator stops its task from the webserver.
        "ecs:DescribeTasks": [f"arn:aws:ecs:us-east-1:{ACCOUNT}:task/taxi-assets/*"],
        "ecs:StopTask": [f"arn:aws:ecs:us-east-1:{ACCOUNT}:task/taxi-assets/*"],
    }
    # MLflow's artifacts are where its role may write.
    assert "--artifacts-destination s3://data/mlflow " in _container(tf, "mlflow")["command"][2] + " "
    assert resources["mlflow"] == {
        "s3:ListBucket": ["arn:aws:s3:::data"],
        "s3:GetObject": ["arn:aws:s3:::data/mlflow/*"],
        "s3:PutObject": ["arn:aws:s3:::data/mlflow/*"],
        "s3:DeleteObject": ["arn:aws:s3:::data/mlflow/*"],
        "kms:Decrypt": ["key:main"],
        "kms:GenerateDataKey": ["key:main"],
    }
    for document, prefix in (("webserver", "dagster/compute-logs/*"), ("mlflow", "mlflow/*")):
        [listing] = [s for s in _statements(tf, document) if s["Action"] == ["s3:ListBucket"]]
        assert listing["Condition"] == {"StringLike": {"s3:prefix": [prefix]}}
    assert _policies_of(tf, "webserver") == (["webserver"], []) and _policies_of(tf, "mlflow") == (["mlflow"], [])


def _rules(tf, group: str, kind: str) -> list[dict]:
    """``aws_security_group.<group>``'s inline ingress or egress rules, evaluated."""
    block = tf.block("resource", "aws_security_group", group)
    return [{name: tf.attribute(rule, name) for name in rule.attributes} for rule in block.children(kind)]


def test_the_public_service_reaches_nothing_but_aws_and_mlflow_only_its_database():
    """Security groups: inference takes requests from the load balancer and reaches only HTTPS (AWS);
    MLflow takes no CIDR and reaches its database and S3; PostgreSQL admits Dagster's tasks and MLflow."""
    tf = _terraform()
    tf.known |= {
        f"aws_security_group.{name}.id": f"sg:{name}" for name in ("alb", "tasks", "mlflow", "inference", "database")
    }
    tf.known["data.aws_vpc.main.cidr_block"] = "10.0.0.0/16"
    service = tf.block("resource", "aws_ecs_service", "service")
    [network] = service.children("network_configuration")
    groups = {
        name: tf.attribute(network, "security_groups", {"key": name, "value": tf.local("services")[name]})
        for name in SERVICES
    }
    assert groups == {
        "code-location": ["sg:tasks"],
        "webserver": ["sg:tasks"],
        "daemon": ["sg:tasks"],
        "mlflow": ["sg:mlflow"],
        "inference": ["sg:inference"],
    }
    assert _rules(tf, "inference", "ingress") == [
        {
            "description": "Predictions from the load balancer",
            "from_port": 8080,
            "to_port": 8080,
            "protocol": "tcp",
            "security_groups": ["sg:alb"],
        }
    ]
    [out] = _rules(tf, "inference", "egress")
    assert (out["from_port"], out["to_port"]) == (443, 443)
    assert {
        (r["from_port"], tuple(r.get("security_groups", r.get("cidr_blocks", []))))
        for r in _rules(tf, "mlflow", "egress")
    } == {
        (443, ("0.0.0.0/0",)),
        (5432, ("sg:database",)),
    }
    # MLflow: from the load balancer (the UI) and Dagster's tasks (tracking), by group, on its port.
    ingress = {(r["from_port"], r["to_port"], tuple(r["security_groups"])) for r in _rules(tf, "mlflow", "ingress")}
    assert ingress == {(5000, 5000, ("sg:alb",)), (5000, 5000, ("sg:tasks",))}
    assert all("cidr_blocks" not in rule for rule in _rules(tf, "mlflow", "ingress"))
    # The load balancer reaches only the three ports it forwards to (and the identity provider).
    ports = {(r["from_port"], r["to_port"], tuple(r["cidr_blocks"])) for r in _rules(tf, "alb", "egress")}
    assert ports == {(p, p, ("10.0.0.0/16",)) for p in (3000, 5000, 8080)} | {(443, 443, ("0.0.0.0/0",))}
    # PostgreSQL admits Dagster's tasks and MLflow, not the inference service.
    sources = {
        tf.attribute(rule, "source_security_group_id")
        for rule in tf.resources("aws_security_group_rule")
        if tf.attribute(rule, "security_group_id") == "sg:database"
    }
    assert sources == {"sg:tasks", "sg:mlflow"}


# --- The step-per-task executor ---------------------------------------------------------------------

DEFAULT_STEP_RESOURCES = {
    "data": {"cpu": "1024", "memory": "4096"},
    "xgboost": {"cpu": "2048", "memory": "8192"},
    "default": {"cpu": "512", "memory": "2048"},
}


def test_the_code_location_and_the_runs_get_the_step_executor_and_each_steps_size():
    """TAXI_STEP_EXECUTOR and TAXI_ECS_STEP_RESOURCES (JSON) from the Terraform variables, where the
    retraining job loads: the code location and the daemon, whose environment the runs copy."""
    for variables, executor, sizes in (
        ({}, "process", DEFAULT_STEP_RESOURCES),
        (
            {
                "step_executor": "ecs",
                "step_resources": DEFAULT_STEP_RESOURCES | {"xgboost": {"cpu": "8192", "memory": "16384"}},
            },
            "ecs",
            DEFAULT_STEP_RESOURCES | {"xgboost": {"cpu": "8192", "memory": "16384"}},
        ),
    ):
        tf = _terraform(variables)
        for service in ("code-location", "daemon"):
            environment = _environment(tf, service)
            assert environment["TAXI_STEP_EXECUTOR"] == executor, service
            assert json.loads(environment["TAXI_ECS_STEP_RESOURCES"]) == sizes, service
        for service in ("webserver", "mlflow", "inference"):
            assert not {"TAXI_STEP_EXECUTOR", "TAXI_ECS_STEP_RESOURCES"} & set(_environment(tf, service)), service


def test_the_run_role_may_start_watch_and_stop_its_steps_tasks_only_with_the_step_executor():
    """What dagster-aws's ecs_executor calls from the run's task (EcsStepHandler: DescribeTasks on its
    own task, the network interfaces, RunTask with tags, DescribeTasks, StopTask), in this cluster,
    passing only the roles of the run's task definition; nothing of it for the code location."""
    tf = _terraform({"step_executor": "ecs"})
    run_roles = {
        json.loads(_environment(tf, "code-location")["DAGSTER_CONTAINER_CONTEXT"])["ecs"]["task_role_arn"],
        tf.task_definition("daemon")["executionRoleArn"],  # runs copy the daemon's execution role
    }
    assert run_roles == {"role:dagster", "role:execution"}
    documents, attached = _policies_of(tf, "dagster")
    assert documents == ["data_bucket", "step_launcher"] and attached == []
    statements = {action: statement for statement in _statements(tf, "step_launcher") for action in statement["Action"]}
    cluster = {"ArnEquals": {"ecs:cluster": [f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/taxi-assets"]}}
    for action in ("ecs:RunTask", "ecs:DescribeTasks", "ecs:StopTask", "ecs:TagResource"):
        assert statements[action]["Condition"] == cluster, action
    assert set(statements["iam:PassRole"]["Resource"]) == run_roles
    assert statements["iam:PassRole"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": ["ecs-tasks.amazonaws.com"]}
    }
    assert set(statements) == {
        "ec2:DescribeNetworkInterfaces",
        "ecs:RunTask",
        "ecs:DescribeTasks",
        "ecs:StopTask",
        "ecs:TagResource",
        "iam:PassRole",
    }
    [steps] = [block for block in tf.resources("aws_iam_role_policy") if block.labels[1] == "dagster_steps"]
    assert tf.attribute(steps, "count") == 1 and tf.attribute(steps, "role") == "role:dagster"
    assert _terraform().attribute(steps, "count") == 0  # the default, "process"
    # The code location launches nothing: the bucket only.
    assert _policies_of(tf, "code_location") == (["data_bucket"], [])


def _fargate_pairs() -> set[str]:
    """Fargate's CPU/memory pairs for Linux tasks, from AWS's table (memory in MiB)."""
    ranges = {
        256: (512, 1024, 2048),
        512: range(1024, 4097, 1024),
        1024: range(2048, 8193, 1024),
        2048: range(4096, 16385, 1024),
        4096: range(8192, 30721, 1024),
        8192: range(16384, 61441, 4096),
        16384: range(32768, 122881, 8192),
    }
    return {f"{cpu}/{memory}" for cpu, memories in ranges.items() for memory in memories}


def test_step_resources_lists_every_fargate_size_and_its_defaults_are_the_contracts():
    tf = _terraform()
    assert tf.variables["step_resources"] == DEFAULT_STEP_RESOURCES
    [block] = [b for b in tf.blocks if b.type == "variable" and b.labels == ("step_resources",)]
    [validation] = block.children("validation")
    condition = validation.attributes["condition"]  # length(setsubtract([given...], [valid...])) == 0
    _, _, length, _ = condition
    [setsubtract] = length[2]
    given, valid = setsubtract[2]
    assert set(tf.evaluate(valid)) == _fargate_pairs()
    assert tf.evaluate(given) == [f"{size['cpu']}/{size['memory']}" for size in DEFAULT_STEP_RESOURCES.values()]


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not on PATH (CI has it)")
def test_terraform_itself_refuses_a_step_size_fargate_has_not(tmp_path):
    """The variables' validations, run by Terraform on variables.tf alone (no provider needed)."""
    import subprocess

    shutil.copy(DEPLOY / "terraform" / "variables.tf", tmp_path / "variables.tf")
    (tmp_path / "outputs.tf").write_text('output "sizes" { value = jsonencode(var.step_resources) }\n')
    required = {"vpc_id": "vpc", "private_subnet_ids": [], "public_subnet_ids": [], "certificate_arn": "-"}
    (tmp_path / "base.auto.tfvars.json").write_text(
        json.dumps(required | {"allowed_cidrs": [], "image_tag": "t"} | OIDC)
    )
    env = os.environ | {"CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1", "NO_COLOR": "1"}

    def terraform(*args: str) -> subprocess.CompletedProcess:
        command = ["terraform", *args, "-input=false", "-no-color"]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    assert terraform("init").returncode == 0
    accepted = terraform("plan")
    assert accepted.returncode == 0, accepted.stderr
    bigger = DEFAULT_STEP_RESOURCES | {
        "xgboost": {"cpu": "8192", "memory": "32768"},
        "default": {"cpu": "256", "memory": "512"},
    }
    assert terraform("plan", "-var", f"step_resources={json.dumps(bigger)}").returncode == 0
    for wrong, message in (
        ({"data": {"cpu": "1024", "memory": "16384"}}, "Fargate CPU/memory pair"),  # too much memory for 1 vCPU
        ({"xgboost": {"cpu": "3072", "memory": "8192"}}, "Fargate CPU/memory pair"),  # no such CPU size
        ({"data": {"cpu": "1024"}}, 'attribute "memory" is required'),
    ):
        refused = terraform("plan", "-var", f"step_resources={json.dumps(DEFAULT_STEP_RESOURCES | wrong)}")
        assert refused.returncode != 0 and message in " ".join(refused.stderr.split()), (wrong, refused.stderr)
    refused = terraform("plan", "-var", "step_executor=lambda")
    assert refused.returncode != 0 and "step_executor is" in refused.stderr


def test_the_docs_table_of_what_runs_where_names_each_services_secrets_as_the_terraform_does():
    """docs/deploying-and-scaling.md, "What runs where": each service's secrets column is its task
    definition's secrets, the run tasks' is the run launcher's, and inference's environment is its own."""
    text = (REPO_ROOT / "docs" / "deploying-and-scaling.md").read_text()
    section = text.split("## What runs where", 1)[1].split("\n## ", 1)[0]
    rows = [
        line.split(" | ") for line in section.splitlines() if line.startswith("| ") and not line.startswith("| service")
    ]
    table = {row[0].lstrip("| ").strip(): row for row in rows}
    tf = _terraform()
    names = {
        "code location": "code-location",
        "webserver": "webserver",
        "daemon": "daemon",
        "MLflow": "mlflow",
        "inference": "inference",
    }
    for title, service in names.items():
        documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table[title][3]))
        assert documented == set(_secrets(tf, service)), (service, documented)
    [runs] = [row for title, row in table.items() if title.startswith("run tasks")]
    launcher = yaml.safe_load((DEPLOY / "dagster-ecs.yaml").read_text())["run_launcher"]["config"]
    assert set(re.findall(r"`([A-Z][A-Z0-9_]+)`", runs[3])) == {secret["name"] for secret in launcher["secrets"]}
    assert set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table["inference"][4])) == set(_environment(tf, "inference"))
    assert set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table["MLflow"][4])) == set(_environment(tf, "mlflow"))
