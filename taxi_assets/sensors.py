"""Retraining automation: a sensor on new trip files and an hourly schedule (the course's
"automatic_retraining" trigger, watching the trip data itself)."""

import json
import os

import dagster as dg

from taxi_assets.alerts import AlertDeliveryError, EmailAlerts, failure_report
from taxi_assets.history import latest_metadata
from taxi_assets.jobs import observability_job, retraining_job
from taxi_assets.ml.trip_files import previous_month
from taxi_assets.partitions import FIRST_MONTH, monthly_partitions
from taxi_assets.resources import TripSource
from taxi_assets.tracking import MlflowTracking

WILL_RETRY_TAG = "dagster/will_retry"  # set by Dagster on a failed run it is going to retry
MONTH_TAG = "taxi_assets/retrain_month"
FINGERPRINT_TAG = "taxi_assets/source_fingerprint"
ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
PREPARATION_ONLY = ["raw_trips", "cleaned_trips"]


def run_key(month: str, fingerprint: str) -> str:
    """One key per month and file version: the same file is never retrained twice."""
    return f"retrain:{month}:{fingerprint}"


def _ingested_fingerprint(instance, month: str) -> str | None:
    """The source fingerprint recorded by raw_trips' latest materialization of ``month``."""
    metadata = latest_metadata(instance, "raw_trips", month)
    return None if metadata is None else metadata.get("source_fingerprint", "")


def _already_requested(instance, key: str) -> bool:
    """Run keys shared by the sensor and the schedule (Dagster dedupes per instigator only)."""
    return bool(instance.get_run_ids(filters=dg.RunsFilter(tags={"dagster/run_key": key}), limit=1))


def _running(instance, month: str) -> bool:
    return bool(instance.get_run_ids(filters=dg.RunsFilter(statuses=ACTIVE, tags={MONTH_TAG: month}), limit=1))


def retraining_requests(instance, available: dict[str, str], valid_months: set[str]) -> tuple[list[dg.RunRequest], list[str]]:
    """Run requests for every month whose file is new or changed; and the months skipped (why)."""
    requests, skipped = [], []
    prepared = instance.get_materialized_partitions(dg.AssetKey("cleaned_trips"))
    for month in sorted(available):
        if month not in valid_months:
            continue
        fingerprint = available[month]
        if _ingested_fingerprint(instance, month) == fingerprint:
            continue  # ingested from this very file
        key = run_key(month, fingerprint)
        if _already_requested(instance, key):
            continue
        if _running(instance, month):
            skipped.append(f"{month}: a retraining is running")
            continue
        tags = {MONTH_TAG: month, FINGERPRINT_TAG: fingerprint}
        previous = previous_month(month)
        if month == FIRST_MONTH or (previous not in prepared and previous not in available):
            # No previous month anywhere: nothing to train on, so prepare this month for the next.
            selection = [dg.AssetKey(asset) for asset in PREPARATION_ONLY]
            requests.append(dg.RunRequest(run_key=key, partition_key=month, asset_selection=selection, tags=tags))
            continue
        if previous not in prepared:
            # The previous month is requested in this pass (or running); this one follows on a
            # later tick, once its training set can be built.
            skipped.append(f"{month}: waiting for cleaned_trips {previous}")
            continue
        requests.append(dg.RunRequest(run_key=key, partition_key=month, tags=tags))
    return requests, skipped


def _interval() -> int:
    return int(os.environ.get("TAXI_SENSOR_INTERVAL_SECONDS", "60"))


@dg.sensor(
    job=retraining_job,
    minimum_interval_seconds=_interval(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Asks the trip source which months exist and retrains every month whose file is new or changed.",
)
def new_trip_data_sensor(context: dg.SensorEvaluationContext, trip_source: TripSource):
    available = trip_source.available_months()
    if available is None:
        return dg.SkipReason(f"{type(trip_source).__name__} cannot list months cheaply; the hourly retraining schedule covers it")
    requests, skipped = retraining_requests(context.instance, available, set(monthly_partitions.get_partition_keys()))
    cursor = json.loads(context.cursor) if context.cursor else {}
    cursor.update({request.partition_key: request.tags[FINGERPRINT_TAG] for request in requests})
    if skipped:
        context.log.info("skipped: " + "; ".join(skipped))
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))


@dg.schedule(
    job=retraining_job,
    cron_schedule="0 * * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Hourly: retrain the newest month once the source has its file (for sources that cannot be listed, e.g. HTTP).",
)
def hourly_retraining_schedule(context: dg.ScheduleEvaluationContext, trip_source: TripSource):
    keys = monthly_partitions.get_partition_keys(current_time=context.scheduled_execution_time)
    month = keys[-1]
    fingerprint = trip_source.fingerprint(month)
    if fingerprint is None:
        return dg.SkipReason(f"the source has no file for {month} yet")
    requests, skipped = retraining_requests(context.instance, {month: fingerprint}, set(keys))
    return requests or dg.SkipReason("; ".join(skipped) or f"{month} is already retrained from this file")


@dg.run_failure_sensor(
    name="email_on_failure",
    monitor_all_code_locations=False,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Emails every failed run (including runs stopped by a failed blocking check): job, run id, "
    "partition, failed steps and checks with their errors, and a link to the run. SMTP from TAXI_SMTP_*.",
)
def email_on_failure(context: dg.RunFailureSensorContext, alerts: EmailAlerts):
    # The run as stored now: the instance tags a failed run that run retries will re-execute.
    run = context.instance.get_run_by_id(context.dagster_run.run_id) or context.dagster_run
    if run.tags.get(WILL_RETRY_TAG) == "true":
        attempt = int(run.tags.get("dagster/retry_number", "0")) + 1
        context.log.info(f"run {run.run_id} failed (attempt {attempt}); run retries will re-execute it, so no alert yet")
        return
    if not alerts.enabled:
        context.log.info(f"run {run.run_id} failed; email alerts are off (set TAXI_SMTP_HOST and TAXI_ALERT_TO)")
        return
    report = failure_report(context.instance, run, context.failure_event.message)
    try:
        alerts.send(report.subject(), report.body(alerts.run_url(run.run_id)))
    except AlertDeliveryError as error:
        # Logged where the sensor's ticks are shown, and raised so the tick fails and the alert
        # is retried on the next tick rather than dropped.
        context.log.error(f"failure alert for run {run.run_id} ({run.job_name}) not delivered: {error}")
        raise
    context.log.info(f"failure alert for run {run.run_id} sent to {', '.join(alerts.recipient_list)}")


@dg.schedule(
    job=observability_job,
    cron_schedule="15 6 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily: refresh pipeline_health and check that the production model is not older than the data.",
)
def daily_health_schedule(context: dg.ScheduleEvaluationContext):
    return dg.RunRequest()


def _end_mlflow_runs(context: dg.RunStatusSensorContext, mlflow: MlflowTracking, status: str) -> None:
    """MLflow runs of a Dagster run that ended badly are ended too (a killed process cannot)."""
    run = context.dagster_run
    try:
        ended = mlflow.end_runs_of(run.run_id, status)
    except Exception as error:  # the tracking server may be down: retried on the next tick
        context.log.error(f"could not end the MLflow runs of run {run.run_id}: {error}")
        raise
    if ended:
        context.log.info(f"run {run.run_id} is {run.status.value}: ended {len(ended)} MLflow run(s) as {status}: {', '.join(ended)}")


@dg.run_failure_sensor(
    name="mlflow_runs_of_failed_runs",
    monitor_all_code_locations=False,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    description="Ends as FAILED the MLflow runs that a failed Dagster run left RUNNING (its process died, "
    "or run monitoring ended it).",
)
def mlflow_runs_of_failed_runs(context: dg.RunFailureSensorContext, mlflow: MlflowTracking):
    _end_mlflow_runs(context, mlflow, "FAILED")


@dg.run_status_sensor(
    name="mlflow_runs_of_canceled_runs",
    run_status=dg.DagsterRunStatus.CANCELED,
    monitor_all_code_locations=False,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    description="Ends as KILLED the MLflow runs that a canceled Dagster run left RUNNING.",
)
def mlflow_runs_of_canceled_runs(context: dg.RunStatusSensorContext, mlflow: MlflowTracking):
    _end_mlflow_runs(context, mlflow, "KILLED")
