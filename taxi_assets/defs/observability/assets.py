"""pipeline_health: runs per day per job and status, and training runs per model, from the instance."""

import datetime as dt

import dagster as dg
import pandas as pd
from pydantic import Field

from taxi_assets.lib import charts
from taxi_assets.lib.catalog import CODE_VERSIONS
from taxi_assets.lib.history import recorded_rmse
from taxi_assets.lib.metadata import charts as charts_metadata
from taxi_assets.lib.metadata import table

FINISHED = {dg.DagsterRunStatus.SUCCESS: "SUCCESS", dg.DagsterRunStatus.FAILURE: "FAILURE"}


class PipelineHealthConfig(dg.Config):
    days: int = Field(default=30, ge=1, le=366, description="How many days of runs to look back over.")


def model_training_counts(instance: dg.DagsterInstance) -> dict[str, int]:
    """How many times each model was trained: one per month materialized, from the event log."""
    return {name: len(months) for name, months in recorded_rmse(instance).items()}


def finished_runs(instance: dg.DagsterInstance, since: dt.datetime) -> pd.DataFrame:
    """day, job, status of every run that succeeded or failed since ``since`` (UTC)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=list(FINISHED), created_after=since), limit=100_000
    )
    rows = [
        {
            "day": pd.Timestamp(record.create_timestamp).tz_convert("UTC").tz_localize(None).floor("D"),
            "job": record.dagster_run.job_name,
            "status": FINISHED[record.dagster_run.status],
        }
        for record in records
    ]
    return pd.DataFrame(rows, columns=["day", "job", "status"])


@dg.asset(
    group_name="observability",
    kinds={"dagster"},
    owners=["team:ml-platform"],
    tags={"stage": "observe"},
    code_version=CODE_VERSIONS["pipeline_health"],
)
def pipeline_health(context: dg.AssetExecutionContext, config: PipelineHealthConfig) -> dg.MaterializeResult:
    """Completed and failed runs per day per job over the last ``days`` days, and how often each
    model has been trained, read from this Dagster instance's run storage and event log."""
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=config.days)
    runs = finished_runs(context.instance, since)
    by_model = model_training_counts(context.instance)
    succeeded = int((runs["status"] == "SUCCESS").sum())
    failed = int((runs["status"] == "FAILURE").sum())
    per_job = (
        runs.pivot_table(index="job", columns="status", values="day", aggfunc="count", fill_value=0)
        .reindex(columns=["SUCCESS", "FAILURE"], fill_value=0)
        .reset_index()
        if len(runs)
        else pd.DataFrame(columns=["job", "SUCCESS", "FAILURE"])
    )
    per_job = per_job.astype({"SUCCESS": int, "FAILURE": int}) if len(per_job) else per_job
    return dg.MaterializeResult(
        metadata={
            "charts": charts_metadata(
                {
                    "runs_per_day": charts.runs_per_day(
                        runs,
                        f"Finished runs per day (UTC), last {config.days} days",
                        pd.Timestamp(since).tz_convert("UTC").tz_localize(None).floor("D"),
                        pd.Timestamp.now("UTC").tz_localize(None).floor("D") + pd.Timedelta(days=1),
                    ),
                    "trainings_by_model": charts.pie(by_model, "Training runs by model"),
                }
            ),
            "days": config.days,
            "runs_succeeded": succeeded,
            "runs_failed": failed,
            "failure_rate": round(failed / (succeeded + failed), 4) if succeeded + failed else 0.0,
            "runs_per_job": table(per_job),
            "trainings_by_model": dg.MetadataValue.json(by_model),
        }
    )
