"""Reads of the Dagster instance's event log and run storage: past materializations and runs.

Charts across months and the drift checks use these rather than re-reading data or any store's
tables directly: the event log is Dagster's public record of what each materialization produced.
"""

from __future__ import annotations

from typing import Any

import dagster as dg


def _plain(value: Any) -> Any:
    """A metadata entry's Python value (``MetadataValue``s wrap theirs in ``.value``)."""
    return getattr(value, "value", value)


def latest_metadata(instance: dg.DagsterInstance, asset: str, partition: str) -> dict[str, Any] | None:
    """The newest materialization's metadata for one partition, as plain values, or None."""
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    )
    if not result.records:
        return None
    materialization = result.records[0].asset_materialization
    if materialization is None:
        return None
    return {key: _plain(value) for key, value in materialization.metadata.items()}


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
