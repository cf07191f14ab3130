"""Run-status sensors: failure alerts, and MLflow runs ended when their Dagster run ended badly."""

from datetime import UTC, datetime

import dagster as dg

from taxi_assets.lib.alerts import (
    ALERT_SENT_TAG,
    WILL_RETRY_TAG,
    AlertDeliveryError,
    EmailAlerts,
    alert_held_back,
    failure_report,
)
from taxi_assets.lib.dagster_private import would_retry
from taxi_assets.lib.tracking import MlflowTracking


@dg.run_failure_sensor(
    name="email_on_failure",
    monitor_all_code_locations=False,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Emails every failed run (including runs stopped by a failed blocking check): job, run id, "
    "partition, failed steps and checks with their errors, and a link to the run. SMTP from TAXI_SMTP_*.",
)
def email_on_failure(context: dg.RunFailureSensorContext, alerts: EmailAlerts):
    # The run as stored now: the instance tags a failed run that run retries will re-execute; a
    # failed run whose tag was never written gets the same decision made here.
    run = context.instance.get_run_by_id(context.dagster_run.run_id) or context.dagster_run
    tags = dict(run.tags)
    if run.status == dg.DagsterRunStatus.FAILURE and WILL_RETRY_TAG not in tags:
        tags[WILL_RETRY_TAG] = str(would_retry(context.instance, run)).lower()
    held_back = alert_held_back(run.status.value, tags)
    if held_back:
        context.log.info(f"run {run.run_id}: no alert: {held_back}")
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
    context.instance.add_run_tags(run.run_id, {ALERT_SENT_TAG: datetime.now(UTC).isoformat(timespec="seconds")})
    context.log.info(f"failure alert for run {run.run_id} sent to {', '.join(alerts.recipient_list)}")


def _end_mlflow_runs(context: dg.RunStatusSensorContext, mlflow: MlflowTracking, status: str) -> None:
    """MLflow runs of a Dagster run that ended badly are ended too (a killed process cannot)."""
    run = context.dagster_run
    try:
        ended = mlflow.end_runs_of(run.run_id, status)
    except Exception as error:  # the tracking server may be down: retried on the next tick
        context.log.error(f"could not end the MLflow runs of run {run.run_id}: {error}")
        raise
    if ended:
        context.log.info(
            f"run {run.run_id} is {run.status.value}: ended {len(ended)} MLflow run(s) as {status}: {', '.join(ended)}"
        )


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
