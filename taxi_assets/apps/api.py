"""Python API: load a model from the Dagster instance (never the code location)."""

from __future__ import annotations

import dagster as dg

from taxi_assets.ml.predictor import TripDurationPredictor
from taxi_assets.model_store import ModelNotFoundError, load_trained_model, serving_model

__all__ = ["ModelNotFoundError", "load_model"]


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
