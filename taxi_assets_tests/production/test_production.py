"""A production-like deployment on one machine, with real processes on 127.0.0.1:

- a throwaway PostgreSQL 15 cluster (initdb/pg_ctl, as the ``postgres`` user when we are root),
- moto's standalone S3 server (trip files in one bucket; asset values and compute logs in another),
- an MLflow tracking server (backend store in PostgreSQL, artifacts in the S3 bucket),
- the code location as ``dagster code-server start``, ``dagster-webserver`` and ``dagster-daemon``,

all on ``deploy/dagster.yaml`` and the production resources (``TAXI_ENV=production``). The test
launches a materialization through GraphQL, checks the run rows in PostgreSQL and the objects in
the bucket, then kills the daemon mid-run and restarts it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from taxi_assets.ml.value_files import load_value
from taxi_assets_tests.helpers import COURSE_SHAPES, DATA_DIR, REPO_ROOT
from taxi_assets_tests.servers import free_port, moto_s3_server
from taxi_assets_tests.stack import GraphQL, Processes, wait_for

pytestmark = pytest.mark.production

BIN = Path(sys.executable).parent
TRIPS_BUCKET, ASSETS_BUCKET = "taxi-trips", "taxi-assets"
# Small search budgets: the point here is the deployment, not the models.
SMALL_BUDGET = {
    "ops": {
        "sklearn_models": {"ops": {"load_models": {"config": {"models": ["LinearRegression"], "max_evaluations": 1}}}},
        "xgboost_model": {"config": {"max_evaluations": 1, "fixed_params": {"max_depth": 6}, "timeout_seconds": 15}},
    }
}


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its server tools as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_cluster():
    """A fresh cluster on a free port with password (scram) auth; yields connection settings."""
    root = Path(tempfile.mkdtemp(prefix="taxi-pg-"))
    data, password = root / "data", "pg-test-secret"
    (root / "pwfile").write_text(password)
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in (root, root / "pwfile"):
            os.chown(path, user.pw_uid, user.pw_gid)
    port = free_port()
    subprocess.run(
        _as_postgres(
            [
                "initdb",
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                f"--pwfile={root / 'pwfile'}",
                "-E",
                "UTF8",
            ]
        ),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        _as_postgres(["pg_ctl", "-D", str(data), "-o", options, "-l", str(root / "postgres.log"), "-w", "start"]),
        check=True,
        capture_output=True,
    )
    settings = {"host": "127.0.0.1", "port": port, "user": "postgres", "password": password}
    try:
        import psycopg2

        connection = psycopg2.connect(dbname="postgres", **settings)
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE dagster")
            cursor.execute("CREATE DATABASE mlflow")
        connection.close()
        yield settings
    finally:
        subprocess.run(_as_postgres(["pg_ctl", "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def sql(settings: dict, query: str, *args) -> list[tuple]:
    import psycopg2

    connection = psycopg2.connect(dbname="dagster", **settings)
    try:
        with connection.cursor() as cursor:
            cursor.execute(query, args)
            return cursor.fetchall()
    finally:
        connection.close()


def sensor_state(settings: dict) -> tuple[dict, list[float]]:
    """new_trip_data_sensor's cursor and tick timestamps, straight from PostgreSQL."""
    from dagster._core.scheduler.instigation import InstigatorState
    from dagster._serdes import deserialize_value

    states = [
        (selector, deserialize_value(body, InstigatorState))
        for selector, body in sql(settings, "SELECT selector_id, instigator_body FROM instigators")
    ]
    [(selector, state)] = [(sel, st) for sel, st in states if st.name == "new_trip_data_sensor"]
    ticks = sql(
        settings,
        "SELECT extract(epoch from timestamp) FROM job_ticks WHERE selector_id = %s ORDER BY timestamp",
        selector,
    )
    return json.loads(state.instigator_data.cursor or "{}"), [float(tick) for (tick,) in ticks]


def test_production_like_stack(tmp_path):
    import boto3

    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        raise RuntimeError("PostgreSQL's initdb and pg_ctl must be on PATH for this test")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")

    with postgres_cluster() as pg, moto_s3_server() as endpoint:
        s3 = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
        )
        for bucket in (TRIPS_BUCKET, ASSETS_BUCKET):
            s3.create_bucket(Bucket=bucket)
        s3.upload_file(str(DATA_DIR / "2024" / "01.parquet"), TRIPS_BUCKET, "taxi/green/2024/01.parquet")

        code_port, web_port, mlflow_port = free_port(), free_port(), free_port()
        workspace = tmp_path / "workspace.yaml"
        workspace.write_text(
            f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {code_port}\n      location_name: taxi_assets\n"
        )
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("TAXI_", "DAGSTER_", "MLFLOW_", "AWS_"))
        } | {
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_HOST": pg["host"],
            "DAGSTER_PG_PORT": str(pg["port"]),
            "DAGSTER_PG_DB": "dagster",
            "DAGSTER_PG_USERNAME": pg["user"],
            "DAGSTER_PG_PASSWORD": pg["password"],
            "DAGSTER_MAX_CONCURRENT_RUNS": "2",
            "TAXI_ENV": "production",
            "TAXI_S3_BUCKET": ASSETS_BUCKET,
            "TAXI_DATA_S3_BUCKET": TRIPS_BUCKET,
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "MLFLOW_S3_ENDPOINT_URL": endpoint,  # where the MLflow server stores artifacts (moto)
            "TAXI_SENSOR_INTERVAL_SECONDS": "5",
        }
        processes = Processes(tmp_path, env)
        try:
            # MLflow's server keeps runs and the registry in PostgreSQL and proxies artifacts to S3.
            processes.start(
                "mlflow",
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(mlflow_port),
                    "--backend-store-uri",
                    f"postgresql+psycopg2://{pg['user']}:{pg['password']}@127.0.0.1:{pg['port']}/mlflow",
                    "--artifacts-destination",
                    f"s3://{ASSETS_BUCKET}/mlflow",
                ],
            )
            processes.start(
                "code-server",
                [
                    str(BIN / "dagster"),
                    "code-server",
                    "start",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(code_port),
                    "-m",
                    "taxi_assets.definitions",
                    "--location-name",
                    "taxi_assets",
                ],
            )
            processes.start(
                "webserver",
                [str(BIN / "dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1", "-p", str(web_port)],
            )
            processes.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)])
            graphql = GraphQL(f"http://127.0.0.1:{web_port}")

            def webserver_up():
                try:
                    return graphql.location_loaded()
                except OSError:
                    return False

            def mlflow_up():
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{mlflow_port}/health", timeout=2) as response:
                        return response.status == 200
                except OSError:
                    return False

            try:
                wait_for(webserver_up, 180, "the webserver and the code location")
                wait_for(mlflow_up, 120, "the MLflow server")
            except TimeoutError:
                pytest.fail(
                    "stack did not come up:\n"
                    + processes.log("code-server")
                    + processes.log("webserver")
                    + processes.log("mlflow")
                )

            # 1. The sensor (daemon) finds 2024-01 in the trip bucket and prepares it: the first
            #    month has no previous month, so raw_trips and cleaned_trips only.
            def sensor_run_done():
                rows = sql(pg, "SELECT run_id, status FROM runs")
                if any(status == "FAILURE" for _, status in rows):
                    pytest.fail(f"sensor run failed: {rows}\n{processes.log('daemon')}")
                return rows if rows and all(status == "SUCCESS" for _, status in rows) else None

            [(sensor_run, _)] = wait_for(sensor_run_done, 180, "the sensor's 2024-01 run")
            cursor_before, _ = sensor_state(pg)
            assert list(cursor_before) == ["2024-01"]

            # 2. Launch 2024-02's retraining (the whole graph for the month) through GraphQL, then
            #    publish its file. The queued run carries the month tag, so the sensor does not
            #    start a second one.
            launched = graphql.launch(
                "retraining", {"dagster/partition": "2024-02", "taxi_assets/retrain_month": "2024-02"}, SMALL_BUDGET
            )
            s3.upload_file(str(DATA_DIR / "2024" / "02.parquet"), TRIPS_BUCKET, "taxi/green/2024/02.parquet")

            # 3. Kill the daemon mid-run. The run's worker belongs to the code server, so it goes on.
            wait_for(lambda: graphql.status(launched) in ("STARTED", "SUCCESS", "FAILURE"), 120, "the run to start")
            assert graphql.status(launched) == "STARTED", "the run finished before the daemon could be killed mid-run"
            processes.kill("daemon")
            killed_at = time.time()
            # A run launched while no daemon runs waits in the queue: not lost, not run twice.
            queued = graphql.launch("observability", {})
            time.sleep(3)
            assert graphql.status(queued) == "QUEUED"
            processes.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)])

            for run_id in (launched, queued):
                status = wait_for(
                    lambda run_id=run_id: (
                        graphql.status(run_id) in ("SUCCESS", "FAILURE", "CANCELED") and graphql.status(run_id)
                    ),
                    420,
                    f"run {run_id}",
                )
                assert status == "SUCCESS", processes.log("code-server") + processes.log("daemon")

            # 4. The sensor ticks again after the restart, with its cursor intact, and asks for
            #    nothing: 2024-02 was ingested from the very file it sees.
            wait_for(lambda: any(t > killed_at + 1 for t in sensor_state(pg)[1]), 90, "a sensor tick after the restart")
            time.sleep(6)
            cursor_after, ticks = sensor_state(pg)
            assert cursor_after == cursor_before

            # Run rows in PostgreSQL: exactly the three runs, each once, all succeeded.
            rows = sql(pg, "SELECT run_id, status, pipeline_name FROM runs ORDER BY create_timestamp")
            assert [(run_id, status) for run_id, status, _ in rows] == [
                (sensor_run, "SUCCESS"),
                (launched, "SUCCESS"),
                (queued, "SUCCESS"),
            ], rows
            assert [job for _, _, job in rows] == ["retraining", "retraining", "observability"]
            [(run_key,)] = sql(pg, "SELECT value FROM run_tags WHERE key = 'dagster/run_key'")
            assert run_key == f"retrain:2024-01:{cursor_before['2024-01']}"
            materialized = sql(
                pg,
                "SELECT asset_key, partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' ORDER BY id",
            )
            assert sorted(materialized, key=str) == sorted(
                [
                    ('["raw_trips"]', "2024-01"),
                    ('["cleaned_trips"]', "2024-01"),
                    ('["raw_trips"]', "2024-02"),
                    ('["cleaned_trips"]', "2024-02"),
                    ('["training_set"]', "2024-02"),
                    ('["sklearn_models"]', "2024-02"),
                    ('["xgboost_model"]', "2024-02"),
                    ('["production_model"]', "2024-02"),
                    ('["pipeline_health"]', None),
                ],
                key=str,
            )

            # Asset values in the bucket, loadable, and the training set is the course's.
            everything = {
                item["Key"]
                for item in s3.list_objects_v2(Bucket=ASSETS_BUCKET, Prefix="taxi_assets/assets/")["Contents"]
            }
            # Op outputs inside the graph-backed asset (the fan-out) are stored per run.
            step_outputs = {key for key in everything if key.startswith("taxi_assets/assets/storage/")}
            assert step_outputs and all(
                key.startswith(f"taxi_assets/assets/storage/{launched}/") for key in step_outputs
            )
            keys = everything - step_outputs
            assert {
                "taxi_assets/assets/raw_trips/2024-01",
                "taxi_assets/assets/cleaned_trips/2024-01",
                "taxi_assets/assets/raw_trips/2024-02",
                "taxi_assets/assets/cleaned_trips/2024-02",
                "taxi_assets/assets/training_set/2024-02",
                "taxi_assets/assets/sklearn_models/2024-02",
                "taxi_assets/assets/xgboost_model/2024-02",
                "taxi_assets/assets/production_model/2024-02",
            } == keys, keys  # pipeline_health stores no value, only metadata
            body = s3.get_object(Bucket=ASSETS_BUCKET, Key="taxi_assets/assets/training_set/2024-02")["Body"].read()
            shapes = load_value(body, "training_set").shapes()
            assert {name: shapes[name] for name in COURSE_SHAPES} == COURSE_SHAPES
            # MLflow: the run's models in the server's registry (PostgreSQL), their artifacts in S3.
            import mlflow

            client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
            experiment = client.get_experiment_by_name("taxi-duration")
            parents = [
                run
                for run in client.search_runs(
                    [experiment.experiment_id], f"tags.`dagster.run_id` = '{launched}'", max_results=500
                )
                if "trial" not in run.data.tags
            ]
            assert sorted(run.data.tags.get("model", run.data.tags["dagster.asset"]) for run in parents) == [
                "LinearRegression",
                "production_model",
                "xgboost",
            ]
            assert all(run.info.status == "FINISHED" for run in parents)
            version = client.get_model_version_by_alias(
                f"taxi-duration-{load_value(s3.get_object(Bucket=ASSETS_BUCKET, Key='taxi_assets/assets/production_model/2024-02')['Body'].read(), 'production_model').name}",
                "champion",
            )
            assert version.tags["dagster.run_id"] == launched
            artifacts = s3.list_objects_v2(Bucket=ASSETS_BUCKET, Prefix="mlflow/").get("KeyCount", 0)
            assert artifacts > 0
            # Compute logs in S3, under the instance's prefix.
            logs = s3.list_objects_v2(Bucket=ASSETS_BUCKET, Prefix="dagster/compute-logs/").get("KeyCount", 0)
            assert logs > 0
        finally:
            processes.stop_all()
