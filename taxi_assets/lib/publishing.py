"""Publishing the decision that serves, after Dagster has recorded it: the model files to an
immutable key, then the pointer (``serving_pointer``), then MLflow's ``champion`` alias. A
publisher that dies part-way leaves the previous decision published; the next publisher (the
next run's hook, the ``serving_publisher`` sensor) finishes the job.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from taxi_assets.lib.model_store import PRODUCTION_ASSET
from taxi_assets.lib.serving_pointer import POINTER, ServingStore, read_published
from taxi_assets.lib.steering import SERVING_RECORD, served_decision, served_fields, steering_state, value_for
from taxi_assets.ml.serving import Publication, pointer_document, publication

__all__ = ["SERVING_RECORD", "publish", "publish_decision", "served_fields", "wait_for_own_record"]


def publish(
    instance: dg.DagsterInstance, store: ServingStore, mlflow=None, log=None, own: tuple[str, Any] | None = None
) -> Publication:
    """Bring the pointer (and, given the MLflow resource, the ``champion`` alias) up to Dagster's
    record; idempotent, so every publisher may call it and a repeat does nothing. ``own``: the
    calling run's id and decision value, used instead of reading it back when it is the record."""
    from taxi_assets.ml.value_files import dump_value

    state = steering_state(instance)
    serving = served_decision(state.serving) if state.serving is not None else None
    published = read_published(store)
    alias = mlflow.champion() if mlflow is not None else None
    plan = publication(serving, published[0] if published else None, alias, alias_known=mlflow is not None)
    if serving is None or state.serving is None or not plan.needed:
        return plan
    if published is not None and published[0].storage_id > serving.storage_id:
        # A publisher that read a newer record got there first: the record only moves forward.
        return Publication(False, False, f"left alone: the pointer names {published[0].id}, newer than {serving.id}")
    if log is not None:
        log.info(f"publishing {serving.id} ({serving.describe()}): {plan.reason}")
    if plan.write_pointer:
        key = f"models/{serving.id}"
        own_value = own is not None and own[0] == serving.run_id and serving.how == "automatic"
        value = own[1] if own_value and own is not None else value_for(instance, serving, state.serving.model, mlflow)
        store.write(key, dump_value(value))
        published_at = datetime.now(UTC).isoformat(timespec="seconds")
        store.write(POINTER, json.dumps(pointer_document(serving, key, published_at), indent=1).encode())
    if plan.move_alias and serving.alias_target is not None:
        mlflow.set_champion(*serving.alias_target, serving.month)  # type: ignore[union-attr]
    return plan


def wait_for_own_record(
    instance: dg.DagsterInstance, run_id: str, asset: str = PRODUCTION_ASSET, deadline_seconds: float = 120.0
) -> bool:
    """Whether this run's materialization of ``asset`` is in the event log. A step process hands
    its events to the run worker, which stores them: the hook may run before that."""
    start = time.monotonic()
    while True:
        records = instance.get_records_for_run(run_id=run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        if any(
            record.event_log_entry.dagster_event is not None
            and record.event_log_entry.dagster_event.asset_key == dg.AssetKey(asset)
            for record in records.records
        ):
            return True
        if time.monotonic() - start > deadline_seconds:
            return False
        time.sleep(0.2)


@dg.success_hook(required_resource_keys={"mlflow", "alerts"})
def publish_decision(context: dg.HookContext) -> None:
    """After a decision step (production_model, serving_decision): publish once its record is in
    the event log (the record first, always); a challenger left waiting for approval is emailed."""
    from taxi_assets.lib.serving_pointer import serving_store

    asset = context.step_key or PRODUCTION_ASSET
    if not wait_for_own_record(context.instance, context.run_id, asset):
        context.log.warning(f"{asset}'s materialization is not in the event log yet; the sensor publishes it")
        return
    own = (context.run_id, context.op_output_values.get("result")) if asset == PRODUCTION_ASSET else None
    plan = publish(context.instance, serving_store(context.instance), context.resources.mlflow, context.log, own)
    context.log.info(f"serving: {plan.reason}")
    if asset == PRODUCTION_ASSET:
        ask_for_approval(context, context.resources.alerts)


def ask_for_approval(context: dg.HookContext, alerts) -> None:
    """One email for each challenger this run left waiting: the month, both RMSEs, the command."""
    from taxi_assets.lib.alerts import AlertDeliveryError
    from taxi_assets.ml.steering import approval_request

    state = steering_state(context.instance)
    for month, waiting in sorted(state.pending.items()):
        if waiting.status != "pending" or waiting.event.run_id != context.run_id:
            continue
        subject, body = approval_request(waiting.event, alerts.run_url(context.run_id))
        if not alerts.enabled:
            context.log.info(f"{subject} (no alert channel is configured: TAXI_SMTP_HOST, TAXI_ALERT_TO)")
            continue
        try:
            alerts.send(subject, body)
            context.log.info(f"approval requested by email: {subject}")
        except AlertDeliveryError as error:  # it waits either way: `taxi-assets serving` lists it
            context.log.warning(f"the approval request for {month} was not delivered: {error}")
