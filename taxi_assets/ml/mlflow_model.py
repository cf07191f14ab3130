"""The MLflow flavour of a predictor: a pyfunc taking the course's records as a DataFrame."""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from taxi_assets.ml.predictor import TripDurationPredictor


class TripDurationModel(mlflow.pyfunc.PythonModel):
    """Vectorizer + model in one MLflow model: ``predict`` takes rows of
    ``PULocationID, DOLocationID, trip_distance`` and returns minutes."""

    def __init__(self, predictor: TripDurationPredictor):
        self.predictor = predictor

    def predict(self, context, model_input: pd.DataFrame, params=None):
        return self.predictor.predict(model_input.to_dict("records"))


def signature():
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("long", "PULocationID"), ColSpec("long", "DOLocationID"), ColSpec("double", "trip_distance")]),
        outputs=Schema([ColSpec("double")]),
    )


def input_example() -> pd.DataFrame:
    """The course's two sample trips, as the model's documented input."""
    return pd.DataFrame(
        [
            {"PULocationID": 236, "DOLocationID": 239, "trip_distance": 1.98},
            {"PULocationID": 65, "DOLocationID": 170, "trip_distance": 6.54},
        ]
    )
