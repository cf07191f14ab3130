"""The one read path to models: what serves (the published decision, see ``serving_pointer``)
and any month's trained models (from the Dagster instance and the IO manager's storage).

The server, ``load_model`` and the predict job all read the same published pointer, so they
agree on what serves. Nothing here builds the code location, and the server needs only the
serving prefix of the bucket, not Dagster's database, the trip data or the tracking server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg

from taxi_assets.lib.months import monthly_partitions

PRODUCTION_ASSET = "production_model"


class ModelNotFoundError(LookupError):
    """No materialization holds the requested model; the message says how to make one."""


@dataclass(frozen=True)
class LoadedModel:
    """A serving model and where it came from."""

    predictor: Any
    name: str
    partition: str  # the month the model was trained for
    decided_for: str  # the month whose production decision chose it
    version: str | None
    storage_id: int  # the materialization it came from: a new one means a new model
    run_id: str = ""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "partition": self.partition, "version": self.version, "run_id": self.run_id}


def read_value(instance: dg.DagsterInstance, asset: str, partition: str) -> Any:
    """One partition of an asset's stored value, through the IO manager the environment selects."""
    from taxi_assets.lib.io_managers import io_manager_from_env

    with dg.build_resources({"io_manager": io_manager_from_env()}, instance=instance) as resources:
        context = dg.build_input_context(
            asset_key=dg.AssetKey(asset),
            partition_key=partition,
            asset_partitions_def=monthly_partitions,
            instance=instance,
        )
        return resources.io_manager.load_input(context)


def newest_decision(instance: dg.DagsterInstance) -> str | None:
    """The newest month with a production_model decision: the one that serves."""
    return max(instance.get_materialized_partitions(dg.AssetKey(PRODUCTION_ASSET)), default=None)


def decision_before(instance: dg.DagsterInstance, month: str) -> tuple[str, Any] | None:
    """The newest production decision for a month before ``month`` and its value: the model that
    served when ``month``'s file arrived (it never saw ``month``)."""
    earlier = [key for key in instance.get_materialized_partitions(dg.AssetKey(PRODUCTION_ASSET)) if key < month]
    if not earlier:
        return None
    decided_for = max(earlier)
    return decided_for, read_value(instance, PRODUCTION_ASSET, decided_for)


def load_production_model(store, known_storage_id: int | None = None) -> LoadedModel | None:
    """The model that serves, as published in ``store`` (see ``serving_pointer``), or None if
    nothing is published yet or it is the one already loaded (``known_storage_id``, the
    materialization of the decision it came from)."""
    from taxi_assets.lib.serving_pointer import load_published_value, read_published

    published = read_published(store)
    if published is None or published[0].storage_id == known_storage_id:
        return None
    decision, key = published
    production = load_published_value(store, key)
    return LoadedModel(
        predictor=production.predictor,
        name=production.name,
        partition=production.model_partition,
        decided_for=production.decided_for,
        version=production.model_version,
        storage_id=decision.storage_id,
        run_id=decision.run_id,
    )


def serving_model(instance: dg.DagsterInstance) -> LoadedModel:
    """The published model that serves (what the server reads), raising
    :class:`ModelNotFoundError` when none is published."""
    from taxi_assets.lib.serving_pointer import serving_store

    store = serving_store(instance)
    loaded = load_production_model(store)
    if loaded is None:
        recorded = newest_decision(instance)
        if recorded is not None:
            raise ModelNotFoundError(
                f"production_model {recorded} is recorded but not yet published at {store.where}; the "
                "serving_publisher sensor (dagster-daemon) or the next production_model run publishes it"
            )
        raise ModelNotFoundError(
            "no production_model is materialized yet, so no model serves; retrain a month first, e.g. "
            "`taxi-assets materialize --partition 2024-02 --select "
            "raw_trips,cleaned_trips,training_set,sklearn_models,xgboost_model,production_model`"
        )
    return loaded


def _asset_for(name: str) -> tuple[str, str]:
    from taxi_assets.ml.hyperparameters import short_name, valid_model_names

    if name.lower() == "xgboost":
        return "xgboost_model", "xgboost"
    try:
        return "sklearn_models", short_name(name)
    except ValueError:
        raise ValueError(f"unknown model {name!r}; use 'xgboost' or one of: {', '.join(valid_model_names())}") from None


def load_trained_model(instance: dg.DagsterInstance, name: str, partition: str | None = None):
    """The predictor of model ``name`` from the latest materialized month, or from ``partition``."""
    asset, model_name = _asset_for(name)
    materialized = sorted(instance.get_materialized_partitions(dg.AssetKey(asset)), reverse=True)
    how = (
        f"materialize it first, e.g. `taxi-assets materialize --select {asset} --partition "
        f"{partition or 'YYYY-MM'}`"
        + ("" if asset == "xgboost_model" else f" with {model_name} in the sklearn_models config")
    )
    if partition and partition not in materialized:
        raise ModelNotFoundError(f"{asset} has no materialization for partition {partition}; {how}")
    candidates = [partition] if partition else materialized
    if not candidates:
        raise ModelNotFoundError(f"{asset} was never materialized; {how}")
    for key in candidates:
        value = read_value(instance, asset, key)
        trained = value if asset == "xgboost_model" else value.get(model_name)
        if trained is not None:
            return trained.predictor
    raise ModelNotFoundError(
        f"no materialization of {asset} contains {model_name} (looked at {', '.join(candidates)}); {how}"
    )
