"""Helpers shared by the tests: where the data is, in-process runs, budgets, MLflow lookups."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import dagster as dg

from taxi_assets.definitions import build_defs
from taxi_assets.lib.sources import LocalTripSource, TripSource

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("TAXI_DATA_DIR") or REPO_ROOT.parent / "shared" / "data" / "taxi" / "green").resolve()
PREPARATION = ["raw_trips", "cleaned_trips", "training_set"]
# The course's reference figures for 2024-02 (../shared/README.md): the one place tests keep them.
COURSE_SHAPES = {"X": (105_870, 7_027), "X_train": (54_378, 5_094), "X_val": (51_492, 5_094)}


def run_months(
    instance: dg.DagsterInstance,
    months: Iterable[str],
    selection: Sequence[str] = PREPARATION,
    trip_source: TripSource | None = None,
) -> list[dg.ExecuteInProcessResult]:
    """Materialize ``selection`` for each month in-process, as the code location would."""
    defs = build_defs(trip_source=trip_source or LocalTripSource(directory=str(DATA_DIR)))
    job = defs.resolve_implicit_global_asset_job_def()
    # As every job that ingests does: the trip file is observed first (its version recorded).
    names = (["trip_files"] if "raw_trips" in selection else []) + list(selection)
    return [
        job.execute_in_process(
            instance=instance,
            partition_key=month,
            asset_selection=[dg.AssetKey(name) for name in names],
            raise_on_error=False,
        )
        for month in months
    ]


def materializer(job, instance: dg.DagsterInstance):
    """``run(month, assets, config=None, tags=None)``: materialize ``assets`` of ``job`` for one
    month in-process, assert the run succeeded, and return it."""

    def run(month: str, assets: Sequence[str], config=None, tags=None) -> dg.ExecuteInProcessResult:
        result = job.execute_in_process(
            instance=instance, partition_key=month, asset_selection=[dg.AssetKey(a) for a in assets],
            run_config=config, tags=tags, raise_on_error=False,
        )  # fmt: skip
        assert result.success, failure_messages(result)
        return result

    return run


def failure_messages(result: dg.ExecuteInProcessResult) -> str:
    """Every step failure's message with its chain of causes."""
    messages = []
    for event in result.get_step_failure_events():
        error = event.event_specific_data.error
        while error is not None:
            messages.append(error.message)
            error = error.cause
    return "\n".join(messages)


# Budgets in tests never bind: max_evaluations alone decides how many trials run, so a count, an
# order or a winner a test asserts never depends on how fast (or busy) the machine is. Budgets have
# their own tests, built to hit them on purpose (test_budget.py, the deepest configuration).
NO_TIME_LIMIT = 3600.0
SMALL_BUDGET = dg.RunConfig(
    ops={
        "sklearn_models": {
            "ops": {"load_models": {"config": {"max_evaluations": 2, "timeout_seconds": NO_TIME_LIMIT}}}
        },
        # Depth 10 at a brisk learning rate: about 8 s a trial and a model that beats the linear ones.
        "xgboost_model": {
            "config": {
                "max_evaluations": 2,
                "fixed_params": {"max_depth": 10, "learning_rate": 0.3},
                "timeout_seconds": NO_TIME_LIMIT,
            }
        },
    }
)
# The least a retraining can do: one trial each, shallow trees. For tests about the lifecycle.
TINY_BUDGET = dg.RunConfig(
    ops={
        "sklearn_models": {
            "ops": {
                "load_models": {
                    "config": {"models": ["LinearRegression"], "max_evaluations": 1, "timeout_seconds": NO_TIME_LIMIT}
                }
            }
        },
        # Shallow trees, a fast learning rate, the fewest rounds the space allows: seconds, not minutes.
        "xgboost_model": {
            "config": {
                "max_evaluations": 1,
                "fixed_params": {"max_depth": 6, "learning_rate": 0.5, "num_boost_round": 500},
                "timeout_seconds": NO_TIME_LIMIT,
            }
        },
        "production_model": {"config": {"timeout_seconds": NO_TIME_LIMIT}},
    }
)
# production_model alone, with a budget that cannot bind: the lookup table is always compiled.
DECIDE = dg.RunConfig(ops={"production_model": {"config": {"timeout_seconds": NO_TIME_LIMIT}}})
SAMPLES = [
    {"PULocationID": 236, "DOLocationID": 239, "trip_distance": 1.98},  # took 11.5 min
    {"PULocationID": "65", "DOLocationID": "170", "trip_distance": 6.54},  # took 20.87 min
]


def decide(instance, month="2024-02", run_config=DECIDE) -> dg.ExecuteInProcessResult:
    """Materialize production_model for ``month`` (the decision that serves) and return the run."""
    result = (
        build_defs()
        .resolve_implicit_global_asset_job_def()
        .execute_in_process(
            instance=instance,
            partition_key=month,
            asset_selection=[dg.AssetKey("production_model")],
            run_config=run_config,
            raise_on_error=False,
        )
    )
    assert result.success, failure_messages(result)
    return result


def train(instance, month="2024-02", run_config=SMALL_BUDGET, assets=("sklearn_models", "xgboost_model")):
    job = build_defs(trip_source=LocalTripSource(directory=str(DATA_DIR))).resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        partition_key=month,
        asset_selection=[dg.AssetKey(a) for a in assets],
        run_config=run_config,
        raise_on_error=False,
    )


def mlflow_client(instance):
    from taxi_assets.lib.tracking import open_client

    uri = f"sqlite:///{os.path.join(os.path.dirname(os.path.abspath(instance.storage_directory())), 'mlflow', 'mlflow.db')}"
    # The registry too: in-process runs of other tests set MLflow's global registry URI to their
    # own store, which a client given only a tracking URI would still use. Opened under the store's
    # lock, as the code location opens it: a daemon's step may be migrating the new store.
    return open_client(uri)


def use_mlflow_store_of(instance):
    """Point this process's MLflow (tracking and registry, as models:/ URIs use) at ``instance``'s store."""
    import mlflow

    client = mlflow_client(instance)
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_registry_uri(client.tracking_uri)
    return client


def runs_of(client, dagster_run_id):
    experiment = client.get_experiment_by_name("taxi-duration")
    return client.search_runs(
        [experiment.experiment_id], f"tags.`dagster.run_id` = '{dagster_run_id}'", max_results=1000
    )


def sampled_months(folder: Path, months: Iterable[str], rows: int = 3_000, seed: int = 0) -> Path:
    """Small trip files made from the real ones: ``rows`` trips of each month, chosen with a fixed
    seed, in the course's layout under ``folder``. Real columns and values, a fraction of the size:
    for tests about what happens between months (retraining, versions, monitoring), where a whole
    month would only make them slow."""
    import pandas as pd

    for month in months:
        year, number = month.split("-")
        trips = pd.read_parquet(DATA_DIR / year / f"{number}.parquet")
        target = folder / year / f"{number}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        trips.sample(n=min(rows, len(trips)), random_state=seed).sort_index().to_parquet(target)
    return folder
