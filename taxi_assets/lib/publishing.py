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

from taxi_assets.lib.model_store import PRODUCTION_ASSET, read_value
from taxi_assets.lib.serving_pointer import POINTER, ServingStore, read_published
from taxi_assets.ml.serving import Publication, ServedDecision, pointer_document, publication

# production_model's metadata entry that names the model it serves (served_fields).
SERVING_RECORD = "serving_record"


def recorded_decision(instance: dg.DagsterInstance) -> ServedDecision | None:
    """The decision that serves by Dagster's record: the newest month's latest production_model
    materialization (a backfilled older month never serves)."""
    month = max(instance.get_materialized_partitions(dg.AssetKey(PRODUCTION_ASSET)), default=None)
    if month is None:
        return None
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(PRODUCTION_ASSET), asset_partitions=[month]), limit=1
    ).records
    if not records:
        return None
    metadata = records[0].asset_materialization.metadata if records[0].asset_materialization else {}
    entry = metadata.get(SERVING_RECORD)
    described = entry.value if isinstance(entry, dg.JsonMetadataValue) and isinstance(entry.value, dict) else None
    if described is None:  # decided before the record was kept in metadata: read the value
        described = served_fields(read_value(instance, PRODUCTION_ASSET, month))
    return ServedDecision(month=month, storage_id=records[0].storage_id, run_id=records[0].run_id, **described)


def served_fields(value: Any) -> dict[str, Any]:
    """What a decision records about the model that serves (production_model's metadata)."""
    return {
        "name": value.name,
        "model_partition": value.model_partition,
        "registered_model": value.registered_model,
        "version": value.model_version,
        "reason": value.reason,
    }


def publish(
    instance: dg.DagsterInstance, store: ServingStore, mlflow=None, log=None, own: tuple[str, Any] | None = None
) -> Publication:
    """Bring the pointer (and, given the MLflow resource, the ``champion`` alias) up to Dagster's
    record; idempotent, so every publisher may call it and a repeat does nothing. ``own``: the
    calling run's id and decision value, used instead of reading it back when it is the record."""
    from taxi_assets.ml.value_files import dump_value

    serving = recorded_decision(instance)
    published = read_published(store)
    alias = mlflow.champion() if mlflow is not None else None
    plan = publication(serving, published[0] if published else None, alias, alias_known=mlflow is not None)
    if serving is None or not plan.needed:
        return plan
    if log is not None:
        log.info(f"publishing {serving.id} ({serving.describe()}): {plan.reason}")
    if plan.write_pointer:
        key = f"models/{serving.id}"
        value = (
            own[1]
            if own is not None and own[0] == serving.run_id
            else read_value(instance, PRODUCTION_ASSET, serving.month)
        )
        store.write(key, dump_value(value))
        published_at = datetime.now(UTC).isoformat(timespec="seconds")
        store.write(POINTER, json.dumps(pointer_document(serving, key, published_at), indent=1).encode())
    if plan.move_alias and serving.alias_target is not None:
        mlflow.set_champion(*serving.alias_target, serving.month)  # type: ignore[union-attr]
    return plan


def wait_for_own_record(instance: dg.DagsterInstance, run_id: str, deadline_seconds: float = 120.0) -> bool:
    """Whether this run's production_model materialization is in the event log. A step process
    hands its events to the run worker, which stores them: the hook may run before that."""
    start = time.monotonic()
    while True:
        records = instance.get_records_for_run(run_id=run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        if any(
            record.event_log_entry.dagster_event is not None
            and record.event_log_entry.dagster_event.asset_key == dg.AssetKey(PRODUCTION_ASSET)
            for record in records.records
        ):
            return True
        if time.monotonic() - start > deadline_seconds:
            return False
        time.sleep(0.2)
