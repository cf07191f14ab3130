"""What a decayed model triggers, once per month and model: an email (realized against expected,
and what to do) and a retraining of the newest month tagged ``decay``, unless one is running or
succeeded after the failing check. When that retraining leaves the decayed model serving (no
challenger beat it), a second email says so: a person must look.

And the sensor that runs the monitoring assets' automation conditions."""

import json

import dagster as dg

from taxi_assets.lib.alerts import EmailAlerts
from taxi_assets.lib.catalog import MONTH_TAG
from taxi_assets.lib.dagster_private import failed_check_evaluations
from taxi_assets.lib.history import latest_metadata
from taxi_assets.lib.month_states import ACTIVE, run_request
from taxi_assets.ml.monitoring import Verdict, respond_to_decay, retraining_helped
from taxi_assets.ml.retraining import CHAIN, Request, run_key

DECAY_OF_TAG = "taxi_assets/decay_of"  # "<month>:<model>" on a retraining asked for by decay
CHECK = "serving_model_performs"


def _verdict(month: str, found: dict) -> Verdict:
    return Verdict(
        decayed=True,
        month=month,
        model=found["model"],
        realized_rmse=float(found["realized_rmse"]),
        expected_rmse=float(found["expected_rmse"]),
        tolerance=float(str(found.get("tolerance", "10%")).rstrip("%")) / 100,
        realized_share=float(found.get("realized_share_over_15_minutes", float("nan"))),
        expected_share=None,
        reasons=(),
    )


def _retrainings(instance, month: str) -> tuple[bool, float | None]:
    """(a retraining of ``month`` is in flight, when the newest successful one ended)."""
    records = instance.get_run_records(filters=dg.RunsFilter(job_name="retraining", tags={MONTH_TAG: month}), limit=50)
    running = any(record.dagster_run.status in ACTIVE for record in records)
    ended = [r.end_time for r in records if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS and r.end_time]
    return running, max(ended, default=None)


def _alert(context, alerts: EmailAlerts, subject: str, body: str) -> None:
    if not alerts.enabled:
        context.log.info(f"{subject} (email alerts are off: set TAXI_SMTP_HOST and TAXI_ALERT_TO)")
        return
    alerts.send(subject, body)  # a delivery failure fails the tick: the alert is tried again
    context.log.info(f"sent: {subject}")


def _decay_email(alerts: EmailAlerts, verdict: Verdict, response_why: str) -> tuple[str, str]:
    subject = f"[taxi_assets] model decaying: {verdict.model} on {verdict.month}"
    body = "\n".join(
        [
            f"The model that served {verdict.month}, {verdict.model}, does worse on it than when it was chosen:",
            f"  realized RMSE {verdict.realized_rmse:.3f} against {verdict.expected_rmse:.3f} expected "
            f"(tolerance {verdict.tolerance:.0%}); {verdict.realized_share:.1%} of trips off by more than 15 minutes.",
            "",
            f"Done: {response_why}.",
            "What to do: look at the month's trips (cleaned_trips' drift checks, trip_predictions' worst trips and",
            "charts) and at model_performance's chart; if the month is genuine, let the retraining replace the model;",
            "if the data is broken, fix the file (the sensor retrains the month once its version changes).",
            f"Batch predictions: {alerts.ui_url.rstrip('/')}/assets/trip_predictions?partition={verdict.month}",
        ]
    )
    return subject, body


def _did_not_help_email(alerts: EmailAlerts, watched: dict, decision: dict) -> tuple[str, str]:
    subject = f"[taxi_assets] retraining did not help: {watched['model']} still serves ({watched['newest']})"
    body = "\n".join(
        [
            f"{watched['model']} decayed on {watched['month']} (RMSE {watched['realized_rmse']:.3f} against "
            f"{watched['expected_rmse']:.3f} when chosen). The month was retrained, and no challenger beat it:",
            f"  production_model {watched['newest']}: {decision.get('reason', '?')}",
            "",
            "The model is decaying and retraining did not help: a person must look (the month's data, the search",
            "budgets, the features).",
            f"Decision: {alerts.ui_url.rstrip('/')}/assets/production_model?partition={watched['newest']}",
        ]
    )
    return subject, body


def _follow_up(context, alerts: EmailAlerts, watching: dict) -> dict:
    """Decayed models whose month was retrained since: say if the retraining did not replace them."""
    still = {}
    for key, watched in watching.items():
        _, succeeded_at = _retrainings(context.instance, watched["newest"])
        if succeeded_at is None or succeeded_at <= watched["checked_at"]:
            still[key] = watched
            continue
        decision = latest_metadata(context.instance, "production_model", watched["newest"]) or {}
        if not retraining_helped(watched["model"], str(decision.get("serving_model_version", ""))):
            _alert(context, alerts, *_did_not_help_email(alerts, watched, decision))
    return still


@dg.sensor(
    name="model_decay_sensor",
    job_name="retraining",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="When the check that the serving model still performs fails: an email and a retraining of the "
    "newest month tagged decay (once per month and model); a second email if the retraining left it serving.",
)
def model_decay_sensor(context: dg.SensorEvaluationContext, alerts: EmailAlerts):
    cursor = json.loads(context.cursor) if context.cursor else {"alerted": [], "watching": {}}
    alerted, requests = set(cursor["alerted"]), []
    newest = max(context.instance.get_materialized_partitions(dg.AssetKey("cleaned_trips")), default=None)
    for _, month, checked_at, _, found in reversed(
        failed_check_evaluations(context.instance, "trip_predictions", CHECK)
    ):
        key = f"{month}:{found.get('model')}"
        if key in alerted or newest is None or "model" not in found:
            continue
        verdict = _verdict(month, found)
        running, succeeded_at = _retrainings(context.instance, newest)
        response = respond_to_decay(verdict, checked_at, newest, running, succeeded_at)
        if response.retrain:
            request = Request(newest, "retrain", CHAIN, run_key("decay", newest, {"decayed": key}), f"decay: {key}")
            requests.append(run_request(request, reason="decay", tags={DECAY_OF_TAG: key}))
        _alert(context, alerts, *_decay_email(alerts, verdict, response.why))
        alerted.add(key)
        cursor["watching"][key] = {
            "month": month, "model": verdict.model, "newest": newest, "checked_at": checked_at,
            "realized_rmse": verdict.realized_rmse, "expected_rmse": verdict.expected_rmse,
        }  # fmt: skip
    cursor["watching"] = _follow_up(context, alerts, cursor["watching"])
    cursor["alerted"] = sorted(alerted)
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))


# The automation conditions of trip_predictions and model_performance are evaluated by this sensor
# (on by default; Dagster's default automation sensor starts stopped).
monitoring_automation = dg.AutomationConditionSensorDefinition(
    "monitoring_automation",
    target=dg.AssetSelection.groups("monitoring"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Materializes trip_predictions for a month after a run updated its inputs (the month's "
    "retraining, the previous month's decision), and model_performance after new predictions.",
)
