"""Operators steer what serves, through the one truth (the record first, then the pointer and the
alias): rollback and promote from the CLI as a user runs them, a pin that holds against the next
month, approval before a challenger goes live (one email), the next month's judgement of a
promotion, a kill in the middle of a promotion, and a promotion racing a retraining.

Two months are trained on small samples of the real files: 2023-11 (model A, the first to serve)
and 2023-12 (model B, promoted by a tolerance that always promotes); 2024-01's models are
trained, its decision left to each test. The judge also runs as users run it: dagster-daemon with
the promotion_judge sensor on, and `taxi-assets materialize` landing the next month's
trip_predictions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from taxi_assets.definitions import build_defs
from taxi_assets.lib.sources import LocalTripSource
from taxi_assets.ml.retraining import CHAIN
from taxi_assets_tests.helpers import NO_TIME_LIMIT, REPO_ROOT, SAMPLES, TINY_BUDGET, materializer, sampled_months
from taxi_assets_tests.integration.test_observability import alerts_for
from taxi_assets_tests.integration.test_publishing import assert_all_serve, decision, what_each_reader_serves
from taxi_assets_tests.integration.test_serving import Client
from taxi_assets_tests.servers import SmtpServer, inference_server
from taxi_assets_tests.stack import Processes, wait_for

# Four months trained, CLI processes and a daemon (about 5 minutes): the long tier.
pytestmark = pytest.mark.production

BIN = Path(sys.executable).parent
PROMOTES = {"tolerance_minutes": 1000.0, "timeout_seconds": NO_TIME_LIMIT}  # the month's model always wins
MONTHS = ["2023-10", "2023-11", "2023-12", "2024-01"]


def budget(**production) -> dg.RunConfig:
    ops = dict(TINY_BUDGET.ops)
    ops["production_model"] = {"config": {**PROMOTES, **production}}
    return dg.RunConfig(ops=ops)


def build_base(root: Path, corrupt_november: bool = False) -> Path:
    """The instance of the module's docstring under ``root/home``; trips under ``root/trips``.
    ``corrupt_november``: November's trips took 2.5 times as long, so the model trained on them
    (2023-12's, model B) is clearly worse than A on every later month."""
    folder = sampled_months(root / "trips", MONTHS)
    if corrupt_november:
        path = folder / "2023" / "11.parquet"
        trips = pd.read_parquet(path)
        taken = trips["lpep_dropoff_datetime"] - trips["lpep_pickup_datetime"]
        trips["lpep_dropoff_datetime"] = trips["lpep_pickup_datetime"] + taken * 2.5
        trips.to_parquet(path)
    (root / "home").mkdir()
    job = build_defs(trip_source=LocalTripSource(directory=str(folder))).resolve_implicit_global_asset_job_def()
    with dg.instance_for_test(temp_dir=str(root / "home"), overrides={"nux": {"enabled": False}}) as instance:
        run = materializer(job, instance)
        run("2023-10", ["trip_files", "raw_trips", "cleaned_trips"])
        run("2023-11", ["trip_files", *CHAIN], budget())
        run("2023-12", ["trip_files", *CHAIN], budget())
        run("2024-01", ["trip_files", *CHAIN[:-1]], budget())
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return build_base(tmp_path_factory.mktemp("steering"))


@pytest.fixture
def copy(base, tmp_path):
    """A copy of the base instance (its MLflow store inside), opened; its trips; its home."""
    shutil.copytree(base / "home", tmp_path / "home")
    with dg.instance_for_test(temp_dir=str(tmp_path / "home"), overrides={"nux": {"enabled": False}}) as instance:
        yield instance, base / "trips", tmp_path / "home"


def user_env(home: Path, trips: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TAXI_SMTP", "TAXI_ALERT"))}
    return env | {"DAGSTER_HOME": str(home), "TAXI_DATA_DIR": str(trips), **extra}


def taxi_assets(home: Path, trips: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, from another folder."""
    elsewhere = home.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    return subprocess.run(
        [BIN / "taxi-assets", *args], env=user_env(home, trips, **extra), cwd=elsewhere, capture_output=True,
        text=True, timeout=900,
    )  # fmt: skip


def decide(instance, trips: Path, month: str, resources: dict | None = None, **production):
    job = build_defs(trip_source=LocalTripSource(directory=str(trips)), **(resources or {}))
    return materializer(job.resolve_implicit_global_asset_job_def(), instance)(
        month, ["production_model"], budget(**production)
    )


def steering_records(instance) -> list:
    return instance.fetch_materializations(dg.AssetKey("serving_decision"), limit=100, ascending=True).records


def test_rollback_serves_the_model_before_everywhere_within_seconds_and_lineage_says_why(copy):
    instance, trips, home = copy
    a, b = decision(instance, "2023-11"), decision(instance, "2023-12")
    assert a[0] != b[0] and a[1] != b[1], "the test needs two different models"
    assert_all_serve(what_each_reader_serves(instance), b)

    env = user_env(home, trips, TAXI_API_TOKEN="t" * 24)
    with inference_server(env, home.parent, "--reload-interval", "0.5") as (_, port):

        def answer():
            try:
                status, body = Client(port).request("POST", "/predict", {"inputs": SAMPLES}, token="t" * 24)
            except OSError:
                return None
            return tuple(round(float(v), 4) for v in body["predictions"]) if status == 200 else None

        assert wait_for(answer, 120, "the server to serve B") == b[0]
        done = taxi_assets(home, trips, "rollback", "--reason", "B mispredicts airport trips", "--by", "ana")
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"serving: {a[1][0]} v{a[1][1]} (pinned)" in done.stdout, done.stdout
        switched = time.monotonic()
        wait_for(lambda: answer() == a[0], 120, "the running server to serve A")
        print(f"the running server served A {time.monotonic() - switched:.1f} s after rollback returned")
    assert_all_serve(what_each_reader_serves(instance), a)

    lineage = taxi_assets(home, trips, "lineage", a[1][0], a[1][1])
    assert lineage.returncode == 0, lineage.stderr[-3000:]
    assert "rollback by ana" in lineage.stdout and "B mispredicts airport trips" in lineage.stdout, lineage.stdout
    status = taxi_assets(home, trips, "serving")
    assert f"serving: {a[1][0]} v{a[1][1]}" in status.stdout and "pinned by ana" in status.stdout, status.stdout

    # The next month is scored by what served when it arrived: A, after the rollback.
    job = build_defs(trip_source=LocalTripSource(directory=str(trips))).resolve_implicit_global_asset_job_def()
    materializer(job, instance)("2024-01", ["trip_predictions"])
    [record] = instance.fetch_materializations(dg.AssetKey("trip_predictions"), limit=1).records
    assert record.asset_materialization.metadata["model"].value == f"{a[1][0]} v{a[1][1]}"
    assert record.asset_materialization.metadata["shadow_model"].value == f"{b[1][0]} v{b[1][1]}"


def register_a_version_that_does_not_load(instance, folder: Path) -> str:
    """A new version of taxi-duration-xgboost whose source holds no model; its version number."""
    from taxi_assets.lib.tracking import open_client, tracking_uri_for

    folder.mkdir()
    (folder / "README.txt").write_text("not a model\n")
    client = open_client(tracking_uri_for(instance))
    return str(client.create_model_version("taxi-duration-xgboost", source=folder.as_uri()).version)


def test_promote_of_a_missing_or_broken_version_fails_naming_it_and_a_pin_holds_until_unpinned(copy):
    instance, trips, home = copy
    a, b = decision(instance, "2023-11"), decision(instance, "2023-12")
    missing = taxi_assets(home, trips, "promote", "xgboost", "99", "--reason", "try")
    assert missing.returncode == 1
    assert "taxi-duration-xgboost has no version '99' (registered versions: " in missing.stderr, missing.stderr
    nonsense = taxi_assets(home, trips, "promote", "NoSuchModel", "1", "--reason", "try")
    assert nonsense.returncode == 1 and "NoSuchModel" in nonsense.stderr, nonsense.stderr
    # A version that is registered but whose files are not a model (a folder with a note in it).
    broken = register_a_version_that_does_not_load(instance, home.parent / "not-a-model")
    unloadable = taxi_assets(home, trips, "promote", "xgboost", broken, "--reason", "try")
    assert unloadable.returncode == 1, unloadable.stdout
    assert f"taxi-duration-xgboost v{broken} cannot serve: it does not load" in unloadable.stderr, unloadable.stderr
    assert steering_records(instance) == []  # nothing recorded, nothing moved
    assert_all_serve(what_each_reader_serves(instance), b)

    pinned = taxi_assets(home, trips, "promote", a[1][0], a[1][1], "--reason", "audit of B")
    assert pinned.returncode == 0, pinned.stderr[-3000:]
    assert_all_serve(what_each_reader_serves(instance), a)
    # 2024-01's decision would promote its own model: it records its figures and the pin holds.
    held = decide(instance, trips, "2024-01")
    metadata = held.asset_materializations_for_node("production_model")[0].metadata
    assert metadata["serves"].value is False and metadata["serving_outcome"].value.startswith("held:"), metadata
    assert_all_serve(what_each_reader_serves(instance), a)

    assert taxi_assets(home, trips, "promote", "--unpin", "--reason", "audit done").returncode == 0
    assert_all_serve(what_each_reader_serves(instance), a)  # unpinning moves nothing by itself
    decide(instance, trips, "2024-01")  # the month decided again, now unpinned: its model serves
    assert_all_serve(what_each_reader_serves(instance), decision(instance, "2024-01"))


def test_under_approval_a_winner_waits_one_email_asks_and_approve_serves_it(copy, tmp_path):
    instance, trips, home = copy
    b = decision(instance, "2023-12")
    with SmtpServer(tmp_path, user="alerts@taxi", password="correct horse") as smtp:
        result = decide(instance, trips, "2024-01", {"alerts": alerts_for(smtp)}, promotion="approval")
        metadata = result.asset_materializations_for_node("production_model")[0].metadata
        assert metadata["serving_outcome"].value.startswith("pending approval"), metadata
        c = decision(instance, "2024-01")
        assert c[1] != b[1]
        assert_all_serve(what_each_reader_serves(instance), b)  # nothing serves it yet
        [message] = smtp.messages
        subject, body = " ".join(message["Subject"].split()), message.get_payload(decode=True).decode()
        event = metadata["steering_event"].value
        assert "approve 2024-01?" in subject and f"{c[1][0]} v{c[1][1]}" in subject
        assert f"{event['challenger_rmse']:.3f}" in subject and f"{event['champion_rmse']:.3f}" in subject
        assert "taxi-assets approve 2024-01" in body

    refused = taxi_assets(home, trips, "approve", "2023-12")
    assert refused.returncode == 1 and "2023-12 has no challenger waiting" in refused.stderr, refused.stderr
    approved = taxi_assets(home, trips, "approve", "2024-01", "--reason", "looked at the charts")
    assert approved.returncode == 0, approved.stderr[-3000:]
    assert_all_serve(what_each_reader_serves(instance), c)
    again = taxi_assets(home, trips, "approve", "2024-01")
    assert again.returncode == 1 and "was approved" in again.stderr


@pytest.fixture(scope="module")
def bad_promotion(tmp_path_factory):
    """B trained on a corrupted November, promoted anyway for 2023-12."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return build_base(tmp_path_factory.mktemp("bad-promotion"), corrupt_november=True)


def judge_next_month(instance, trips: Path, alerts) -> tuple[dict, list[dg.RunRequest]]:
    """2024-01's trip_predictions, then the promotion_judge sensor and the runs it asks for."""
    from taxi_assets.defs.serving.steering import promotion_judge

    defs = build_defs(trip_source=LocalTripSource(directory=str(trips)), alerts=alerts)
    materializer(defs.resolve_implicit_global_asset_job_def(), instance)("2024-01", ["trip_predictions"])
    [record] = instance.fetch_materializations(dg.AssetKey("trip_predictions"), limit=1).records
    with dg.build_sensor_context(instance=instance) as context:
        requests = list(promotion_judge(context))
        cursor = context.cursor
    with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
        assert list(promotion_judge(context)) == []  # judged once
    for request in requests:
        result = defs.resolve_job_def("steer_serving").execute_in_process(
            instance=instance, run_config=request.run_config, tags=request.tags, raise_on_error=False
        )
        assert result.success
    return record.asset_materialization.metadata, requests


def test_a_promotion_worse_on_the_next_month_is_rolled_back_with_one_alert(bad_promotion, tmp_path):
    shutil.copytree(bad_promotion / "home", tmp_path / "home")
    trips = bad_promotion / "trips"
    with (
        dg.instance_for_test(temp_dir=str(tmp_path / "home"), overrides={"nux": {"enabled": False}}) as instance,
        SmtpServer(tmp_path, user="alerts@taxi", password="correct horse") as smtp,
    ):
        a, b = decision(instance, "2023-11"), decision(instance, "2023-12")
        assert_all_serve(what_each_reader_serves(instance), b)
        metadata, requests = judge_next_month(instance, trips, alerts_for(smtp))
        verdict = metadata["promotion_judgement"].value
        assert metadata["rmse"].value > metadata["shadow_rmse"].value * 1.05, metadata
        print(
            f"2024-01: B (trained on the corrupted month) {metadata['rmse'].value:.3f}, A {metadata['shadow_rmse'].value:.3f}"
        )
        assert verdict["worse"] and verdict["rollback"] and len(requests) == 1
        assert_all_serve(what_each_reader_serves(instance), a)
        [message] = smtp.messages
        assert (
            "rolled back" in message["Subject"] and "did worse on 2024-01" in message.get_payload(decode=True).decode()
        )
        [record] = steering_records(instance)
        assert record.asset_materialization.metadata["steering_event"].value["kind"] == "auto_rollback"


def test_a_pinned_promotion_worse_on_the_next_month_is_kept_with_one_alert(bad_promotion, tmp_path):
    shutil.copytree(bad_promotion / "home", tmp_path / "home")
    home, trips = tmp_path / "home", bad_promotion / "trips"
    with (
        dg.instance_for_test(temp_dir=str(home), overrides={"nux": {"enabled": False}}) as instance,
        SmtpServer(tmp_path, user="alerts@taxi", password="correct horse") as smtp,
    ):
        a, b = decision(instance, "2023-11"), decision(instance, "2023-12")
        # A person pins B (say, after the 2023-12 decision promoted it): the judgement keeps it.
        assert taxi_assets(home, trips, "promote", b[1][0], b[1][1], "--reason", "B is the one").returncode == 0
        metadata, requests = judge_next_month(instance, trips, alerts_for(smtp))
        assert metadata["promotion_judgement"].value["worse"] and not metadata["promotion_judgement"].value["rollback"]
        assert_all_serve(what_each_reader_serves(instance), b)
        [message] = smtp.messages
        assert "did worse" in message["Subject"] and "kept" in message.get_payload(decode=True).decode()
        assert a[1] != b[1] and len(requests) == 1


JUDGE_TICK = "Checking for new runs for sensor: promotion_judge"  # the daemon's log line per tick


def smtp_env(smtp: SmtpServer) -> dict[str, str]:
    """The alert channel as a deployment sets it: TAXI_SMTP_* / TAXI_ALERT_* (see alerts_for)."""
    return {
        "TAXI_SMTP_HOST": "127.0.0.1", "TAXI_SMTP_PORT": str(smtp.port), "TAXI_SMTP_USER": "alerts@taxi",
        "TAXI_SMTP_PASSWORD": "correct horse", "TAXI_ALERT_TO": "ml-oncall@example.com",
        "TAXI_SMTP_CA_FILE": str(smtp.cert),
    }  # fmt: skip


def test_with_the_daemon_running_the_next_month_rolls_a_bad_promotion_back_once(bad_promotion, tmp_path):
    """The judgement as it happens at work: the daemon runs the promotion_judge sensor; a user
    lands 2024-01's trip_predictions; the daemon's steer_serving run rolls B back to A; one email.
    The sensors that would retrain 2024-01 are stopped first (with `dagster sensor stop`), so the
    only decision after B's is the judge's."""
    shutil.copytree(bad_promotion / "home", tmp_path / "home")
    home, trips = tmp_path / "home", bad_promotion / "trips"
    with (
        dg.instance_for_test(temp_dir=str(home), overrides={"nux": {"enabled": False}}) as instance,
        SmtpServer(tmp_path, user="alerts@taxi", password="correct horse") as smtp,
    ):
        a, b = decision(instance, "2023-11"), decision(instance, "2023-12")
        env = user_env(home, trips, **smtp_env(smtp))
        workspace = str(REPO_ROOT / "workspace.yaml")
        for sensor in ("new_trip_data_sensor", "model_decay_sensor"):
            stopped = subprocess.run(
                [BIN / "dagster", "sensor", "stop", sensor, "-w", workspace], env=env, capture_output=True, timeout=600
            )
            assert stopped.returncode == 0, stopped.stderr.decode(errors="replace")[-3000:]
        processes = Processes(tmp_path, env)
        try:
            processes.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", workspace])
            scored = taxi_assets(home, trips, "materialize", "--partition", "2024-01", "--select", "trip_predictions",
                                 **smtp_env(smtp))  # fmt: skip
            assert scored.returncode == 0, scored.stderr[-3000:]

            def rolled_back():
                events = [r.asset_materialization.metadata["steering_event"].value for r in steering_records(instance)]
                return events if events else None

            [event] = wait_for(rolled_back, 600, f"the daemon's rollback\n{processes.log('daemon')[-3000:]}")
            assert event["kind"] == "auto_rollback" and "did worse on 2024-01" in event["reason"], event
            # The record comes first, then the run's hook moves the pointer and the alias: wait for the run.
            runs = wait_for(
                lambda: [r for r in instance.get_runs(dg.RunsFilter(job_name="steer_serving")) if r.is_finished],
                600,
                "the daemon's steer_serving run to finish",
            )
            assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS], runs
            assert_all_serve(what_each_reader_serves(instance), a)
            # A later tick judges nothing again (the sensor's cursor and run key): one run, one email.
            ticked = processes.log("daemon").count(JUDGE_TICK)
            wait_for(lambda: processes.log("daemon").count(JUDGE_TICK) > ticked, 600, "another promotion_judge tick")
            assert len(instance.get_runs(dg.RunsFilter(job_name="steer_serving"))) == 1
        finally:
            processes.stop_all()
        [message] = smtp.messages
        assert "rolled back" in message["Subject"], message["Subject"]
        assert a[1] != b[1]


# Runs `taxi-assets rollback` in this process and SIGKILLs it where argv[1] says: when the
# pointer is about to be replaced, or when the alias is about to move.
ROLLBACK_AND_DIE = """
import os, signal, sys
from taxi_assets.lib import serving_pointer
from taxi_assets.lib.tracking import MlflowTracking

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[1] == "pointer":
    write = serving_pointer.LocalServingStore.write
    serving_pointer.LocalServingStore.write = lambda self, name, data: (
        die() if name == serving_pointer.POINTER else write(self, name, data))
else:
    MlflowTracking.set_champion = die
from taxi_assets.apps.cli import main
sys.exit(main(["rollback", "--reason", "killed midway"]))
"""


@pytest.mark.parametrize("point", ["pointer", "alias"])
def test_a_rollback_killed_midway_leaves_one_model_everywhere_and_is_finished(copy, point):
    from taxi_assets.defs.serving.publishing import serving_publisher
    from taxi_assets.lib.tracking import MlflowTracking

    instance, trips, home = copy
    a, b = decision(instance, "2023-11"), decision(instance, "2023-12")
    done = subprocess.run(
        [sys.executable, "-c", ROLLBACK_AND_DIE, point], env=user_env(home, trips), capture_output=True, timeout=900
    )
    assert done.returncode == -9, done.stderr.decode(errors="replace")[-3000:]
    assert len(steering_records(instance)) == 1  # recorded first
    readers = what_each_reader_serves(instance)
    if point == "pointer":
        assert_all_serve(readers, b)  # nothing but the record moved: the old model everywhere
    else:  # the pointer moved: every reader serves A; only the alias is behind, until the publisher
        assert readers["server"] == readers["load_model"] == readers["predict job"] == a[0]
    with dg.build_sensor_context(instance=instance, resources={"mlflow": MlflowTracking()}) as context:
        serving_publisher(context)
    assert_all_serve(what_each_reader_serves(instance), a)


def test_a_rollback_racing_a_retraining_ends_with_one_model_and_both_decisions_in_order(copy):
    from taxi_assets.defs.serving.publishing import serving_publisher
    from taxi_assets.lib.steering import recorded_events
    from taxi_assets.lib.tracking import MlflowTracking
    from taxi_assets.ml.steering import fold

    instance, trips, home = copy
    env = user_env(home, trips)
    decide_march = (
        "import sys; from taxi_assets.apps.cli import main; "
        "sys.exit(main(['materialize', '--partition', '2024-01', '--select', 'production_model', '--config', sys.argv[1]]))"
    )
    config = home.parent / "promotes.yaml"
    config.write_text(
        "ops:\n  production_model:\n    config:\n      tolerance_minutes: 1000.0\n      timeout_seconds: 3600.0\n"
    )
    processes = [
        subprocess.Popen([BIN / "taxi-assets", "rollback", "--reason", "race"], env=env, stderr=subprocess.PIPE),
        subprocess.Popen([sys.executable, "-c", decide_march, str(config)], env=env, stderr=subprocess.PIPE),
    ]
    for process in processes:
        _, error = process.communicate(timeout=900)
        assert process.returncode == 0, error.decode(errors="replace")[-3000:]
    events = recorded_events(instance)
    assert [e.kind for e in events].count("rollback") == 1 and any(e.month == "2024-01" for e in events)
    assert [e.storage_id for e in events] == sorted(e.storage_id for e in events)
    with dg.build_sensor_context(instance=instance, resources={"mlflow": MlflowTracking()}) as context:
        serving_publisher(context)  # a publisher that lost the race leaves the newer record to this one
    served = fold(events).serving
    assert served is not None and served.model.source_month is not None
    assert_all_serve(what_each_reader_serves(instance), decision(instance, served.model.source_month))
