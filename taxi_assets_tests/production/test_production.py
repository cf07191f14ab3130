"""A production-like deployment on one machine (``taxi_assets_tests/production_stack.py``): PostgreSQL,
moto's S3, an MLflow server on both, and the code server, webserver and daemon on
``deploy/dagster.yaml`` with the production resources (``TAXI_ENV=production``). The test lets the
sensor prepare a month, launches a retraining through GraphQL, kills the daemon mid-run and
restarts it, then checks the run rows in PostgreSQL and the objects in the bucket.
"""

from __future__ import annotations

import json
import time

import pytest

from taxi_assets.ml.hyperparameters import DEEPEST_XGBOOST
from taxi_assets.ml.value_files import load_value
from taxi_assets_tests.helpers import COURSE_SHAPES, DATA_DIR
from taxi_assets_tests.production_stack import ASSETS_BUCKET, TRIPS_BUCKET, ProductionStack, sql
from taxi_assets_tests.stack import wait_for

pytestmark = pytest.mark.production

# Small search budgets: the point here is the deployment, not the models.
SMALL_BUDGET = {
    "ops": {
        "sklearn_models": {"ops": {"load_models": {"config": {"models": ["LinearRegression"], "max_evaluations": 1}}}},
        # The deepest corner of the space for 40 s: a step that lasts, however fast the machine.
        "xgboost_model": {
            "config": {
                "max_evaluations": 1000,
                "timeout_seconds": 40,
                "start_from_known_good": False,
                "early_stopping_rounds": 1000,
                "fixed_params": DEEPEST_XGBOOST,
            }
        },
    }
}
SCHEDULED = "dagster/schedule_name"  # the daily observability schedule may add a run at 06:15 UTC


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


def runs_of_this_test(pg: dict) -> list[tuple[str, str, str]]:
    """(run id, status, job) of every run but the daily schedule's, oldest first."""
    return sql(
        pg,
        "SELECT run_id, status, pipeline_name FROM runs WHERE run_id NOT IN "
        "(SELECT run_id FROM run_tags WHERE key = %s) ORDER BY create_timestamp",
        SCHEDULED,
    )


def step_started(pg: dict, run_id: str, step_key: str) -> bool:
    rows = sql(
        pg,
        "SELECT 1 FROM event_logs WHERE run_id = %s AND step_key = %s AND dagster_event_type = 'STEP_START'",
        run_id,
        step_key,
    )
    return bool(rows)


def test_production_like_stack(tmp_path):
    with ProductionStack(tmp_path) as stack:
        pg, s3, graphql = stack.pg, stack.s3, stack.graphql
        s3.upload_file(str(DATA_DIR / "2024" / "01.parquet"), TRIPS_BUCKET, "taxi/green/2024/01.parquet")

        # 1. The sensor (daemon) finds 2024-01 in the trip bucket and prepares it: the first month
        #    has no previous month, so raw_trips and cleaned_trips only.
        def sensor_run_done():
            rows = runs_of_this_test(pg)
            if any(status == "FAILURE" for _, status, _ in rows):
                pytest.fail(f"sensor run failed: {rows}\n{stack.log('daemon')}")
            return rows if rows and all(status == "SUCCESS" for _, status, _ in rows) else None

        [(sensor_run, _, _)] = wait_for(sensor_run_done, 300, "the sensor's 2024-01 run")
        cursor_before, _ = sensor_state(pg)
        # The sensor's cursor: no month left alone (the one file is the newest), 2024-01's stamp kept.
        assert cursor_before["v"] == 2 and cursor_before["ignored"] == {} and "2024-01" in cursor_before["known"]

        # 2. With the daemon down, launch 2024-02's retraining (the whole graph for the month)
        #    through GraphQL, publish its file, and launch one more run. Both wait in the queue:
        #    not lost, not run twice. The retraining carries the month tag, so once the daemon is
        #    back the sensor does not start a second one for the new file.
        stack.kill("daemon")
        launched = graphql.launch(
            "retraining", {"dagster/partition": "2024-02", "taxi_assets/retrain_month": "2024-02"}, SMALL_BUDGET
        )
        s3.upload_file(str(DATA_DIR / "2024" / "02.parquet"), TRIPS_BUCKET, "taxi/green/2024/02.parquet")
        queued = graphql.launch("observability", {})
        assert graphql.status(launched) == graphql.status(queued) == "QUEUED"
        stack.start("daemon")

        # 3. Kill the daemon again mid-run: the run's worker belongs to the code server, so it goes
        #    on. XGBoost searches the deepest corner of the space for 40 s, so once its step has
        #    started the run is still going, however fast the machine.
        wait_for(lambda: step_started(pg, launched, "xgboost_model"), 300, "the retraining's XGBoost step")
        assert graphql.status(launched) == "STARTED"
        stack.kill("daemon")
        killed_at = time.time()
        stack.start("daemon")
        for run_id in (launched, queued):
            status = wait_for(
                lambda run_id=run_id: (
                    graphql.status(run_id) in ("SUCCESS", "FAILURE", "CANCELED") and graphql.status(run_id)
                ),
                600,
                f"run {run_id}",
            )
            assert status == "SUCCESS", stack.log("code-server", "daemon")

        # 4. The sensor ticks again after the restart (twice: events, not seconds), with its cursor
        #    intact, and asks for nothing: 2024-02 was ingested from the very file it sees.
        wait_for(
            lambda: sum(t > killed_at + 1 for t in sensor_state(pg)[1]) >= 2, 300, "two sensor ticks after the restart"
        )
        cursor_after, _ = sensor_state(pg)
        assert cursor_after["ignored"] == {} and {"2024-01", "2024-02"} <= set(cursor_after["known"])

        # Run rows in PostgreSQL: exactly the three runs, each once, all succeeded.
        rows = runs_of_this_test(pg)
        assert [(run_id, status) for run_id, status, _ in rows] == [
            (sensor_run, "SUCCESS"),
            (launched, "SUCCESS"),
            (queued, "SUCCESS"),
        ], rows
        assert [job for _, _, job in rows] == ["retraining", "retraining", "observability"]
        [(run_key,)] = sql(pg, "SELECT value FROM run_tags WHERE key = 'dagster/run_key'")
        assert run_key.startswith("prepare:2024-01:")  # the first month: prepared, nothing to train on
        materialized = sql(
            pg,
            "SELECT asset_key, partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
            "AND run_id IN %s ORDER BY id",
            tuple(run_id for run_id, _, _ in rows),
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
            item["Key"] for item in s3.list_objects_v2(Bucket=ASSETS_BUCKET, Prefix="taxi_assets/assets/")["Contents"]
        }
        # Op outputs inside the graph-backed asset (the fan-out) are stored per run.
        step_outputs = {key for key in everything if key.startswith("taxi_assets/assets/storage/")}
        assert step_outputs and all(key.startswith(f"taxi_assets/assets/storage/{launched}/") for key in step_outputs)
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

        client = mlflow.MlflowClient(stack.mlflow_uri, registry_uri=stack.mlflow_uri)  # not a registry another test set
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
