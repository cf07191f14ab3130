"""The retraining lifecycle under real use: `dg dev` (webserver, daemon, code server) on the
project's own dagster.yaml, the sensor on: a prepared month trained on the first tick, runs killed
and terminated mid-training, a touched file that starts nothing and a changed one that retrains
exactly the months that read it.

Everything runs from a working directory that is not the project's, with DAGSTER_HOME pointing
at a temporary copy of the project's instance config: state must follow DAGSTER_HOME. The
sensor's retrainings use small budgets (TAXI_RETRAINING_RUN_CONFIG).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from taxi_assets.lib.tracking import open_client
from taxi_assets_tests.helpers import DATA_DIR, REPO_ROOT, TINY_BUDGET
from taxi_assets_tests.stack import GraphQL, Processes, run_command, wait_for

# dg dev (webserver, daemon, code server) and runs launched through it: the long tier, beside the
# production-like stack (`pytest -m production`, .ci/run's last step).
pytestmark = pytest.mark.production

BIN = Path(sys.executable).parent
# Trees as deep and slow as the course's space allows: a trial that is still boosting when
# something happens to its run.
DEEPEST = {"max_depth": 100, "num_boost_round": 1000, "learning_rate": 0.05, "min_child_weight": 0.37}
ONE_LINEAR_MODEL = {"ops": {"load_models": {"config": {"models": ["LinearRegression"], "max_evaluations": 1}}}}


def deep_xgboost(seconds: float) -> dict:
    return {
        "config": {
            "timeout_seconds": seconds,
            "max_evaluations": 3,
            "start_from_known_good": False,
            "early_stopping_rounds": 1000,
            "fixed_params": DEEPEST,
        }
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("lifecycle")
    home, data, elsewhere = root / "home", root / "trips", root / "somewhere-else"
    for folder in (home, data / "2024", elsewhere):
        folder.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    for month in ("01", "02"):
        shutil.copy(DATA_DIR / "2024" / f"{month}.parquet", data / "2024" / f"{month}.parquet")
    tiny = root / "retraining.yaml"
    tiny.write_text(yaml.safe_dump(TINY_BUDGET.to_config_dict()))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TAXI_", "DAGSTER_", "MLFLOW_"))} | {
        "DAGSTER_HOME": str(home),
        "TAXI_DATA_DIR": str(data),
        "TAXI_SENSOR_INTERVAL_SECONDS": "2",  # the default: every pass of the daemon (5 s)
        "TAXI_RETRAINING_RUN_CONFIG": str(tiny),
        "VIRTUAL_ENV": str(BIN.parent),  # the project's environment, as `source .venv/bin/activate` sets it
    }
    # README command 1: 2024-02 prepared by hand (and 2024-01's trips), no model, from another folder.
    prepared = run_command(
        [BIN / "taxi-assets", "materialize", "--partition", "2024-02"],
        1800,
        cwd=elsewhere,
        env=env,
    )
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    processes = Processes(root, env)

    def graphql_at(port: int) -> GraphQL:
        return GraphQL(f"http://127.0.0.1:{port}")

    def up(port: int) -> bool:
        try:
            return graphql_at(port).location_loaded()
        except OSError:
            return False

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(home))
        try:
            port = processes.start_on_a_free_port(
                "dg-dev",
                lambda port: [
                    str(BIN / "dg"),
                    "dev",
                    "--target-path",
                    str(REPO_ROOT),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                ],
                up,
                timeout=240,
                cwd=elsewhere,
            )
            graphql = graphql_at(port)
            with dg.DagsterInstance.get() as instance:
                yield {
                    "graphql": graphql,
                    "instance": instance,
                    "home": home,
                    "data": data,
                    "env": env,
                    "elsewhere": elsewhere,
                    "processes": processes,
                    # Under the store's lock: the sensor's first step may be migrating it.
                    "mlflow": open_client(f"sqlite:///{home}/.dagster_home/mlflow/mlflow.db"),
                }
        finally:
            processes.stop_all()
    # Nothing was written where the commands ran.
    assert list(elsewhere.iterdir()) == [], list(elsewhere.iterdir())


def events(instance, run_id, event_type: dg.DagsterEventType):
    return [(record.dagster_event, record.timestamp) for record in instance.all_logs(run_id, of_type=event_type)]


def step_pid(instance, run_id, step_key) -> int | None:
    """The process of ``step_key`` in ``run_id``, once the step has started."""
    started = [
        event.pid for event, _ in events(instance, run_id, dg.DagsterEventType.STEP_START) if event.step_key == step_key
    ]
    return started[0] if started else None


def fitting(instance, client, run_id, step_key, mlflow_run_name):
    """The step's pid once it is inside a fit: its MLflow parent run (``mlflow_run_name``) is
    RUNNING with a trial run RUNNING under it. An event to wait for, not a number of seconds
    after the step started that stands in for it."""
    pid = step_pid(instance, run_id, step_key)
    if pid is None:
        return None
    runs = mlflow_runs(client, run_id)
    parents = [r.info.run_id for r in runs if r.info.run_name == mlflow_run_name and r.info.status == "RUNNING"]
    trials = [
        r
        for r in runs
        if "trial" in r.data.tags and r.info.status == "RUNNING" and r.data.tags.get("mlflow.parentRunId") in parents
    ]
    return pid if trials else None


def mlflow_runs(client, run_id):
    experiment = client.get_experiment_by_name("taxi-duration")
    if experiment is None:  # no step has opened the store yet
        return []
    return client.search_runs([experiment.experiment_id], f"tags.`dagster.run_id` = '{run_id}'", max_results=500)


def finished(instance, run_id):
    run = instance.get_run_by_id(run_id)
    return (
        run
        if run.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
        else None
    )


def sensor_runs(instance, after: float = 0.0):
    """Runs the new-data sensor asked for (after a time), oldest first."""
    runs = instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/sensor_name": "new_trip_data_sensor"}))
    return sorted((r for r in runs if r.create_timestamp.timestamp() > after), key=lambda r: r.create_timestamp)


def all_finished(instance, records) -> bool:
    return all(finished(instance, record.dagster_run.run_id) for record in records)


def test_the_sensors_first_tick_trains_the_prepared_month(stack):
    """2024-02 was prepared by hand and has no model: the first tick retrains it (2024-01, never
    trained either, is left alone until its file changes). Nothing else is asked for."""
    instance = stack["instance"]
    [record] = wait_for(lambda: sensor_runs(instance), 300, "the sensor's first run")
    run = wait_for(lambda: finished(instance, record.dagster_run.run_id), 900, "the sensor's retraining of 2024-02")
    assert run.status == dg.DagsterRunStatus.SUCCESS, run.run_id
    assert run.tags["dagster/partition"] == "2024-02" and run.tags["taxi_assets/retrain_month"] == "2024-02"
    [decision] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("production_model"), asset_partitions=["2024-02"]), limit=1
    ).records
    assert decision.run_id == run.run_id
    assert [r.dagster_run.run_id for r in sensor_runs(instance)] == [run.run_id]


def test_killed_run_worker_is_failed_mlflow_runs_ended_and_month_retried(stack):
    instance, client = stack["instance"], stack["mlflow"]
    run_config = {
        "ops": {
            "sklearn_models": ONE_LINEAR_MODEL,
            "xgboost_model": deep_xgboost(20),
            "production_model": {"config": {"timeout_seconds": 30}},
        }
    }
    run_id = stack["graphql"].launch(
        "retraining",
        {"dagster/partition": "2024-02", "taxi_assets/retrain_month": "2024-02"},
        run_config,
        assets=["sklearn_models", "xgboost_model", "production_model"],
    )
    xgboost_pid = wait_for(
        lambda: fitting(instance, client, run_id, "xgboost_model", "xgboost-2024-02"), 300, "XGBoost to be boosting"
    )
    [(run_start, _)] = events(instance, run_id, dg.DagsterEventType.RUN_START)
    # The run worker and its XGBoost step process die at once (an OOM kill, a lost machine).
    os.kill(xgboost_pid, signal.SIGKILL)
    os.kill(run_start.pid, signal.SIGKILL)

    # The code server that launched the worker marks the run FAILED; run retries will re-run it.
    # Dagster stores the failure, then tags dagster/will_retry in a second write: wait for both.
    def failed_and_judged():
        run = finished(instance, run_id)
        return run if run and "dagster/will_retry" in run.tags else None

    failed = wait_for(failed_and_judged, 180, "the killed run to be marked finished and its retry decided")
    assert failed.status == dg.DagsterRunStatus.FAILURE
    assert failed.tags["dagster/will_retry"] == "true"
    # No MLflow run is left RUNNING: the failure sensor ended them.
    wait_for(
        lambda: not any(r.info.status == "RUNNING" for r in mlflow_runs(client, run_id)), 180, "MLflow runs to end"
    )
    statuses = {r.info.run_name: r.info.status for r in mlflow_runs(client, run_id) if "trial" not in r.data.tags}
    assert statuses["xgboost-2024-02"] == "FAILED", statuses

    # The daemon re-executes it (whole: see RETRAINING_RUN_TAGS), and the month is retrained.
    def retry():
        runs = [run for run in instance.get_runs() if run.tags.get("dagster/parent_run_id") == run_id]
        return runs and finished(instance, runs[0].run_id)

    retried = wait_for(retry, 600, "the retry of the killed run")
    assert retried.status == dg.DagsterRunStatus.SUCCESS
    assert retried.tags["dagster/retry_number"] == "1"
    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("production_model"), asset_partitions=["2024-02"]), limit=1
    ).records
    assert record.run_id == retried.run_id
    assert not any(r.info.status == "RUNNING" for r in mlflow_runs(client, retried.run_id))


def test_terminate_from_the_ui_cancels_training_within_seconds(stack):
    instance, client = stack["instance"], stack["mlflow"]
    forest = {
        "ops": {
            "load_models": {
                "config": {"models": ["RandomForestRegressor"], "max_evaluations": 10, "timeout_seconds": 300}
            }
        }
    }
    run_id = stack["graphql"].launch(
        "retraining",
        {"dagster/partition": "2024-02"},
        {"ops": {"sklearn_models": forest, "xgboost_model": deep_xgboost(300)}},
        assets=["sklearn_models", "xgboost_model"],
    )
    forest_step = "sklearn_models.tune_and_train[RandomForestRegressor]"
    # Both inside a fit: XGBoost boosting, the forest growing, each in a trial with its MLflow run open.
    xgb_pid = wait_for(
        lambda: fitting(instance, client, run_id, "xgboost_model", "xgboost-2024-02"), 300, "XGBoost to be boosting"
    )
    forest_pid = wait_for(
        lambda: fitting(instance, client, run_id, forest_step, "RandomForestRegressor-2024-02"),
        300,
        "the forest to be growing",
    )
    asked = time.time()
    # What the UI's Terminate button sends.
    assert stack["graphql"].terminate(run_id) == "TerminateRunSuccess"
    run = wait_for(lambda: finished(instance, run_id), 180, "the terminated run to end")
    assert run.status == dg.DagsterRunStatus.CANCELED
    ended = {event.step_key: at for event, at in events(instance, run_id, dg.DagsterEventType.STEP_FAILURE)}
    assert set(ended) == {"xgboost_model", forest_step}
    assert all(at - asked < 10 for at in ended.values()), {key: round(at - asked, 1) for key, at in ended.items()}
    assert not Path(f"/proc/{xgb_pid}").exists() and not Path(f"/proc/{forest_pid}").exists()
    runs = mlflow_runs(client, run_id)
    parents = {r.info.run_name: r.info.status for r in runs if "trial" not in r.data.tags}
    assert parents == {"xgboost-2024-02": "KILLED", "RandomForestRegressor-2024-02": "KILLED"}
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}


def test_sigterm_to_a_materialize_process_cancels_it(stack):
    """`dagster asset materialize` runs in its own process: SIGTERM (or Ctrl-C) stops the
    boosting between two rounds; the run ends CANCELED and its MLflow runs KILLED."""
    instance, client = stack["instance"], stack["mlflow"]
    config = stack["home"] / "deep.yaml"
    config.write_text(
        "ops:\n  xgboost_model:\n    config: {timeout_seconds: 300, max_evaluations: 3, start_from_known_good: false, "
        "early_stopping_rounds: 1000, fixed_params: {max_depth: 100, num_boost_round: 1000, learning_rate: 0.05, min_child_weight: 0.37}}\n"
    )
    before = {run.run_id for run in instance.get_runs()}
    process = subprocess.Popen(
        [
            BIN / "dagster",
            "asset",
            "materialize",
            "-m",
            "taxi_assets.definitions",
            "--select",
            "xgboost_model",
            "--partition",
            "2024-02",
            "-c",
            str(config),
        ],
        cwd=stack["elsewhere"],
        env=stack["env"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def boosting():
            # This command's run (the daily schedule may add runs of its own), inside a fit.
            runs = [
                run.run_id
                for run in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": "2024-02"}))
                if run.run_id not in before and run.job_name == "__ASSET_JOB"
            ]
            return runs and fitting(instance, client, runs[0], "xgboost_model", "xgboost-2024-02") and runs[0]

        run_id = wait_for(boosting, 300, "the materialization to be boosting")
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        assert time.monotonic() - sent < 10
    finally:
        process.kill()
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.CANCELED
    assert {r.info.status for r in mlflow_runs(client, run_id)} == {"KILLED"}


def test_dg_dev_printed_no_avoidable_warning(stack):
    """The sensor ticked (every 5 s) without failing, and dg dev printed no warning the project
    could avoid."""
    instance = stack["instance"]
    [state] = [state for state in instance.all_instigator_state() if state.name == "new_trip_data_sensor"]
    ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
    assert ticks and all(tick.status.value in ("SKIPPED", "SUCCESS") for tick in ticks), ticks
    log = (stack["home"].parent / "dg-dev.log").read_text(errors="replace")
    warnings = [line for line in log.splitlines() if "WARNING" in line or "Warning:" in line]
    # Left: Dagster's own first-start notes about its event-log cursors, and (this test's doing)
    # that the project folder's dagster.yaml is not the instance's: DAGSTER_HOME is a copy here,
    # where the README's `DAGSTER_HOME=$PWD` points at the project itself.
    expected = (
        "No cursor for event type",
        "Found a dagster instance configuration value (dagster.yaml) in the current folder",
    )
    avoidable = [line for line in warnings if not any(text in line for text in expected)]
    assert avoidable == [], avoidable


def test_a_touched_file_starts_nothing_and_a_changed_one_retrains_the_months_that_read_it(stack):
    """Same bytes with a new modification time: the same version, no run. 2024-01's content
    changes: the sensor prepares 2024-01 again (it has no previous month here) and then retrains
    2024-02, whose training set reads January's trips; nothing else."""
    instance, data = stack["instance"], stack["data"]
    [state] = [state for state in instance.all_instigator_state() if state.name == "new_trip_data_sensor"]

    def ticks_since(when: float) -> int:
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
        return sum(1 for tick in ticks if tick.timestamp > when)

    february = data / "2024" / "02.parquet"
    stat = february.stat()
    os.utime(february, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    touched = time.time()
    wait_for(lambda: ticks_since(touched) >= 2, 300, "two sensor ticks after the touch")  # events, not seconds
    assert sensor_runs(instance, after=touched) == []

    january = data / "2024" / "01.parquet"
    trips = pd.read_parquet(january)
    trips.loc[0, "trip_distance"] += 0.01
    trips.to_parquet(january)
    changed = time.time()

    def both_done():
        runs = sensor_runs(instance, after=changed)
        return runs if len(runs) >= 2 and all_finished(instance, runs) else None

    runs = wait_for(both_done, 1200, "the sensor's runs for the changed file")
    assert [(r.dagster_run.tags["dagster/partition"], r.dagster_run.status) for r in runs] == [
        ("2024-01", dg.DagsterRunStatus.SUCCESS),
        ("2024-02", dg.DagsterRunStatus.SUCCESS),
    ]
    assert runs[0].dagster_run.asset_selection == {dg.AssetKey(a) for a in ("trip_files", "raw_trips", "cleaned_trips")}
    assert dg.AssetKey("training_set") in runs[1].dagster_run.asset_selection
    assert "training_set unsynced" in runs[1].dagster_run.tags["taxi_assets/retrain_reason"]
    # And then nothing more: two further ticks ask for nothing.
    done = time.time()
    wait_for(lambda: ticks_since(done) >= 2, 300, "two sensor ticks after the retraining")
    assert sensor_runs(instance, after=done) == []


def test_launchpad_forms_show_defaults_and_refuse_bad_config(stack):
    """What the Launchpad opens with (GraphQL's rootDefaultYaml) shows every default, including
    the model list; the predict job's schema requires its trips, so Dagster refuses a run
    without them at launch, before anything runs or alerts."""
    import yaml

    graphql = stack["graphql"]
    selector = {"repositoryLocationName": "taxi_assets", "repositoryName": "__repository__"}
    answer = graphql(
        """query($selector: PipelineSelector!) { runConfigSchemaOrError(selector: $selector) {
             __typename ... on RunConfigSchema { rootDefaultYaml } } }""",
        {"selector": {**selector, "pipelineName": "retraining"}},
    )["runConfigSchemaOrError"]
    defaults = yaml.safe_load(answer["rootDefaultYaml"])["ops"]
    assert defaults["sklearn_models"]["ops"]["load_models"]["config"]["models"] == ["LinearRegression", "Lasso"]
    assert (
        defaults["xgboost_model"]["config"]["fixed_params"] == {}
        and defaults["xgboost_model"]["config"]["timeout_seconds"] == 30
        and defaults["xgboost_model"]["config"]["warm_start"] is True
    )
    assert defaults["production_model"]["config"] == {"timeout_seconds": 60.0, "tolerance_minutes": 0.0}

    refused = graphql(
        """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
             __typename ... on RunConfigValidationInvalid { errors { message } } } }""",
        {"params": {"selector": {**selector, "jobName": "predict"}, "runConfigData": {}}},
    )["launchRun"]
    assert refused["__typename"] == "RunConfigValidationInvalid", refused
    assert any("trips" in error["message"] for error in refused["errors"]), refused
    refused = graphql(
        """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
             __typename ... on RunConfigValidationInvalid { errors { message } } } }""",
        {"params": {"selector": {**selector, "jobName": "retraining"},
                    "runConfigData": {"ops": {"sklearn_models": {"ops": {"load_models": {"config": {"models": ["MagicForest"]}}}}}}}},
    )["launchRun"]  # fmt: skip
    assert refused["__typename"] == "RunConfigValidationInvalid" and "MagicForest" in str(refused["errors"])
    resources = graphql(
        """query($selector: RepositorySelector!) { repositoryOrError(repositorySelector: $selector) {
             ... on Repository { allTopLevelResourceDetails { name description } } } }""",
        {"selector": selector},
    )["repositoryOrError"]["allTopLevelResourceDetails"]
    assert {resource["name"] for resource in resources} >= {"trip_source", "io_manager", "mlflow", "alerts"}
    assert all("`" not in (resource["description"] or "") for resource in resources), resources
