"""The MLflow flavour of a predictor: a pyfunc whose input is the one trip schema.

``predict``'s type hint is ``list[TripRecord]``, so MLflow derives the model's signature from
:class:`~taxi_assets.ml.trip_record.TripRecord` and checks every input against it (a DataFrame,
a list of records; ids as numbers or strings of digits) before the model sees it.
"""

from __future__ import annotations

from mlflow.pyfunc.model import PythonModel

from taxi_assets.ml.predictor import TripDurationPredictor
from taxi_assets.ml.trip_record import TripRecord


class TripDurationModel(PythonModel):
    """Vectorizer + model in one MLflow model: trips in, minutes out."""

    def __init__(self, predictor: TripDurationPredictor):
        self.predictor = predictor

    def predict(self, model_input: list[TripRecord], params=None) -> list[float]:
        return [float(value) for value in self.predictor.predict_records(model_input)]


def input_example() -> list[dict]:
    """The course's two sample trips, as the model's documented input."""
    return [
        {"PULocationID": 236, "DOLocationID": 239, "trip_distance": 1.98},
        {"PULocationID": 65, "DOLocationID": 170, "trip_distance": 6.54},
    ]
