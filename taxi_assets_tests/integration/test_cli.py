"""The command line as a user runs it, against the project's own dagster.yaml."""

import os
import shutil
import sys
from pathlib import Path

import dagster as dg
import pytest

from taxi_assets.lib.model_store import read_value
from taxi_assets_tests.helpers import COURSE_SHAPES, DATA_DIR, REPO_ROOT
from taxi_assets_tests.stack import run_command

BIN = Path(sys.executable).parent


@pytest.fixture
def project_home(tmp_path, monkeypatch):
    """A folder set up like the README's: DAGSTER_HOME with the project's dagster.yaml. Commands
    run from another folder (``elsewhere``), which must stay empty: state follows DAGSTER_HOME."""
    home = tmp_path / "project"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # this process reads the same instance
    yield home
    assert list((tmp_path / "elsewhere").iterdir()) == []


def run(args, home: Path, data_dir: Path = DATA_DIR, env: dict | None = None):
    # Not this process's MLFLOW_TRACKING_URI: in-process runs of other tests set it (MLflow's
    # set_tracking_uri writes the environment); a user's shell would not have it.
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env = {**inherited, "DAGSTER_HOME": str(home), "TAXI_DATA_DIR": str(data_dir), **(env or {})}
    return run_command(args, 1800, cwd=home.parent / "elsewhere", env=env)


def runs_by_status(home: Path):
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return [(run.status, run.tags.get("dagster/partition")) for run in reversed(instance.get_runs())]


@pytest.mark.production  # the long tier: a chain of CLI processes
def test_dagster_asset_materialize_cli(project_home):
    first = run(
        [
            BIN / "dagster",
            "asset",
            "materialize",
            "-m",
            "taxi_assets.definitions",
            "--select",
            "raw_trips,cleaned_trips",
            "--partition",
            "2024-01",
        ],
        project_home,
    )
    second = run(
        [
            BIN / "dagster",
            "asset",
            "materialize",
            "-m",
            "taxi_assets.definitions",
            "--select",
            "raw_trips,cleaned_trips,training_set",
            "--partition",
            "2024-02",
        ],
        project_home,
    )
    # Judge by the runs the instance recorded, not the CLI's exit code (it can be 0 on failure).
    assert runs_by_status(project_home) == [
        (dg.DagsterRunStatus.SUCCESS, "2024-01"),
        (dg.DagsterRunStatus.SUCCESS, "2024-02"),
    ], first.stderr[-3000:] + second.stderr[-3000:]
    # The project's dagster.yaml was the instance config: state under .dagster_home/.
    assert (project_home / ".dagster_home" / "history" / "runs.db").is_file()
    assert (project_home / ".dagster_home" / "storage" / "training_set" / "2024-02").is_file()
    with dg.DagsterInstance.from_config(str(project_home)) as instance:
        dataset = read_value(instance, "training_set", "2024-02")
        assert dataset.shapes() == COURSE_SHAPES
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("training_set"), "rows_match_cleaned_months"), limit=5
        )
        assert [record.status.value for record in checks] == ["SUCCEEDED"]


@pytest.mark.production  # the long tier: a chain of CLI processes
def test_taxi_assets_materialize_reports_and_exits_by_outcome(project_home, tmp_path):
    ok = run([BIN / "taxi-assets", "materialize", "--partition", "2024-02"], project_home)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The previous month is materialized first because training_set needs it.
    assert "2024-02 needs cleaned_trips for 2024-01; materializing it first" in ok.stdout
    assert "for 2024-02: SUCCESS" in ok.stdout
    assert "training_set             materialized" in ok.stdout
    assert "check training_set.rows_match_cleaned_months" in ok.stdout
    assert " - DEBUG - " not in ok.stdout + ok.stderr
    verbose = run(
        [BIN / "taxi-assets", "materialize", "--partition", "2024-02", "--no-previous-month", "--verbose"], project_home
    )
    assert verbose.returncode == 0 and " - DEBUG - " in verbose.stdout + verbose.stderr  # the whole event log

    # No model served before 2024-02: scoring it had nothing to do, and says so (nothing failed).
    selection = ["--select", "raw_trips,cleaned_trips,trip_predictions", "--no-previous-month"]
    unscored = run([BIN / "taxi-assets", "materialize", "--partition", "2024-02", *selection], project_home)
    assert unscored.returncode == 0, unscored.stdout + unscored.stderr
    assert "trip_predictions         nothing to materialize: trip_predictions 2024-02: no production decision" in (
        unscored.stdout
    )

    broken = tmp_path / "broken"
    (broken / "2024").mkdir(parents=True)
    (broken / "2024" / "02.parquet").write_bytes(b"PAR1 truncated")
    failed = run([BIN / "taxi-assets", "materialize", "--partition", "2024-02"], project_home, data_dir=broken)
    assert failed.returncode == 1
    assert "for 2024-02: FAILURE" in failed.stdout
    assert "raw_trips                FAILED: raw_trips partition 2024-02:" in failed.stdout
    assert "not a readable Parquet file" in failed.stdout
    assert runs_by_status(project_home)[-1] == (dg.DagsterRunStatus.FAILURE, "2024-02")

    usage = run([BIN / "taxi-assets", "materialize", "--partition", "2024-13"], project_home)
    assert usage.returncode != 0 and "unknown partition '2024-13'" in usage.stderr + usage.stdout


@pytest.mark.production  # the long tier: Dagster's CLIs loading the code location
def test_dagster_definitions_validate_and_dg_check_defs(project_home):
    result = run([BIN / "dagster", "definitions", "validate", "-w", REPO_ROOT / "workspace.yaml"], project_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr
    # The dg CLI, from the project (it finds definitions.py through pyproject.toml's [tool.dg]).
    checked = run_command(
        [BIN / "dg", "check", "defs"],
        1800,
        cwd=REPO_ROOT,
        env={**os.environ, "DAGSTER_HOME": str(project_home), "VIRTUAL_ENV": str(BIN.parent)},
    )
    assert checked.returncode == 0 and "All definitions loaded successfully" in checked.stdout + checked.stderr, (
        checked.stderr
    )
    launched = run_command(
        [BIN / "dg", "launch", "--assets", "raw_trips,cleaned_trips", "--partition", "2024-01"],
        1800,
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "DAGSTER_HOME": str(project_home),
            "VIRTUAL_ENV": str(BIN.parent),
            "TAXI_DATA_DIR": str(DATA_DIR),
        },
    )
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert runs_by_status(project_home)[-1] == (dg.DagsterRunStatus.SUCCESS, "2024-01")


@pytest.mark.production  # the whole chain through the CLI's processes
def test_state_follows_dagster_home_from_any_folder(project_home):
    """The README's set-up, then the CLI, load_model and the server from another folder: all see
    the same instance, and none creates anything where it runs (the fixture checks)."""
    from taxi_assets_tests.helpers import TINY_BUDGET

    config = project_home / "tiny.yaml"
    import yaml

    config.write_text(yaml.safe_dump(TINY_BUDGET.to_config_dict()))
    trained = run(
        [
            BIN / "taxi-assets",
            "materialize",
            "--partition",
            "2024-02",
            "--config",
            str(config),
            "--select",
            "raw_trips,cleaned_trips,training_set,sklearn_models,xgboost_model,production_model",
        ],
        project_home,
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    # What it prints: a line per asset and check, progress lines for the trials, nothing else:
    # no Dagster DEBUG events, no MLflow chatter (registrations, progress bars, pickling warnings).
    output = trained.stdout + trained.stderr
    for asset in ("raw_trips", "cleaned_trips", "training_set", "sklearn_models", "xgboost_model", "production_model"):
        assert f"  {asset:<24} materialized" in output
    assert "check production_model.model_freshness" in output
    assert "xgboost 2024-02: trial 1 of 1: RMSE" in output and "LinearRegression 2024-02: trial 1 of 1: RMSE" in output
    for noise in (" - DEBUG - ", "CloudPickle", "Successfully registered", "Downloading artifacts", "WARNING"):
        assert noise not in output, noise
    # The same progress is in the Dagster log, so the UI's run view shows it.
    with dg.DagsterInstance.from_config(str(project_home)) as instance:
        [retraining] = [r for r in instance.get_runs() if r.job_name == "retraining"]
        messages = [entry.user_message for entry in instance.all_logs(retraining.run_id) if entry.dagster_event is None]
    assert any("xgboost 2024-02: trial 1 of 1" in message for message in messages)
    assert (project_home / ".dagster_home" / "history" / "runs.db").is_file()
    assert (project_home / ".dagster_home" / "mlflow" / "mlflow.db").is_file()
    loaded = run(
        [
            sys.executable,
            "-c",
            "import taxi_assets; m = taxi_assets.load_model('xgboost'); "
            "print(m.partition, taxi_assets.load_model().partition)",
        ],
        project_home,
    )
    assert loaded.returncode == 0 and loaded.stdout.split() == ["2024-02", "2024-02"], loaded.stderr[-2000:]
    # The server refuses a short token, and starts (and answers) with a long one.
    short = run([BIN / "taxi-assets", "serve", "--port", "1"], project_home, env={"TAXI_API_TOKEN": "x" * 15})
    assert short.returncode != 0 and "use at least 16" in short.stderr
    from taxi_assets_tests.integration.test_serving import TOKEN, Client
    from taxi_assets_tests.servers import inference_server
    from taxi_assets_tests.stack import wait_for

    env = {**os.environ, "DAGSTER_HOME": str(project_home), "TAXI_API_TOKEN": TOKEN}
    with inference_server(env, project_home.parent / "elsewhere") as (_, port):

        def health():
            try:
                return Client(port).request("GET", "/health")
            except OSError:
                return None

        status, body = wait_for(health, 120, "the server")
    assert status == 200 and body["model"]["partition"] == "2024-02"


def test_help_is_plain_text_and_lists_the_assets(project_home):
    usage = run([BIN / "taxi-assets", "--help"], project_home)
    materialize = run([BIN / "taxi-assets", "materialize", "--help"], project_home)
    serve = run([BIN / "taxi-assets", "serve", "--help"], project_home)
    for text in (usage.stdout, materialize.stdout, serve.stdout):
        assert "``" not in text and "`" not in text
    flat = " ".join(materialize.stdout.split())
    for asset in ("raw_trips", "cleaned_trips", "training_set", "sklearn_models", "xgboost_model", "production_model"):
        assert asset in flat
    assert "--port PORT port to listen on (default 8000; 0: any free port)" in " ".join(serve.stdout.split())
    missing = run(
        [BIN / "taxi-assets", "materialize", "--partition", "2024-02", "--config", "nowhere.yaml"], project_home
    )
    assert missing.returncode == 2 and "cannot read the run config nowhere.yaml" in missing.stderr
