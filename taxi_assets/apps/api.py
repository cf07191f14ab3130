"""Python API: load a model from the Dagster instance (never the code location)."""

from __future__ import annotations

import dagster as dg

from taxi_assets.lib.model_store import ModelNotFoundError, load_trained_model, serving_model
from taxi_assets.ml.predictor import TripDurationPredictor

__all__ = ["ModelNotFoundError", "load_model", "predictions"]


def load_model(
    name: str | None = None, partition: str | None = None, instance: dg.DagsterInstance | None = None
) -> TripDurationPredictor:
    """The predictor that serves (no ``name``: the newest month's production_model decision, as
    the server and the predict job use), or model ``name`` (``"xgboost"`` or a scikit-learn class
    such as ``"LinearRegression"``) from the latest materialized month, or from ``partition``.

    ``predictor.predict(trips)`` takes a pandas DataFrame with ``PULocationID``, ``DOLocationID``
    and ``trip_distance``, a list of such records, or one record, and returns minutes as a NumPy
    array. Reads the instance at ``DAGSTER_HOME`` unless one is given.
    """
    instance = instance or dg.DagsterInstance.get()
    if name is None:
        if partition is not None:
            raise ValueError("partition needs a model name; without one, load_model gives the model that serves")
        return serving_model(instance).predictor
    return load_trained_model(instance, name, partition)


def predictions(month: str, instance: dg.DagsterInstance | None = None):
    """Month ``month``'s batch predictions (``trip_predictions``) as a pandas DataFrame: every
    cleaned trip with the minutes the serving model predicted and the minutes it took, and which
    model it was. Read from the Parquet file (locally under the instance, or in S3 in production);
    ``FileNotFoundError`` says how to make it when the month was never scored."""
    from taxi_assets.lib.months import parse_partition
    from taxi_assets.lib.predictions import prediction_store_from_env

    instance = instance or dg.DagsterInstance.get()
    return prediction_store_from_env(instance).read(parse_partition(month))
