"""The deployment files and the production switch (the running stack is in test_production.py)."""

from __future__ import annotations

import os
import re

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


def test_the_load_balancer_sends_every_served_path_to_the_inference_service_and_the_rest_through_a_login():
    """The listener's rules against the server's own route table (ROUTES), not a second list: every
    path it serves reaches it without the UI's login (it checks its bearer token), nothing else
    does, and everything else goes through authenticate-oidc to the Dagster webserver."""
    from taxi_assets.apps.server import ROUTES
    from taxi_assets_tests.production.test_ecs import Terraform  # the HCL reader the ECS test uses

    oidc = {
        "oidc_issuer": "https://idp.example.com",
        "oidc_authorization_endpoint": "https://idp.example.com/authorize",
        "oidc_token_endpoint": "https://idp.example.com/token",
        "oidc_user_info_endpoint": "https://idp.example.com/userinfo",
        "oidc_client_id": "dagster-ui",
        "oidc_client_secret_arn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:oidc",
    }
    tf = Terraform(DEPLOY / "terraform", {"certificate_arn": "-", "allowed_cidrs": [], "image_tag": "t"} | oidc)
    tf.known |= {
        "aws_lb_listener.https.arn": "listener",
        "aws_lb_target_group.inference.arn": "inference",
        "aws_lb_target_group.webserver.arn": "webserver",
        "data.aws_secretsmanager_secret_version.oidc_client_secret.secret_string": "read from Secrets Manager",
    }
    to_inference: list[str] = []
    for rule in tf.resources("aws_lb_listener_rule"):
        assert tf.attribute(rule, "listener_arn") == "listener"
        [action] = rule.children("action")  # a plain forward: no login in front of the API
        assert tf.attribute(action, "type") == "forward" and tf.attribute(action, "target_group_arn") == "inference"
        for condition in rule.children("condition"):
            [pattern] = condition.children("path_pattern")
            values = tf.attribute(pattern, "values")
            assert len(values) <= 5, "an ALB rule takes at most five condition values: add a rule"
            assert not any(wildcard in value for value in values for wildcard in "*?"), values  # exact paths
            to_inference += values
    assert sorted(to_inference) == sorted(ROUTES)

    listener = tf.block("resource", "aws_lb_listener", "https")
    login, forward = sorted(listener.children("default_action"), key=lambda action: tf.attribute(action, "order"))
    assert tf.attribute(login, "type") == "authenticate-oidc"
    assert (tf.attribute(forward, "type"), tf.attribute(forward, "target_group_arn")) == ("forward", "webserver")
    [settings] = login.children("authenticate_oidc")
    given = {name: tf.attribute(settings, name) for name in settings.attributes}
    for name in ("issuer", "authorization_endpoint", "token_endpoint", "user_info_endpoint", "client_id"):
        assert given[name] == oidc[f"oidc_{name}"], name
    assert given["client_secret"] == "read from Secrets Manager"
    assert given["on_unauthenticated_request"] == "authenticate"
    secret = tf.block("data", "aws_secretsmanager_secret_version", "oidc_client_secret")
    assert tf.attribute(secret, "secret_id") == oidc["oidc_client_secret_arn"]
    # No secret has a default: nothing secret lives in the repository.
    variables = [block for block in tf.blocks if block.type == "variable" and "secret" in block.labels[0]]
    assert variables and all("default" not in block.attributes for block in variables)
