"""Automation: the jobs people launch, the sensor on new trip files and the schedules (the
course's "automatic_retraining" trigger, watching the trip data itself)."""

import json
from collections.abc import Mapping

import dagster as dg

from taxi_assets.lib.catalog import (
    CODE_VERSIONS,
    DATA_PREPARATION_ASSETS,
    MODEL_ASSETS,
    RETRAINING_ASSETS,
    TRIP_FILES,
)
from taxi_assets.lib.history import DATA_VERSION_TAG
from taxi_assets.lib.month_states import month_states, run_request
from taxi_assets.lib.months import FIRST_MONTH, partition_keys, previous_month
from taxi_assets.lib.settings import sensor_interval_seconds, step_executor
from taxi_assets.lib.sources import TripSource
from taxi_assets.ml.retraining import Plan, plan

# Mage's "data_preparation" pipeline: ingest -> prepare -> build, with its checks.
# Every job that ingests a month observes its trip file first (trip_files): raw_trips then records
# the version of the file it read, and Dagster can tell when the file changes later.
data_preparation_job = dg.define_asset_job(
    name="data_preparation",
    selection=dg.AssetSelection.assets(TRIP_FILES, *DATA_PREPARATION_ASSETS),
    description="Ingest, clean and build the training set for one month (with its checks).",
)

# A retraining that fails is re-executed whole (the same assets, the same month) by Dagster's run
# retries (the daemon), at most twice, before its failure alert goes out; a run still going after
# an hour (its worker lost without anyone noticing) is ended by run monitoring. Both need the
# daemon, which `dagster dev` runs. Budgets in a run config larger than the defaults may need a
# larger dagster/max_runtime tag at launch.
# Not FROM_FAILURE: when a run worker dies after the scikit-learn fan-out yielded its models but
# before a model's step started, Dagster's resume plan skips that step and the collect step fails
# on the missing output, in every retry (dagster-io/dagster#30248, #30077; seen in
# test_lifecycle under a CPU hog). A month's data preparation is seconds, so re-running it costs
# little.
RETRAINING_RUN_TAGS = {
    "dagster/max_retries": "2",
    "dagster/retry_strategy": "ALL_STEPS",
    "dagster/max_runtime": "3600",
}

# One process per step, two at a time: the scikit-learn fan-out trains its models in parallel on
# the two cores, and a step stuck in native code can be ended by ending its process. Each step
# process is forked from a server that built the code location and imported the ML libraries once
# per run (Python's forkserver, Dagster's `start_method`). A spawned process imports them again:
# 3-6 s per step on 2 cores, and a retraining runs about ten steps, most one after another (issue
# 22: the step gaps went from about 3 s to 0.3 s). The server keeps the environment of the process
# that started it: a process that runs several jobs (a notebook, a test session) and changes
# os.environ between them should pass settings as config or resources instead.
STEP_PRELOAD = [
    "taxi_assets.step_server",  # the code location, built
    "pandas",
    "pyarrow.parquet",
    "scipy.sparse",
    "sklearn.linear_model",
    "xgboost",
    "hyperopt",
    "mlflow",
    "matplotlib.figure",  # the model and decision charts (its font cache loads on import)
    "matplotlib.dates",
    "matplotlib.backends.backend_agg",
]
step_process_executor = dg.multiprocess_executor.configured(
    {"max_concurrent": 2, "start_method": {"forkserver": {"preload_modules": STEP_PRELOAD}}}
)


def training_executor() -> dg.ExecutorDefinition:
    """The training jobs' executor (TAXI_STEP_EXECUTOR): the step processes above, or, on ECS
    with ``ecs``, dagster-aws's ecs_executor: an ECS task per step, sized by the step's op tags
    (``ecs/cpu``, ``ecs/memory`` from TAXI_ECS_STEP_RESOURCES) and otherwise like the run's task.
    Read when this module is imported (the code location loading it): a job's executor, like its
    ops' tags, is fixed when the job is defined."""
    if step_executor() == "ecs":
        from dagster_aws.ecs import ecs_executor

        return ecs_executor
    return step_process_executor


# Mage's "sklearn_training" and "xgboost_training".
model_training_job = dg.define_asset_job(
    name="model_training",
    selection=dg.AssetSelection.assets(*MODEL_ASSETS),
    description="Tune and train the scikit-learn models and XGBoost for one month, tracked in MLflow.",
    executor_def=training_executor(),
    tags=RETRAINING_RUN_TAGS,
)

# Mage's "automatic_retraining": everything from the new file to the serving decision, for one
# month. Launched by the new-data sensor and the hourly schedule.
retraining_job = dg.define_asset_job(
    name="retraining",
    selection=dg.AssetSelection.assets(TRIP_FILES, *RETRAINING_ASSETS),
    description="Ingest, prepare, train and choose the production model for one month.",
    executor_def=training_executor(),
    tags=RETRAINING_RUN_TAGS,
)

# The run-health view and the model freshness check, refreshed daily by a schedule.
observability_job = dg.define_asset_job(
    name="observability",
    selection=dg.AssetSelection.assets("pipeline_health")
    | dg.AssetSelection.checks(dg.AssetCheckKey(dg.AssetKey("production_model"), "model_freshness")),
    description="Refresh pipeline_health and run the production model's freshness check.",
)


def _already_requested(instance, key: str) -> bool:
    """Run keys shared by the sensor and the schedule (Dagster dedupes per instigator only)."""
    return bool(instance.get_run_ids(filters=dg.RunsFilter(tags={"dagster/run_key": key}), limit=1))


def observations(files: Mapping[str, str | None], states) -> list[dg.AssetObservation]:
    """trip_files observations for months whose file Dagster has not seen in this version yet."""
    return [
        dg.AssetObservation(asset_key=TRIP_FILES, partition=month, tags={DATA_VERSION_TAG: version})
        for month, version in sorted(files.items())
        if version is not None and states[month].observed != version
    ]


def _decide(context, files: Mapping[str, str | None], cursor: dict) -> tuple[Plan, list, dict]:
    """Gather the months' states, plan, and keep what the next tick needs."""
    valid = set(partition_keys())
    files = {month: version for month, version in files.items() if month in valid}
    states, known = month_states(context.instance, context.repository_def.asset_graph, files, cursor.get("known"))
    ignored = cursor.get("ignored")
    if cursor and "v" not in cursor:  # a cursor of an earlier version: its months were "known" files
        ignored = {m: v for m in cursor if (v := files.get(m)) and states[m].decision is None}
    decided = plan({m: states[m] for m in states if m in valid}, FIRST_MONTH, CODE_VERSIONS, ignored)
    return decided, observations(files, states), {"v": 2, "ignored": decided.ignored, "known": known}


def new_trip_data(context: dg.SensorEvaluationContext, trip_source: TripSource):
    files = trip_source.data_versions()
    if files is None:
        return dg.SkipReason(
            f"{type(trip_source).__name__} cannot list months cheaply; the hourly retraining schedule covers it"
        )
    cursor = json.loads(context.cursor) if context.cursor else {}
    decided, observed, new_cursor = _decide(context, files, cursor)
    if not cursor and decided.ignored:
        context.log.info(
            f"first tick: leaving {len(decided.ignored)} untrained month(s) alone until their file changes "
            f"({min(decided.ignored)}..{max(decided.ignored)}: backfill them to train them)"
        )
    requests = [run_request(r) for r in decided.requests if not _already_requested(context.instance, r.key)]
    for request in decided.requests:
        context.log.info(f"{request.kind} {request.month}: {request.reason}")
    if decided.skipped:
        context.log.info("skipped: " + "; ".join(decided.skipped))
    return dg.SensorResult(run_requests=requests, asset_events=observed, cursor=json.dumps(new_cursor, sort_keys=True))


def new_trip_data_sensor(interval_seconds: int) -> dg.SensorDefinition:
    return dg.sensor(
        name="new_trip_data_sensor",
        job=retraining_job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Observes the trip files' versions and retrains every month whose file, code or inputs "
        "changed (what Dagster marks missing or unsynced); a month whose inputs and code are unchanged is "
        "never retrained again.",
    )(new_trip_data)


@dg.schedule(
    job=retraining_job,
    cron_schedule="0 * * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Hourly: retrain the newest month once the source has its file, or when its file, code or "
    "inputs changed (for sources that cannot be listed, e.g. HTTP).",
)
def hourly_retraining_schedule(context: dg.ScheduleEvaluationContext, trip_source: TripSource):
    month = partition_keys(current_time=context.scheduled_execution_time)[-1]
    version = trip_source.data_version(month)
    if version is None:
        return dg.SkipReason(f"the source has no file for {month} yet")
    files = {month: version, previous_month(month): trip_source.data_version(previous_month(month))}
    decided, _, _ = _decide(context, files, {"v": 2, "ignored": {}})
    requests = [run_request(r) for r in decided.requests if not _already_requested(context.instance, r.key)]
    return requests or dg.SkipReason("; ".join(decided.skipped) or f"{month} is up to date with its file and code")


@dg.schedule(
    job=observability_job,
    cron_schedule="15 6 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily: refresh pipeline_health and check that the production model is not older than the data.",
)
def daily_health_schedule(context: dg.ScheduleEvaluationContext):
    return dg.RunRequest()


@dg.definitions
def automation() -> dg.Definitions:
    # The sensor's interval comes from the environment when the code location loads.
    return dg.Definitions(
        jobs=[data_preparation_job, model_training_job, retraining_job, observability_job],
        sensors=[new_trip_data_sensor(sensor_interval_seconds())],
        schedules=[hourly_retraining_schedule, daily_health_schedule],
    )
