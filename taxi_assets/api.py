"""Python API: load a materialized model from the Dagster instance."""

from __future__ import annotations

import dagster as dg

from taxi_assets.ml.hyperparameters import short_name, valid_model_names
from taxi_assets.ml.predictor import TripDurationPredictor


class ModelNotFoundError(LookupError):
    """No materialization holds the requested model."""


def _asset_for(name: str) -> tuple[str, str]:
    if name.lower() == "xgboost":
        return "xgboost_model", "xgboost"
    try:
        return "sklearn_models", short_name(name)
    except ValueError:
        raise ValueError(f"unknown model {name!r}; use 'xgboost' or one of: {', '.join(valid_model_names())}") from None


def load_model(
    name: str | None = None, partition: str | None = None, instance: dg.DagsterInstance | None = None
) -> TripDurationPredictor:
    """The predictor that serves (no ``name``: the newest month's production_model decision, as
    the server and the predict job use), or model ``name`` (``"xgboost"`` or a scikit-learn class
    such as ``"LinearRegression"``) from the latest materialized partition, or from ``partition``.

    ``predictor.predict([{"PULocationID": 236, "DOLocationID": 239, "trip_distance": 1.98}])``
    returns minutes. Reads the instance at ``DAGSTER_HOME`` unless one is given.
    """
    from taxi_assets.definitions import defs

    instance = instance or dg.DagsterInstance.get()
    if name is None:
        from taxi_assets.serving import load_production_model

        if partition is not None:
            raise ValueError("partition needs a model name; without one, load_model gives the model that serves")
        production = load_production_model(instance, None)
        if production is None:
            raise ModelNotFoundError(
                "no production_model is materialized yet; retrain a month first, e.g. "
                "`taxi-assets materialize --partition YYYY-MM --select raw_trips,cleaned_trips,training_set,"
                "sklearn_models,xgboost_model,production_model`"
            )
        return production.predictor
    asset, model_name = _asset_for(name)
    materialized = sorted(instance.get_materialized_partitions(dg.AssetKey(asset)), reverse=True)
    how = (
        f"materialize it first, e.g. `taxi-assets materialize --select {asset} --partition "
        f"{partition or 'YYYY-MM'}`"
        + ("" if asset == "xgboost_model" else f" with {model_name} in the sklearn_models config")
    )
    candidates = [partition] if partition else materialized
    if partition and partition not in materialized:
        raise ModelNotFoundError(f"{asset} has no materialization for partition {partition}; {how}")
    if not candidates:
        raise ModelNotFoundError(f"{asset} was never materialized; {how}")
    for key in candidates:
        value = defs.load_asset_value(asset, partition_key=key, instance=instance)
        trained = value if asset == "xgboost_model" else value.get(model_name)
        if trained is not None:
            return trained.predictor
    raise ModelNotFoundError(
        f"no materialization of {asset} contains {model_name} (looked at {', '.join(candidates)}); {how}"
    )
