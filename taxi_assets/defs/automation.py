"""Automation: the jobs people launch, the sensor on new trip files and the schedules (the
course's "automatic_retraining" trigger, watching the trip data itself)."""

import json

import dagster as dg

from taxi_assets.lib.catalog import DATA_PREPARATION_ASSETS, MODEL_ASSETS, RETRAINING_ASSETS
from taxi_assets.lib.history import latest_metadata
from taxi_assets.lib.months import PREVIOUS_MONTH_ASSETS, has_previous_month, partition_keys, previous_month
from taxi_assets.lib.settings import sensor_interval_seconds
from taxi_assets.lib.sources import TripSource

MONTH_TAG = "taxi_assets/retrain_month"
FINGERPRINT_TAG = "taxi_assets/source_fingerprint"
ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]

# Mage's "data_preparation" pipeline: ingest -> prepare -> build, with its checks.
data_preparation_job = dg.define_asset_job(
    name="data_preparation",
    selection=dg.AssetSelection.assets(*DATA_PREPARATION_ASSETS),
    description="Ingest, clean and build the training set for one month (with its checks).",
)

# A retraining that fails is re-executed from the failed step by Dagster's run retries (the
# daemon), at most twice, before its failure alert goes out; a run still going after an hour
# (its worker lost without anyone noticing) is ended by run monitoring. Both need the daemon,
# which `dagster dev` runs. Budgets in a run config larger than the defaults may need a larger
# dagster/max_runtime tag at launch.
RETRAINING_RUN_TAGS = {
    "dagster/max_retries": "2",
    "dagster/retry_strategy": "FROM_FAILURE",
    "dagster/max_runtime": "3600",
}

# Mage's "sklearn_training" and "xgboost_training". One process per step, two at a time: the
# scikit-learn fan-out trains its models in parallel on the two cores.
model_training_job = dg.define_asset_job(
    name="model_training",
    selection=dg.AssetSelection.assets(*MODEL_ASSETS),
    description="Tune and train the scikit-learn models and XGBoost for one month, tracked in MLflow.",
    executor_def=dg.multiprocess_executor.configured({"max_concurrent": 2}),
    tags=RETRAINING_RUN_TAGS,
)

# Mage's "automatic_retraining": everything from the new file to the serving decision, for one
# month. Launched by the new-data sensor and the hourly schedule.
retraining_job = dg.define_asset_job(
    name="retraining",
    selection=dg.AssetSelection.assets(*RETRAINING_ASSETS),
    description="Ingest, prepare, train and choose the production model for one month.",
    executor_def=dg.multiprocess_executor.configured({"max_concurrent": 2}),
    tags=RETRAINING_RUN_TAGS,
)

# The run-health view and the model freshness check, refreshed daily by a schedule.
observability_job = dg.define_asset_job(
    name="observability",
    selection=dg.AssetSelection.assets("pipeline_health")
    | dg.AssetSelection.checks(dg.AssetCheckKey(dg.AssetKey("production_model"), "model_freshness")),
    description="Refresh pipeline_health and run the production model's freshness check.",
)


def run_key(month: str, fingerprint: str, kind: str = "retrain") -> str:
    """One key per month and file version (and kind: a retraining, or preparing a previous month
    for one): the same file is never retrained twice."""
    return f"{kind}:{month}:{fingerprint}"


def _ingested_fingerprint(instance, month: str) -> str | None:
    """The source fingerprint recorded by raw_trips' latest materialization of ``month``."""
    metadata = latest_metadata(instance, "raw_trips", month)
    return None if metadata is None else metadata.get("source_fingerprint", "")


def _already_requested(instance, key: str) -> bool:
    """Run keys shared by the sensor and the schedule (Dagster dedupes per instigator only)."""
    return bool(instance.get_run_ids(filters=dg.RunsFilter(tags={"dagster/run_key": key}), limit=1))


def _running(instance, month: str) -> bool:
    return bool(instance.get_run_ids(filters=dg.RunsFilter(statuses=ACTIVE, tags={MONTH_TAG: month}), limit=1))


def _prepare(month: str, fingerprint: str, key: str) -> dg.RunRequest:
    selection = [dg.AssetKey(asset) for asset in PREVIOUS_MONTH_ASSETS]
    tags = {MONTH_TAG: month, FINGERPRINT_TAG: fingerprint}
    return dg.RunRequest(run_key=key, partition_key=month, asset_selection=selection, tags=tags)


def retraining_requests(
    instance, available: dict[str, str], valid_months: set[str], known: dict[str, str] | None = None
) -> tuple[list[dg.RunRequest], list[str]]:
    """Run requests for every month whose file is new or changed; and the months skipped (why).

    ``known``: files already accounted for (month -> fingerprint), not retrained while unchanged.
    A month whose previous month is not prepared gets that month prepared first (only its
    raw_trips and cleaned_trips) and follows on a later tick; a month with no previous month
    anywhere (the first one) is prepared only, for the month after it.
    """
    requests: list[dg.RunRequest] = []
    skipped: list[str] = []
    requested: set[str] = set()
    prepared = instance.get_materialized_partitions(dg.AssetKey("cleaned_trips"))
    for month in sorted(available):
        fingerprint = available[month]
        if month not in valid_months or (known or {}).get(month) == fingerprint:
            continue
        if _ingested_fingerprint(instance, month) == fingerprint:
            continue  # ingested from this very file
        key = run_key(month, fingerprint)
        if _already_requested(instance, key):
            continue
        if _running(instance, month):
            skipped.append(f"{month}: a retraining is running")
            continue
        previous = previous_month(month)
        if not has_previous_month(month) or (previous not in prepared and previous not in available):
            # No previous month anywhere: nothing to train on, so prepare this month for the next.
            requests.append(_prepare(month, fingerprint, key))
            requested.add(month)
            continue
        if previous not in prepared:
            # This month follows on a later tick, once its previous month is prepared.
            preparing = run_key(previous, available[previous], kind="prepare")
            if (
                previous not in requested
                and not _already_requested(instance, preparing)
                and not _running(instance, previous)
            ):
                requests.append(_prepare(previous, available[previous], preparing))
                requested.add(previous)
            skipped.append(f"{month}: waiting for cleaned_trips {previous}")
            continue
        requests.append(
            dg.RunRequest(run_key=key, partition_key=month, tags={MONTH_TAG: month, FINGERPRINT_TAG: fingerprint})
        )
        requested.add(month)
    return requests, skipped


def new_trip_data(context: dg.SensorEvaluationContext, trip_source: TripSource):
    available = trip_source.available_months()
    if available is None:
        return dg.SkipReason(
            f"{type(trip_source).__name__} cannot list months cheaply; the hourly retraining schedule covers it"
        )
    valid = set(partition_keys())
    if context.cursor:
        known = json.loads(context.cursor)
    else:
        # A calm first start: the files already there are the starting point. Only the newest
        # month is prepared and trained; the others are recorded as known (a backfill, from the
        # UI or `taxi-assets materialize --partition-range`, trains them when someone asks).
        present = sorted(month for month in available if month in valid)
        known = {month: available[month] for month in present[:-1]}
        if present[:-1]:
            context.log.info(
                f"first tick: {len(present)} months present; retraining the newest, {present[-1]}, and recording "
                f"{present[0]}..{present[-2]} as known (backfill them to train them)"
            )
    requests, skipped = retraining_requests(context.instance, available, valid, known)
    cursor = {**known, **{request.partition_key: request.tags[FINGERPRINT_TAG] for request in requests}}
    if skipped:
        context.log.info("skipped: " + "; ".join(skipped))
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))


def new_trip_data_sensor(interval_seconds: int) -> dg.SensorDefinition:
    return dg.sensor(
        name="new_trip_data_sensor",
        job=retraining_job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Asks the trip source which months exist and retrains every month whose file is new or changed.",
    )(new_trip_data)


@dg.schedule(
    job=retraining_job,
    cron_schedule="0 * * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Hourly: retrain the newest month once the source has its file "
    "(for sources that cannot be listed, e.g. HTTP).",
)
def hourly_retraining_schedule(context: dg.ScheduleEvaluationContext, trip_source: TripSource):
    keys = partition_keys(current_time=context.scheduled_execution_time)
    month = keys[-1]
    fingerprint = trip_source.fingerprint(month)
    if fingerprint is None:
        return dg.SkipReason(f"the source has no file for {month} yet")
    requests, skipped = retraining_requests(context.instance, {month: fingerprint}, set(keys))
    return requests or dg.SkipReason("; ".join(skipped) or f"{month} is already retrained from this file")


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
