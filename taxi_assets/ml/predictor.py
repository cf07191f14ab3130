"""A trained model with the vectorizer it was trained with: predicts minutes from trip records."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class TripDurationPredictor:
    """``predict`` takes the course's records (``PULocationID``, ``DOLocationID``,
    ``trip_distance``; ids as int or str) and returns minutes.

    ``vectorizer`` is the one whose matrix the model was fitted on, so the pair is servable on
    its own (the course's sklearn path kept no vectorizer for its final model).
    """

    name: str
    kind: str  # "sklearn" or "xgboost"
    model: Any
    vectorizer: Any
    partition: str | None = None
    best_iteration: int | None = None  # xgboost: trees to use (early stopping)

    def features(self, records: Iterable[Mapping[str, Any]] | Mapping[str, Any]):
        """The model's matrix for records, validated one by one (errors name the record)."""
        import pandas as pd

        from taxi_assets.ml import vectorizing
        from taxi_assets.ml.features import record_features

        if isinstance(records, Mapping):
            records = [records]
        rows = []
        for position, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise ValueError(f"record {position} must be a mapping, got {type(record).__name__}")
            try:
                rows.append(record_features(record))
            except ValueError as error:
                raise ValueError(f"record {position}: {error}") from None
        # Same matrix as dv.transform(rows), without a dict per row inside the vectorizer.
        return vectorizing.transform(pd.DataFrame.from_records(rows, columns=["PU_DO", "trip_distance"]), self.vectorizer)

    def predict(self, records) -> np.ndarray:
        """Minutes for each record (a list of mappings, or one mapping)."""
        return self.predict_matrix(self.features(records))

    def predict_features(self, features) -> np.ndarray:
        """Minutes for a frame of model features (``PU_DO``, ``trip_distance``), as in cleaned_trips."""
        from taxi_assets.ml import vectorizing
        from taxi_assets.ml.features import FEATURES

        return self.predict_matrix(vectorizing.transform(features[FEATURES], self.vectorizer))

    def predict_matrix(self, matrix) -> np.ndarray:
        if matrix.shape[0] == 0:
            return np.empty(0)
        if self.kind == "xgboost":
            import xgboost as xgb

            rounds = (0, self.best_iteration + 1) if self.best_iteration is not None else (0, 0)
            if matrix.shape[0] >= 64:
                # Batches: straight from the CSR arrays, about twice as fast as via a DMatrix.
                return self.model.inplace_predict(matrix, iteration_range=rounds)
            return self.model.predict(xgb.DMatrix(matrix), iteration_range=rounds)
        return np.asarray(self.model.predict(matrix), dtype=float)


@dataclass
class TrainedModel:
    """What a model asset stores for one model: the predictor and how it was obtained."""

    name: str
    predictor: TripDurationPredictor
    rmse: float
    mse: float
    best_params: dict[str, Any]
    n_trials: int
    train_seconds: float
    mlflow_run_id: str | None = None
    registered_model: str | None = None
    model_version: str | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
