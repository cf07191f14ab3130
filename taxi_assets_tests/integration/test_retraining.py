"""Retraining: the new-data sensor, the hourly schedule, champion/challenger, the predict job."""

import datetime as dt
import json
import os
import shutil
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from taxi_assets.definitions import build_defs
from taxi_assets.defs.automation import hourly_retraining_schedule, new_trip_data_sensor
from taxi_assets.defs.serving.assets import ProductionModelConfig, production_model
from taxi_assets.lib.catalog import MONTH_TAG
from taxi_assets.lib.model_store import read_value
from taxi_assets.lib.sources import LocalTripSource
from taxi_assets.lib.tracking import MlflowTracking
from taxi_assets.ml.champion import ProductionModel
from taxi_assets.ml.predictor import TrainedModel, TripDurationPredictor
from taxi_assets.ml.retraining import CHAIN
from taxi_assets.ml.trip_files import file_content_version
from taxi_assets_tests.helpers import (
    DATA_DIR,
    TINY_BUDGET,
    failure_messages,
    mlflow_client,
    use_mlflow_store_of,
)

SENSOR = new_trip_data_sensor(interval_seconds=30)


def version(path) -> str:
    """The trip file's data version: its content hash."""
    return file_content_version(Path(path))


@pytest.fixture
def source_dir(tmp_path):
    """A local source that starts with 2024-01 and 2024-02."""
    folder = tmp_path / "source"
    (folder / "2024").mkdir(parents=True)
    for month in ("01", "02"):
        shutil.copy(DATA_DIR / "2024" / f"{month}.parquet", folder / "2024" / f"{month}.parquet")
    return folder


def tick(instance, folder, cursor=None):
    """One sensor tick, then what the daemon does with its observations: record them."""
    defs = build_defs(trip_source=LocalTripSource(directory=str(folder)))
    # As a context manager: the context enters the instance and must leave it again.
    with dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"trip_source": LocalTripSource(directory=str(folder))},
        definitions=defs,
    ) as context:
        result = SENSOR(context)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result, defs


def launch(instance, defs, request, run_config=None):
    """What the daemon does with a run request: the retraining job for that partition."""
    job = defs.resolve_job_def("retraining")
    return job.execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        asset_selection=request.asset_selection,
        run_config=run_config or request.run_config,
        tags={**request.tags, "dagster/run_key": request.run_key},
        raise_on_error=False,
    )


def selected(request) -> list[str]:
    return [key.to_user_string() for key in request.asset_selection]


@pytest.mark.production  # three retrainings, month by month
def test_sensor_starts_calmly_then_retrains_what_changed_once(instance, tmp_path):
    """The real folder: 13 of the 14 real months (copies), then 2024-02 lands, is touched, and
    2024-01's content changes: each file version is trained once, and only where it matters."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    folder = tmp_path / "trips"
    for path in sorted(DATA_DIR.glob("*/*.parquet")):
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        if path.parent.name != "2024" or path.name != "02.parquet":
            (folder / path.parent.name / path.name).symlink_to(path)
    present = sorted(f"{p.parent.name}-{p.stem}" for p in folder.glob("*/*.parquet"))
    assert len(present) == 13 and present[-1] == "2024-01"

    # Tick 1 (first start): every file is observed; only the newest month, 2024-01, is to be
    # trained, and its previous month is prepared first. The older months are left alone.
    result, defs = tick(instance, folder)
    assert sorted(event.partition for event in result.asset_events) == present
    [request] = result.run_requests
    assert (request.partition_key, selected(request)) == ("2023-12", ["trip_files", "raw_trips", "cleaned_trips"])
    assert request.run_key.startswith("prepare:2023-12:")
    assert sorted(json.loads(result.cursor)["ignored"]) == present[:-1]
    assert launch(instance, defs, request).success

    # Tick 2: 2024-01's previous month is prepared: its whole retraining (observed first).
    result, defs = tick(instance, folder, result.cursor)
    [request] = result.run_requests
    assert (request.partition_key, request.run_key[:16]) == ("2024-01", "retrain:2024-01:")
    assert selected(request) == ["trip_files", *CHAIN] and request.tags[MONTH_TAG] == "2024-01"
    assert launch(instance, defs, request, TINY_BUDGET).success

    # Tick 3: nothing new.
    result, _ = tick(instance, folder, result.cursor)
    assert result.run_requests == [] and result.asset_events == []

    # A new month lands: retrained, once.
    february = folder / "2024" / "02.parquet"
    shutil.copy(DATA_DIR / "2024" / "02.parquet", february)
    result, defs = tick(instance, folder, result.cursor)
    [request] = result.run_requests
    assert request.partition_key == "2024-02" and request.run_key.startswith("retrain:2024-02:")
    [observation] = result.asset_events
    assert (observation.partition, observation.tags["dagster/data_version"]) == ("2024-02", version(february))
    run = launch(instance, defs, request, TINY_BUDGET)
    assert run.success, failure_messages(run)
    materialized = {event.asset_key.to_user_string() for event in run.get_asset_materialization_events()}
    assert materialized == set(CHAIN)
    result, _ = tick(instance, folder, result.cursor)
    assert result.run_requests == []

    # Touched (same bytes, a new modification time): the same version, nothing to do.
    stat = february.stat()
    os.utime(february, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    result, _ = tick(instance, folder, result.cursor)
    assert result.run_requests == [] and result.asset_events == []

    # 2024-01's content changes (one trip's distance): its month is retrained, and February, which
    # reads January's cleaned trips, waits for it, then follows.
    january = folder / "2024" / "01.parquet"
    trips = pd.read_parquet(january)
    january.unlink()  # a symlink to the shared data: write a file of our own
    trips.loc[0, "trip_distance"] += 0.01
    trips.to_parquet(january)
    result, defs = tick(instance, folder, result.cursor)
    [request] = result.run_requests
    assert (request.partition_key, request.run_key[:16]) == ("2024-01", "retrain:2024-01:")
    assert launch(instance, defs, request, TINY_BUDGET).success
    result, defs = tick(instance, folder, result.cursor)
    [request] = result.run_requests
    assert (request.partition_key, request.run_key[:16]) == ("2024-02", "retrain:2024-02:")

    # While a retraining of 2024-02 runs, no new one starts (skip_if_previous_running).
    instance.add_run(
        dg.DagsterRun(
            job_name="retraining",
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.STARTED,
            tags={MONTH_TAG: "2024-02"},
        )
    )
    result, _ = tick(instance, folder, result.cursor)
    assert result.run_requests == []


def test_schedule_shares_run_keys_with_the_sensor(instance, source_dir):
    def schedule_tick(when):
        defs = build_defs(trip_source=LocalTripSource(directory=str(source_dir)))
        with dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=when,
            resources={"trip_source": LocalTripSource(directory=str(source_dir))},
            repository_def=defs.get_repository_def(),
        ) as context:
            return hourly_retraining_schedule(context)

    march = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)
    [request] = schedule_tick(march)
    # 2024-02 is due, and its previous month is not prepared: it is prepared first.
    assert (request.partition_key, request.run_key[:16]) == ("2024-01", "prepare:2024-01:")
    # The sensor plans the same run under the same key.
    first, _ = tick(instance, source_dir)
    assert request.run_key in [r.run_key for r in first.run_requests]
    # Once a run with that key exists (launched by either), neither requests it again.
    instance.add_run(
        dg.DagsterRun(
            job_name="retraining",
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.SUCCESS,
            tags={"dagster/run_key": request.run_key, MONTH_TAG: "2024-01"},
        )
    )
    assert isinstance(schedule_tick(march), dg.SkipReason)
    again, _ = tick(instance, source_dir, first.cursor)
    assert request.run_key not in [r.run_key for r in again.run_requests]
    # A month the source does not have yet: skipped, not failed.
    assert "no file for 2024-03" in schedule_tick(dt.datetime(2024, 4, 1, 12, tzinfo=dt.UTC)).skip_message


class Constant:
    """A regressor predicting one value: a deliberately weak challenger or champion."""

    def __init__(self, value):
        self.value = value

    def predict(self, matrix):
        return np.full(matrix.shape[0], self.value)


def constant_model(name, value, dv):
    predictor = TripDurationPredictor(
        name=name, kind="sklearn", model=Constant(value), vectorizer=dv, partition="2024-02"
    )
    return TrainedModel(
        name=name, predictor=predictor, rmse=0.0, mse=0.0, best_params={}, n_trials=1, train_seconds=0.0
    )


def test_champion_challenger(trained_instance, monkeypatch):
    instance = trained_instance
    load = lambda asset, month="2024-02": read_value(instance, asset, month)  # noqa: E731
    dataset, xgb, sklearn = load("training_set"), load("xgboost_model"), load("sklearn_models")
    cleaned = {month: load("cleaned_trips", month) for month in ("2024-01", "2024-02")}
    mean = float(dataset.y_train.mean())
    client = mlflow_client(instance)

    def aliases():
        return {model.name: dict(model.aliases or {}) for model in client.search_registered_models()}

    aliases_before = aliases()  # other tests' published decisions may hold the alias already

    def decide(champion, sklearn_models, xgboost_model, tolerance=0.0):
        from taxi_assets.defs.serving import assets as serving

        # The champion is the previous month's decision; here it is the one each case needs.
        monkeypatch.setattr(serving, "_previous_decision", lambda context, month, mlflow: champion)
        context = dg.build_asset_context(
            partition_key="2024-02", instance=instance,
            resources={"mlflow": MlflowTracking()},
        )  # fmt: skip
        output = production_model(
            context,
            # A short budget: compiling the lookup table is not what this test is about.
            config=ProductionModelConfig(tolerance_minutes=tolerance, timeout_seconds=8),
            sklearn_models=sklearn_models,
            xgboost_model=xgboost_model,
            cleaned_trips=cleaned,
        )
        return output.value, {key: value.value for key, value in output.metadata.items()}

    weak = ProductionModel(
        predictor=constant_model("Mean", mean, dataset.dv).predictor,
        name="Mean",
        model_partition="2024-01",
        model_version=None,
        registered_model=None,
        rmse=99.0,
        decided_for="2024-01",
        reason="test",
    )
    strong = ProductionModel(
        predictor=xgb.predictor,
        name="xgboost",
        model_partition="2024-01",
        model_version=xgb.model_version,
        registered_model=xgb.registered_model,
        rmse=5.0,
        decided_for="2024-01",
        reason="test",
    )

    # A better challenger (the real models) replaces a weak champion.
    value, metadata = decide(weak, sklearn, xgb)
    assert metadata["decision"] == "promoted" and value.model_partition == "2024-02"
    assert metadata["challenger_rmse"] < metadata["champion_rmse"]
    assert metadata["serving_model"] == metadata["challenger"].split(" ")[0] != "Mean"

    # A worse challenger does not replace a strong champion; the metadata says why.
    worse = {"Mean": constant_model("Mean", mean, dataset.dv)}
    value, metadata = decide(strong, worse, constant_model("Shifted", mean + 3, dataset.dv))
    assert metadata["decision"] == "kept champion"
    assert (value.name, value.model_partition, metadata["serving_model"]) == ("xgboost", "2024-01", "xgboost")
    assert metadata["challenger_rmse"] > metadata["champion_rmse"]
    assert "champion stays" in metadata["reason"]
    # The decision itself moves no alias: publishing follows the stored record
    # (integration/test_publishing.py), and here nothing was stored.
    assert aliases() == aliases_before

    # Within the tolerance the challenger wins.
    _, metadata = decide(strong, worse, constant_model("Shifted", mean + 3, dataset.dv), tolerance=100.0)
    assert metadata["decision"] == "promoted"

    # No previous decision: the best new model serves.
    value, metadata = decide(None, sklearn, xgb)
    assert metadata["decision"] == "promoted" and metadata["champion"] == "none"


def test_predict_job_with_config(served_instance):
    trained_instance = served_instance
    defs = build_defs()
    config = {
        "ops": {
            "predict_trip_durations": {
                "config": {
                    "trips": [
                        {"PULocationID": 236, "DOLocationID": 239, "trip_distance": 1.98},
                        {"PULocationID": 65, "DOLocationID": 170, "trip_distance": 6.54},
                    ]
                }
            }
        }
    }
    result = defs.resolve_job_def("predict").execute_in_process(instance=trained_instance, run_config=config)
    assert result.success
    predictions = result.output_for_node("predict_trip_durations")
    assert len(predictions) == 2 and 4 < predictions[0] < 25 and 8 < predictions[1] < 45
    [materialization] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = materialization.event_specific_data.metadata
    assert metadata["count"].value == 2
    assert metadata["predictions"].value[1]["minutes"] == predictions[1]
    assert json.loads(metadata["model"].value)["partition"] == "2024-02"
    # Half a trip is refused by the config schema itself, before anything runs.
    with pytest.raises(
        dg.DagsterInvalidConfigError, match=r"Missing required config entries \['DOLocationID', 'trip_distance'\]"
    ):
        defs.resolve_job_def("predict").execute_in_process(
            instance=trained_instance,
            run_config={"ops": {"predict_trip_durations": {"config": {"trips": [{"PULocationID": 1}]}}}},
        )
    # A bad value is refused by the one trip schema, with its message.
    bad = defs.resolve_job_def("predict").execute_in_process(
        instance=trained_instance,
        raise_on_error=False,
        run_config={
            "ops": {
                "predict_trip_durations": {
                    "config": {"trips": [{"PULocationID": 0, "DOLocationID": 1, "trip_distance": 1}]}
                }
            }
        },
    )
    assert (
        not bad.success
        and "trips[0].PULocationID: must be a location id (a positive integer), got 0" in failure_messages(bad)
    )


def test_predict_job_from_the_cli(served_instance, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    trained_instance = served_instance
    config = tmp_path / "predict.yaml"
    config.write_text(
        "ops:\n  predict_trip_durations:\n    config: {trips: [{PULocationID: 65, DOLocationID: 170, trip_distance: 6.54}]}\n"
    )
    home = Path(trained_instance.storage_directory()).resolve().parent
    before = {run.run_id for run in trained_instance.get_runs()}
    completed = subprocess.run(
        [
            Path(sys.executable).parent / "dagster",
            "job",
            "execute",
            "-m",
            "taxi_assets.definitions",
            "-j",
            "predict",
            "-c",
            str(config),
        ],
        env={**os.environ, "DAGSTER_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    [run] = [run for run in trained_instance.get_runs() if run.run_id not in before]
    assert run.job_name == "predict" and run.status == dg.DagsterRunStatus.SUCCESS, completed.stderr[-2000:]
    [output] = [
        entry.dagster_event
        for entry in trained_instance.all_logs(run.run_id)
        if entry.dagster_event and entry.dagster_event.event_type_value == "STEP_OUTPUT"
    ]
    assert 8 < output.event_specific_data.metadata["first_prediction_minutes"].value < 45


def test_automation_ships_as_documented(monkeypatch):
    monkeypatch.delenv("TAXI_SENSOR_INTERVAL_SECONDS", raising=False)
    sensor = build_defs().get_sensor_def("new_trip_data_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 2  # every pass of the daemon's 5 s loop
    assert hourly_retraining_schedule.cron_schedule == "0 * * * *"
    assert sensor.job_name == hourly_retraining_schedule.job_name == "retraining"


@pytest.mark.production  # retrainings of four months
def test_retraining_an_older_month_never_moves_what_serves(instance, tmp_path):
    """2024-02's decision, then a retraining of 2023-12: the MLflow champion alias, the server,
    load_model() and the predict job all still answer with 2024-02's decision."""
    from pathlib import Path

    import mlflow.pyfunc
    import pandas as pd

    import taxi_assets
    from taxi_assets_tests.helpers import SAMPLES, TINY_BUDGET, run_months
    from taxi_assets_tests.integration.test_serving import TOKEN, Client
    from taxi_assets_tests.servers import inference_server
    from taxi_assets_tests.stack import wait_for

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    everything = ["raw_trips", "cleaned_trips", "training_set", "sklearn_models", "xgboost_model", "production_model"]
    defs = build_defs(trip_source=LocalTripSource(directory=str(DATA_DIR)))
    job = defs.resolve_implicit_global_asset_job_def()

    def retrain(month, previous):
        assert run_months(instance, [previous], ["raw_trips", "cleaned_trips"])[0].success
        result = job.execute_in_process(
            instance=instance,
            partition_key=month,
            asset_selection=[dg.AssetKey(a) for a in everything],
            run_config=TINY_BUDGET,
            raise_on_error=False,
        )
        assert result.success, failure_messages(result)
        return result

    newest = retrain("2024-02", "2024-01").output_for_node("production_model")
    older = retrain("2023-12", "2023-11")
    [event] = [e for e in older.get_asset_materialization_events() if e.asset_key == dg.AssetKey("production_model")]
    assert event.materialization.metadata["serves"].value is False
    outcome = event.materialization.metadata["serving_outcome"].value
    assert outcome.startswith("left alone: 2024-02's decision is newer"), outcome

    # 1. The registry: the champion alias still points at the version 2024-02's decision chose.
    client = mlflow_client(instance)
    champion = client.get_model_version_by_alias(newest.registered_model, "champion")
    assert (str(champion.version), champion.tags["dagster.partition"]) == (newest.model_version, newest.model_partition)
    use_mlflow_store_of(instance)
    registry = mlflow.pyfunc.load_model(f"models:/{newest.registered_model}@champion")
    frame = pd.DataFrame(
        [{key: int(value) if key != "trip_distance" else value for key, value in trip.items()} for trip in SAMPLES]
    )
    from_registry = [float(value) for value in registry.predict(frame)]
    # 2. load_model()'s default.
    served = taxi_assets.load_model(instance=instance)
    assert served.partition == "2024-02"
    from_api = [float(value) for value in served.predict(SAMPLES)]
    # 3. The predict job.
    trips = {"trips": SAMPLES}
    predicted = defs.resolve_job_def("predict").execute_in_process(
        instance=instance, run_config={"ops": {"predict_trip_durations": {"config": trips}}}
    )
    from_job = predicted.output_for_node("predict_trip_durations")
    # 4. The server.
    home = Path(instance.storage_directory()).resolve().parent
    env = {**os.environ, "DAGSTER_HOME": str(home), "TAXI_API_TOKEN": TOKEN}
    with inference_server(env, tmp_path, "--reload-interval", "0") as (_, port):

        def answer():
            try:
                return Client(port).request("POST", "/predict", {"inputs": SAMPLES})
            except OSError:
                return None

        status, body = wait_for(answer, 120, "the server")
    assert (
        status == 200
        and body["model"]["partition"] == "2024-02"
        and str(body["model"]["version"]) == newest.model_version
    )
    for values in (from_registry, from_job, body["predictions"]):
        assert values == pytest.approx(from_api, abs=1e-3), (values, from_api)
