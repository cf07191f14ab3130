"""The registered MLflow model, as "models from code": MLflow runs this file to build the model.

Nothing is CloudPickled: the model's artifact is the predictor folder of
:mod:`taxi_assets.ml.model_files` (the booster in XGBoost's own format, scikit-learn models through
skops, the vectorizer as its feature names), loaded in ``load_context``. ``predict``'s type hint is
``list[TripRecord]``, so MLflow derives the model's signature from the one trip schema and checks
every input against it (a DataFrame or a list of records; ids as numbers or strings of digits)
before the model sees it.

This module is MLflow's to execute (it ends with ``set_model``); the project never imports it.
"""

from __future__ import annotations

from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel

from taxi_assets.ml.trip_record import TripRecord


class TripDurationModel(PythonModel):
    """Vectorizer + model in one MLflow model: trips in, minutes out."""

    def load_context(self, context) -> None:
        from taxi_assets.ml.model_files import load_predictor

        self.predictor = load_predictor(context.artifacts["predictor"])

    def predict(self, model_input: list[TripRecord], params=None) -> list[float]:
        return [float(value) for value in self.predictor.predict_records(model_input)]


set_model(TripDurationModel())
