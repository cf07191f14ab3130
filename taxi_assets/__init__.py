"""taxi_assets: NYC green-taxi trip durations as a Dagster asset graph.

``taxi_assets.load_model()`` returns the predictor that serves (the newest production_model
decision); ``taxi_assets.load_model("xgboost")`` the latest materialized XGBoost model;
``taxi_assets.predictions("2024-02")`` a month's batch predictions as a DataFrame.
Importing the package stays light; Dagster loads ``taxi_assets.definitions``.
"""


def load_model(name: str | None = None, partition: str | None = None, instance=None):
    """See :func:`taxi_assets.apps.api.load_model`."""
    from taxi_assets.apps.api import load_model as _load_model

    return _load_model(name=name, partition=partition, instance=instance)


def predictions(month: str, instance=None):
    """See :func:`taxi_assets.apps.api.predictions`."""
    from taxi_assets.apps.api import predictions as _predictions

    return _predictions(month, instance=instance)


def lineage(model: str, version: str | None = None, instance=None):
    """See :func:`taxi_assets.apps.lineage.lineage` (``.text()`` prints the chain)."""
    from taxi_assets.apps.lineage import lineage as _lineage

    return _lineage(model, version, instance=instance)


def rebuild(model: str, version: str, instance=None):
    """See :func:`taxi_assets.apps.lineage.rebuild`."""
    from taxi_assets.apps.lineage import rebuild as _rebuild

    return _rebuild(model, version, instance=instance)


__all__ = ["lineage", "load_model", "predictions", "rebuild"]
