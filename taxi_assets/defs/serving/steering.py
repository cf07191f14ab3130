"""``serving_decision``: what operators decide about the model that serves (promote a registered
version, unpin, roll back, approve or reject a waiting challenger), recorded through the same one
truth as production_model's automatic decisions: the record first, then the pointer and the alias
(its hook). ``taxi-assets promote|rollback|approve|reject`` run the ``steer_serving`` job."""

import dataclasses
import getpass
from datetime import UTC, datetime
from enum import Enum

import dagster as dg
import numpy as np
from pydantic import Field

from taxi_assets.lib.alerts import AlertDeliveryError, EmailAlerts
from taxi_assets.lib.catalog import CODE_VERSIONS, STEERING_ASSET
from taxi_assets.lib.lifecycle import run_id_of
from taxi_assets.lib.publishing import publish_decision
from taxi_assets.lib.steering import (
    JUDGEMENT,
    STEERING_EVENT,
    event_document,
    model_value,
    recorded_events,
)
from taxi_assets.lib.tracking import MlflowTracking, registered_name
from taxi_assets.ml.model_files import REFERENCE_TRIPS
from taxi_assets.ml.steering import (
    APPROVE,
    AUTO_ROLLBACK,
    AUTOMATIC,
    JUDGED,
    PIN,
    REJECT,
    ROLLBACK,
    UNPIN,
    Event,
    ModelRef,
    State,
    SteeringError,
    apply,
    check_request,
    fold,
)


class SteeringAction(Enum):
    """What an operator asks for."""

    promote = "promote"
    unpin = "unpin"
    rollback = "rollback"
    approve = "approve"
    reject = "reject"
    judge = "judge"  # the promotion_judge sensor: act on the month's verdict (trip_predictions)


KINDS = {
    SteeringAction.promote: PIN,
    SteeringAction.unpin: UNPIN,
    SteeringAction.rollback: ROLLBACK,
    SteeringAction.approve: APPROVE,
    SteeringAction.reject: REJECT,
    SteeringAction.judge: AUTO_ROLLBACK,
}


class SteeringConfig(dg.Config):
    """An operator's decision about what serves (the Launchpad's form of ``taxi-assets promote``)."""

    action: SteeringAction = Field(
        description="promote: serve a registered version and pin it; unpin: let automatic decisions apply again; "
        "rollback: serve the model that served before (pinned); approve / reject: a challenger waiting for approval; "
        "judge: act on the verdict trip_predictions recorded for month (the promotion_judge sensor asks for it)"
    )
    model: str = Field(default="", description="promote: xgboost, LinearRegression, ... or taxi-duration-...")
    version: str = Field(default="", description="promote: the registered version, e.g. 3")
    month: str = Field(
        default="", description="approve / reject: the month (YYYY-MM) whose challenger waits; judge: the month scored"
    )
    reason: str = Field(default="", description="Why: kept with the decision, shown by `taxi-assets lineage`")
    by: str = Field(default="", description="Who decided; default: the user the step runs as")


def _promoted(config: SteeringConfig, events: list[Event], mlflow: MlflowTracking) -> ModelRef:
    """The registered version ``promote`` names: as a month's decision chose it (its stored value
    holds the model), else from the MLflow registry; Failure naming a version that does not exist."""
    if not config.model or not config.version:
        raise dg.Failure("promote needs a model and a version (for example model=xgboost, version=2)")
    try:
        registered, version = registered_name(config.model), config.version.strip()
    except ValueError as error:
        raise dg.Failure(f"promote: {error}") from None
    chosen = [
        event.model
        for event in events
        if event.kind == AUTOMATIC
        and event.model is not None
        and (event.model.registered_model, event.model.version) == (registered, version)
    ]
    if chosen:
        return max(chosen, key=lambda model: model.source_month or "")
    try:
        value = mlflow.production_model(registered, version)
    except LookupError as error:
        raise dg.Failure(f"promote: {error}") from None
    except Exception as error:  # registered, but its files do not load: name it, change nothing
        raise dg.Failure(f"promote: {registered} v{version} cannot serve: it does not load ({error})") from None
    return ModelRef(value.name, value.model_partition, registered, version, None, value.rmse)


def _check_it_serves(instance, model: ModelRef, mlflow: MlflowTracking) -> str:
    """The model loads and predicts the reference trips (finite minutes), or Failure naming it."""
    try:
        value = model_value(instance, model, mlflow)
        minutes = np.asarray(value.predictor.predict(REFERENCE_TRIPS), dtype=float)
    except Exception as error:  # a version whose files are missing or broken: name it, change nothing
        raise dg.Failure(f"{model.label} cannot serve: it does not load or predict ({error})") from None
    if not np.isfinite(minutes).all():
        raise dg.Failure(f"{model.label} cannot serve: it predicts {minutes.tolist()} minutes for the reference trips")
    return f"{minutes[0]:.2f}"


def _event(config: SteeringConfig, kind: str, state: State, model: ModelRef | None) -> Event:
    month = config.month if kind in (APPROVE, REJECT) else state.newest_month or ""
    return Event(
        storage_id=0,
        kind=kind,
        month=month,
        model=model,
        by=config.by or getpass.getuser(),
        reason=config.reason,
        at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


@dg.asset(
    name=STEERING_ASSET,
    group_name="serving",
    code_version=CODE_VERSIONS[STEERING_ASSET],
    kinds={"mlflow"},
    owners=["team:ml-platform"],
    tags={"stage": "deploy"},
    hooks={publish_decision},
    description="Operators' decisions about what serves: promote (pin) a registered version, unpin, roll back, "
    "approve or reject a waiting challenger. Each materialization is one decision; the model serves after it is "
    "stored, as after production_model's.",
)
def serving_decision(
    context: dg.AssetExecutionContext, config: SteeringConfig, mlflow: MlflowTracking, alerts: EmailAlerts
) -> dg.MaterializeResult:
    """Checks the request against what the recorded decisions say serves (a version that does
    not exist or cannot load is refused, naming it), then records it; the hook publishes it."""
    kind = KINDS[config.action]
    events = recorded_events(context.instance)
    state = fold(events)
    if config.action is SteeringAction.judge:
        event, first_minutes = _judged(context.instance, config, state), None
    else:
        target = _promoted(config, events, mlflow) if kind == PIN else None
        try:
            model = check_request(state, kind, config.month, target)
        except SteeringError as error:
            raise dg.Failure(str(error)) from None
        first_minutes = _check_it_serves(context.instance, model, mlflow) if model is not None else None
        event = _event(config, kind, state, model)
    after = apply(state, dataclasses.replace(event, storage_id=max(state.outcomes, default=0) + 1))
    outcome = after.outcomes[max(after.outcomes)]
    context.log.info(f"serving_decision: {outcome}")
    serving = after.serving.model.label if after.serving else "nothing"
    replaced = state.serving.model.label if state.serving else "nothing"
    metadata = {
        STEERING_EVENT: dg.MetadataValue.json(event_document(event)),
        "action": config.action.value,
        "outcome": outcome,
        "serving": serving,
        "replaced": replaced,
        "by": event.by,
        "reason": event.reason or "(none given)",
        "pinned": after.pinned is not None,
    }
    if first_minutes is not None:
        metadata["reference_trip_minutes"] = first_minutes
    if config.action is SteeringAction.judge:
        _alert_judgement(context, alerts, event, outcome)
    return dg.MaterializeResult(metadata=metadata)


def judgement_of(instance, month: str) -> dict | None:
    """The verdict trip_predictions recorded for ``month`` (its latest materialization), if any."""
    from taxi_assets.lib.history import latest_metadata

    recorded = latest_metadata(instance, "trip_predictions", month) or {}
    verdict = recorded.get(JUDGEMENT)
    return verdict if isinstance(verdict, dict) else None


def _judged(instance, config: SteeringConfig, state: State) -> Event:
    """The month's verdict as a decision: an automatic rollback to the model the promotion
    replaced, or (a person's promotion, or it no longer serves) a record that it was judged."""
    verdict = judgement_of(instance, config.month)
    if verdict is None:
        raise dg.Failure(f"judge: trip_predictions {config.month or '(no month)'} recorded no promotion judgement")
    served = state.serving
    judged_here = served is not None and served.since.storage_id == verdict["promotion"]
    rollback = bool(verdict["rollback"]) and judged_here and state.pinned is None
    rollback = rollback and served is not None and served.replaced is not None
    return Event(
        storage_id=0,
        kind=AUTO_ROLLBACK if rollback else JUDGED,
        month=state.newest_month or config.month,
        model=served.replaced if rollback and served is not None else None,
        by=config.by or "promotion_judge",
        reason=verdict["reason"] + ("" if judged_here else "; that promotion no longer serves"),
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        judged=int(verdict["promotion"]),
    )


def _alert_judgement(context, alerts: EmailAlerts, event: Event, outcome: str) -> None:
    """One message for the month's verdict on a promotion, rolled back or kept."""
    if not alerts.enabled:
        context.log.info("promotion judgement: no alert channel is configured (TAXI_SMTP_HOST, TAXI_ALERT_TO)")
        return
    subject = (
        f"[taxi-assets] rolled back: {event.reason.split(' did worse')[0]}"
        if event.kind == AUTO_ROLLBACK
        else "[taxi-assets] a promotion did worse than the model it replaced"
    )
    body = f"{event.reason}\n\nWhat serves now: {outcome}\n\nRun: {alerts.run_url(run_id_of(context))}\n"
    try:
        alerts.send(subject, body)
    except AlertDeliveryError as error:  # the decision is recorded either way; say why no mail went
        context.log.warning(f"promotion judgement: the alert was not delivered: {error}")


steer_serving_job = dg.define_asset_job(
    "steer_serving",
    selection=[STEERING_ASSET],
    description="Promote (pin) a registered model version, unpin, roll back, or approve / reject a waiting "
    "challenger: set the action in the Launchpad (what `taxi-assets promote|rollback|approve|reject` run).",
    tags={"taxi_assets/steering": "true"},
)


@dg.sensor(
    name="promotion_judge",
    job=steer_serving_job,
    description="When a month's trip_predictions finds the model promoted the month before did worse than the one "
    "it replaced (beyond the promotion tolerance), asks steer_serving to act on it once: roll back, unless a person "
    "pinned or approved it; an alert either way.",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def promotion_judge(context: dg.SensorEvaluationContext):
    """One run per judged promotion (its run key), for verdicts recorded after the cursor."""
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("trip_predictions"), after_storage_id=after),
        limit=100,
        ascending=True,
    ).records
    for record in sorted(records, key=lambda r: r.storage_id):
        materialization = record.asset_materialization
        verdict = materialization.metadata.get(JUDGEMENT) if materialization else None
        value = getattr(verdict, "value", None)
        if materialization is not None and isinstance(value, dict) and value.get("worse"):
            month = str(materialization.partition)
            yield dg.RunRequest(
                run_key=f"judge-promotion-{value['promotion']}",
                run_config={"ops": {STEERING_ASSET: {"config": {"action": "judge", "month": month}}}},
                tags={"taxi_assets/launched_by": "promotion_judge"},
            )
        context.update_cursor(str(record.storage_id))
