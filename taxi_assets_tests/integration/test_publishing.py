"""One truth, in one order: a decision is stored in Dagster first, then published (the pointer
the server reads, then MLflow's ``champion`` alias). A step SIGKILLed between them leaves every
reader on one model, and the next publisher (the ``serving_publisher`` sensor, or the next run's
hook) brings all of them, the alias included, to the recorded decision.

The kill is real: the decision runs in its own process, whose store write or alias move is
replaced by a SIGKILL of that process at the exact point.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from taxi_assets.definitions import build_defs
from taxi_assets.lib.sources import LocalTripSource
from taxi_assets.ml.retraining import CHAIN
from taxi_assets_tests.helpers import SAMPLES, TINY_BUDGET, materializer, mlflow_client, sampled_months

# Runs production_model for one month with a tolerance that promotes the month's own model, and
# SIGKILLs itself where argv[1] says: when the pointer is about to be replaced, or the alias moved.
DECIDE_AND_DIE = """
import os, signal, sys
import dagster as dg
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
from taxi_assets.definitions import build_defs
from taxi_assets.lib.sources import LocalTripSource
job = build_defs(trip_source=LocalTripSource(directory=os.environ["TAXI_DATA_DIR"])).resolve_implicit_global_asset_job_def()
config = {"ops": {"production_model": {"config": {"tolerance_minutes": 1000.0, "timeout_seconds": 3600.0}}}}
job.execute_in_process(instance=dg.DagsterInstance.get(), partition_key=sys.argv[2],
                       asset_selection=[dg.AssetKey("production_model")], run_config=config)
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """2024-01 decided and published (model A); 2024-02's models trained, not yet decided."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("publishing")
    folder = sampled_months(root / "trips", ["2023-12", "2024-01", "2024-02"])
    (root / "home").mkdir()
    job = build_defs(trip_source=LocalTripSource(directory=str(folder))).resolve_implicit_global_asset_job_def()
    with dg.instance_for_test(temp_dir=str(root / "home"), overrides={"nux": {"enabled": False}}) as instance:
        run = materializer(job, instance)
        run("2023-12", ["trip_files", "raw_trips", "cleaned_trips"])
        run("2024-01", ["trip_files", *CHAIN], TINY_BUDGET)
        run("2024-02", ["trip_files", *CHAIN[:-1]], TINY_BUDGET)
    return root


@pytest.fixture
def copy(base, tmp_path):
    """A copy of the base instance (its MLflow store inside), opened; and the trips folder."""
    shutil.copytree(base / "home", tmp_path / "home")
    with dg.instance_for_test(temp_dir=str(tmp_path / "home"), overrides={"nux": {"enabled": False}}) as instance:
        yield instance, base / "trips", tmp_path / "home"


def decide_and_die(home: Path, trips: Path, point: str, month: str = "2024-02") -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"DAGSTER_HOME": str(home), "TAXI_DATA_DIR": str(trips)}
    done = subprocess.run(
        [sys.executable, "-c", DECIDE_AND_DIE, point, month], env=env, capture_output=True, timeout=900
    )
    assert done.returncode == -9, done.stderr.decode(errors="replace")[-3000:]


def what_each_reader_serves(instance) -> dict[str, object]:
    """The minutes the server, load_model() and the predict job give for the samples, and the alias."""
    import taxi_assets
    from taxi_assets.lib.model_store import load_production_model
    from taxi_assets.lib.serving_pointer import serving_store

    served = load_production_model(serving_store(instance))
    assert served is not None
    config = {"ops": {"predict_trip_durations": {"config": {"trips": SAMPLES}}}}
    predicted = build_defs().resolve_job_def("predict").execute_in_process(instance=instance, run_config=config)
    client = mlflow_client(instance)
    [holder] = [m for m in client.search_registered_models() if "champion" in (m.aliases or {})]
    return {
        "server": minutes(served.predictor),
        "load_model": minutes(taxi_assets.load_model(instance=instance)),
        "predict job": tuple(predicted.output_for_node("predict_trip_durations")),
        "alias": (holder.name, str(holder.aliases["champion"])),
    }


def minutes(predictor) -> tuple[float, ...]:
    """The samples' minutes as the predict job reports them (rounded to 4 places)."""
    return tuple(round(float(value), 4) for value in predictor.predict(SAMPLES))


def decision(instance, month: str):
    from taxi_assets.lib.model_store import read_value

    value = read_value(instance, "production_model", month)
    return minutes(value.predictor), (value.registered_model, value.model_version)


def assert_all_serve(readers: dict, expected) -> None:
    served, alias = expected
    assert readers == {"server": served, "load_model": served, "predict job": served, "alias": alias}, readers


def test_a_kill_before_the_pointer_leaves_the_old_model_everywhere_and_the_sensor_publishes(copy):
    from taxi_assets.defs.serving.publishing import serving_publisher
    from taxi_assets.lib.tracking import MlflowTracking

    instance, trips, home = copy
    before, after = decision(instance, "2024-01"), None
    decide_and_die(home, trips, "pointer")
    # The decision is recorded (Dagster first), and nothing else moved.
    assert max(instance.get_materialized_partitions(dg.AssetKey("production_model"))) == "2024-02"
    after = decision(instance, "2024-02")
    assert after[0] != before[0] and after[1] != before[1], "the test needs two different models"
    assert_all_serve(what_each_reader_serves(instance), before)

    with dg.build_sensor_context(instance=instance, resources={"mlflow": MlflowTracking()}) as context:
        skipped = serving_publisher(context)
    assert "2024-02" in str(skipped.skip_message), skipped
    assert_all_serve(what_each_reader_serves(instance), after)


def test_a_kill_before_the_alias_is_repaired_by_the_next_run(copy):
    instance, trips, home = copy
    decide_and_die(home, trips, "alias")
    after = decision(instance, "2024-02")
    readers = what_each_reader_serves(instance)
    # The pointer moved, so every reader agrees on the new model; only the alias is behind.
    assert readers["server"] == readers["load_model"] == readers["predict job"] == after[0], readers
    assert readers["alias"] == decision(instance, "2024-01")[1] != after[1]

    # The next run, even a backfill of an older month (which never serves), publishes what is due.
    materializer(
        build_defs(trip_source=LocalTripSource(directory=str(trips))).resolve_implicit_global_asset_job_def(), instance
    )("2024-01", ["production_model"], TINY_BUDGET)
    assert_all_serve(what_each_reader_serves(instance), after)
