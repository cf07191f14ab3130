"""Reads of the Dagster instance's event log and run storage: past materializations and runs.

Charts across months and the drift checks use these rather than re-reading data or any store's
tables directly: the event log is Dagster's public record of what each materialization produced.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

DATA_VERSION_TAG = "dagster/data_version"  # where Dagster keeps a materialization's or observation's version


def _plain(value: Any) -> Any:
    """A metadata entry's Python value (``MetadataValue``s wrap theirs in ``.value``)."""
    return getattr(value, "value", value)


def latest_metadata(instance: dg.DagsterInstance, asset: str, partition: str | None) -> dict[str, Any] | None:
    """The newest materialization's metadata (of one partition), as plain values, or None."""
    partitions = [partition] if partition is not None else None
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=partitions), limit=1
    )
    if not result.records:
        return None
    materialization = result.records[0].asset_materialization
    if materialization is None:
        return None
    return {key: _plain(value) for key, value in materialization.metadata.items()}


def observed_version(context_or_instance, month: str, asset: str = "trip_files") -> str | None:
    """The data version of ``asset``'s newest observation for ``month`` (the trip file's version
    as the instance knows it), or None if it was never observed."""
    instance = getattr(context_or_instance, "instance", context_or_instance)
    result = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[month]), limit=1
    )
    if not result.records:
        return None
    return _data_version(result.records[0].event_log_entry)


def recorded_version(instance: dg.DagsterInstance, asset: str, month: str | None) -> str | None:
    """The data version of ``asset``'s newest materialization (of ``month``), or None."""
    records_filter = dg.AssetRecordsFilter(
        asset_key=dg.AssetKey(asset), asset_partitions=[month] if month is not None else None
    )
    result = instance.fetch_materializations(records_filter, limit=1)
    return _data_version(result.records[0].event_log_entry) if result.records else None


def _data_version(entry) -> str | None:
    event = entry.dagster_event
    data = event.event_specific_data if event is not None else None
    for holder in (getattr(data, "materialization", None), getattr(data, "asset_observation", None)):
        if holder is not None and holder.tags and DATA_VERSION_TAG in holder.tags:
            return holder.tags[DATA_VERSION_TAG]
    return None


def metadata_by_partition(instance: dg.DagsterInstance, asset: str, limit: int = 1000) -> dict[str, dict[str, Any]]:
    """The newest metadata of every materialized partition of ``asset``."""
    newest: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        result = instance.fetch_materializations(dg.AssetKey(asset), limit=limit, cursor=cursor, ascending=False)
        for record in result.records:
            materialization = record.asset_materialization
            if materialization and materialization.partition and materialization.partition not in newest:
                newest[materialization.partition] = {key: _plain(v) for key, v in materialization.metadata.items()}
        if not result.has_more:
            return newest
        cursor = result.cursor


def recorded_rmse(instance: dg.DagsterInstance) -> dict[str, dict[str, float]]:
    """Validation RMSE per model per month, from the event log's model materializations."""
    series: dict[str, dict[str, float]] = {}
    for partition, metadata in metadata_by_partition(instance, "sklearn_models").items():
        for key, value in metadata.items():
            if key.endswith("_rmse") and key != "best_rmse":
                series.setdefault(key.removesuffix("_rmse"), {})[partition] = float(value)
    for partition, metadata in metadata_by_partition(instance, "xgboost_model").items():
        if "rmse" in metadata:
            series.setdefault("xgboost", {})[partition] = float(metadata["rmse"])
    return series


def rmse_history(instance: dg.DagsterInstance, month: str, current: dict[str, float]) -> dict[str, dict[str, float]]:
    """:func:`recorded_rmse` with this run's values for ``month`` (not in the event log yet)."""
    series = recorded_rmse(instance)
    for name, rmse in current.items():
        series.setdefault(name, {})[month] = rmse
    return series
