"""The recorded decisions of what serves, read from Dagster's event log: production_model's
materializations (each month's automatic decision) and serving_decision's (the operators':
pin, rollback, approve, reject, unpin, and the next month's automatic rollback). Both carry
their decision as a ``steering_event`` metadata entry; ``taxi_assets.ml.steering`` folds them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import dagster as dg

from taxi_assets.lib.catalog import STEERING_ASSET
from taxi_assets.lib.model_store import PRODUCTION_ASSET, read_value
from taxi_assets.ml.serving import ServedDecision
from taxi_assets.ml.steering import AUTOMATIC, Event, ModelRef, Served, State, fold, state_for_month

STEERING_EVENT = "steering_event"  # the metadata entry that holds a decision (event_document)
SERVING_RECORD = "serving_record"  # production_model's entry naming the model it chose (served_fields)
JUDGEMENT = "promotion_judgement"  # trip_predictions' entry: the next month's verdict on a promotion


def event_document(event: Event) -> dict[str, Any]:
    """An event as metadata: everything but what the record itself says (storage id, run)."""
    document = dataclasses.asdict(event)
    del document["storage_id"], document["run_id"]
    return document


def _event(document: dict[str, Any], storage_id: int, run_id: str) -> Event:
    model = document.get("model")
    fields = {f.name for f in dataclasses.fields(Event)} - {"storage_id", "run_id", "model"}
    return Event(
        storage_id=storage_id,
        run_id=run_id,
        model=ModelRef(**model) if isinstance(model, dict) else None,
        **{key: value for key, value in document.items() if key in fields},
    )


def _legacy_automatic(instance, metadata: Mapping[str, Any], month: str, storage_id: int, run_id: str) -> Event:
    """A production_model record from before steering events: its serving record, or its value."""
    entry = metadata.get(SERVING_RECORD)
    described = entry.value if isinstance(entry, dg.JsonMetadataValue) and isinstance(entry.value, dict) else None
    if described is None:
        described = served_fields(read_value(instance, PRODUCTION_ASSET, month))
    decision = getattr(metadata.get("decision"), "value", metadata.get("decision"))
    model = ModelRef(
        described["name"], described["model_partition"], described["registered_model"], described["version"], month
    )
    return Event(
        storage_id, AUTOMATIC, month, run_id, model, promoted=decision == "promoted", reason=described["reason"]
    )


def served_fields(value: Any) -> dict[str, Any]:
    """What a decision records about the model it chose (production_model's metadata)."""
    return {
        "name": value.name,
        "model_partition": value.model_partition,
        "registered_model": value.registered_model,
        "version": value.model_version,
        "reason": value.reason,
    }


def _records(instance: dg.DagsterInstance, asset: str):
    """Every materialization of ``asset``, oldest first."""
    cursor = None
    while True:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset)), limit=500, cursor=cursor, ascending=True
        )
        yield from result.records
        if not result.has_more:
            return
        cursor = result.cursor


def recorded_events(instance: dg.DagsterInstance) -> list[Event]:
    """Every decision of what serves, automatic and by operators, in Dagster's order."""
    events = []
    for asset in (PRODUCTION_ASSET, STEERING_ASSET):
        for record in _records(instance, asset):
            materialization = record.asset_materialization
            if materialization is None:
                continue
            metadata = materialization.metadata
            entry = metadata.get(STEERING_EVENT)
            if isinstance(entry, dg.JsonMetadataValue) and isinstance(entry.value, dict):
                events.append(_event(entry.value, record.storage_id, record.run_id))
            elif asset == PRODUCTION_ASSET and materialization.partition:
                events.append(
                    _legacy_automatic(instance, metadata, materialization.partition, record.storage_id, record.run_id)
                )
    return sorted(events, key=lambda event: event.storage_id)


def steering_state(instance: dg.DagsterInstance, month: str | None = None) -> State:
    """What serves now, or (given ``month``) what served when ``month``'s file arrived."""
    events = recorded_events(instance)
    return fold(events) if month is None else state_for_month(events, month)


def served_decision(served: Served) -> ServedDecision:
    """The published form of what serves: the event that confirmed it names the decision."""
    event, model = served.event, served.model
    reason = event.reason if event.kind == AUTOMATIC else f"{event.kind} by {event.by or 'unknown'}: {event.reason}"
    return ServedDecision(
        month=event.month,
        storage_id=event.storage_id,
        run_id=event.run_id,
        name=model.name,
        model_partition=model.model_partition,
        registered_model=model.registered_model,
        version=model.version,
        reason=reason,
        how=served.how,
        by=event.by,
        source_month=model.source_month,
    )


def recorded_decision(instance: dg.DagsterInstance) -> ServedDecision | None:
    """The decision that serves by Dagster's record (see ``taxi_assets.ml.steering``)."""
    serving = steering_state(instance).serving
    return served_decision(serving) if serving is not None else None


def model_value(instance: dg.DagsterInstance, model: ModelRef, mlflow=None):
    """The ProductionModel that holds ``model``: the production_model month that chose it, if
    that value still holds this version, else the registered version from MLflow."""
    if model.source_month and model.source_month in instance.get_materialized_partitions(dg.AssetKey(PRODUCTION_ASSET)):
        value = read_value(instance, PRODUCTION_ASSET, model.source_month)
        if (value.registered_model, value.model_version, value.name) == (
            model.registered_model,
            model.version,
            model.name,
        ):
            return value
    if mlflow is None or not (model.registered_model and model.version):
        raise LookupError(
            f"{model.label}: production_model {model.source_month or '(none)'} no longer holds it, and it cannot be "
            "loaded from the MLflow registry here"
        )
    return mlflow.production_model(model.registered_model, model.version)


def value_for(instance: dg.DagsterInstance, decision: ServedDecision, served_model: ModelRef, mlflow=None):
    """The value to publish for ``decision``: the model's value, as decided for its month, with why."""
    value = model_value(instance, served_model, mlflow)
    if decision.how == AUTOMATIC and served_model.source_month == decision.month:
        return value
    return dataclasses.replace(value, decided_for=decision.month, reason=decision.reason)


def served_value(instance: dg.DagsterInstance, served: Served, mlflow=None):
    """The model of ``served`` as a decision value: its own production_model value, or the one
    MLflow holds, with the month of the decision that confirmed it."""
    value = model_value(instance, served.model, mlflow)
    if served.how == AUTOMATIC and served.model.source_month == served.event.month:
        return value
    return dataclasses.replace(value, decided_for=served.event.month)
