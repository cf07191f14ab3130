"""A trained model with the vectorizer it was trained with: predicts minutes from trip records."""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taxi_assets.ml.budget import UNLIMITED, Budget

# Rows per predict call for large matrices: a deep booster takes about a second for 10,000 rows.
PREDICT_CHUNK_ROWS = 8_192
# Up to this many trips a lookup goes trip by trip in plain Python: NumPy's calls cost more than
# the work at that size (a one-trip request is most of the server's traffic).
FEW_TRIPS = 16
_FLOAT32 = struct.Struct("f")


@dataclass
class DistanceLookup:
    """An XGBoost ensemble compiled for the course's two features.

    Every row the model sees has one ``PU_DO`` one-hot column (or none, for an unseen pair) and
    ``trip_distance``. For a given pair, every tree routes all distances between two consecutive
    ``trip_distance`` split thresholds the same way, so the ensemble is a step function of the
    distance per pair. ``table[pair, k]`` holds XGBoost's own prediction at one distance of
    interval ``k``, so a lookup returns exactly what the booster returns, in microseconds.
    """

    # PU_DO value -> row of the table; other pairs (unseen, or no tree splits on them) the last row
    rows: dict[str, int]
    thresholds: np.ndarray  # float32, sorted: XGBoost compares float32 values with "<"
    table: np.ndarray  # float32 [pairs + 1, thresholds + 1]
    cuts: list[float] = field(init=False, repr=False, compare=False)  # the thresholds as Python floats

    def __post_init__(self):
        self.cuts = self.thresholds.tolist()  # float32 values are exact as Python floats

    def predict(self, pu_do: list[str], distance: np.ndarray) -> np.ndarray:
        unseen = self.table.shape[0] - 1
        rows = np.fromiter((self.rows.get(pair, unseen) for pair in pu_do), np.int64, len(pu_do))
        intervals = np.searchsorted(self.thresholds, np.asarray(distance, dtype=np.float32), side="right")
        return self.table[rows, intervals]

    def minutes_of(self, pair: str, miles: float) -> float:
        """One trip, exactly ``float(predict([pair], [miles])[0])``: the distance rounded to
        float32 as ``predict`` rounds it, the interval ``searchsorted(side="right")`` finds
        (``bisect_right`` over the same values), the same cell."""
        row = self.rows.get(pair, len(self.table) - 1)
        return self.table.item(row, bisect_right(self.cuts, _FLOAT32.unpack(_FLOAT32.pack(miles))[0]))


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
    lookup: DistanceLookup | None = None  # a compiled xgboost model (see compile_lookup)

    def predict(self, trips) -> np.ndarray:
        """Minutes for each trip, as a NumPy array.

        ``trips``: a pandas DataFrame with the columns ``PULocationID``, ``DOLocationID`` and
        ``trip_distance``, a list of such records (mappings or TripRecords), or one record. Every
        trip is checked against :class:`~taxi_assets.ml.trip_record.TripRecord`; a ``TripError``
        (a ``ValueError``) names the first bad record and field.
        """
        from taxi_assets.ml.trip_record import TripRecord, validate_records

        if isinstance(trips, (Mapping, TripRecord)):
            trips = [trips]
        elif hasattr(trips, "to_dict") and hasattr(trips, "columns"):  # a DataFrame
            trips = trips.to_dict("records")
        records = validate_records(trips)
        return self.predict_records(records)

    def predict_records(self, records) -> np.ndarray:
        """Minutes for already validated TripRecords."""
        return self.predict_pairs(
            [record.pu_do for record in records], np.asarray([record.trip_distance for record in records], dtype=float)
        )

    def minutes(self, pu_do: list[str], miles: Sequence[float]) -> list[float]:
        """Minutes as Python floats for validated features (what the server answers), equal to
        ``float(value)`` of every value ``predict_pairs`` returns."""
        lookup = self.lookup
        if lookup is not None and len(pu_do) <= FEW_TRIPS:
            return [lookup.minutes_of(pair, distance) for pair, distance in zip(pu_do, miles, strict=True)]
        return self.predict_pairs(pu_do, np.asarray(miles, dtype=float)).tolist()

    def predict_features(self, features) -> np.ndarray:
        """Minutes for a frame of model features (``PU_DO``, ``trip_distance``), as in cleaned_trips."""
        return self.predict_pairs(features["PU_DO"].tolist(), features["trip_distance"].to_numpy(dtype=float))

    def predict_pairs(self, pu_do: list[str], distance: np.ndarray) -> np.ndarray:
        """Minutes for validated features: ``PU_DO`` strings and distances."""
        lookup = self.lookup
        if lookup is not None:
            return lookup.predict(pu_do, distance)
        import pandas as pd

        from taxi_assets.ml import vectorizing

        frame = pd.DataFrame({"PU_DO": pu_do, "trip_distance": distance})
        return self.predict_matrix(vectorizing.transform(frame, self.vectorizer))

    def predict_matrix(self, matrix, budget: Budget = UNLIMITED) -> np.ndarray:
        """Minutes for a matrix in the vectorizer's columns. Large matrices go in chunks, each a
        bounded C call, so a stop request (``budget.check``) is seen between them."""
        if matrix.shape[0] == 0:
            return np.empty(0)
        if matrix.shape[0] > PREDICT_CHUNK_ROWS:
            parts = []
            for start in range(0, matrix.shape[0], PREDICT_CHUNK_ROWS):
                budget.check()
                parts.append(self.predict_matrix(matrix[start : start + PREDICT_CHUNK_ROWS]))
            return np.concatenate(parts)
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
    charts: dict[str, bytes] = field(default_factory=dict)  # PNGs: predicted_vs_actual, residuals, ...
    # float32 minutes on the month's validation rows (X_val, in order), so the production
    # decision compares models without predicting them again.
    validation_predictions: np.ndarray | None = None
    search_seconds: float | None = None  # the hyperparameter search's share of train_seconds
    budget_seconds: float | None = None  # the step's configured budget
    stopped_by: str = "trials"  # what ended the search: all trials ran, or the budget ("time")
    final_fit: str = ""  # XGBoost: how the final booster was fitted (on a sample of rows, then all rows)


def _trees(predictor: TripDurationPredictor) -> list[dict]:
    """The booster's trees up to the best round, from the model's JSON (linear in its size)."""
    import json

    model = json.loads(predictor.model.save_raw("json"))["learner"]["gradient_booster"]["model"]
    trees = model["trees"]
    if predictor.best_iteration is not None:
        per_round = max(1, len(trees) // max(1, predictor.model.num_boosted_rounds()))
        trees = trees[: (predictor.best_iteration + 1) * per_round]
    return trees


def distance_thresholds(predictor: TripDurationPredictor, trees: list[dict] | None = None) -> np.ndarray:
    """The sorted float32 thresholds at which the booster's trees (up to the best round) split
    ``trip_distance``."""
    column = predictor.vectorizer.vocabulary_["trip_distance"]
    found = []
    for tree in _trees(predictor) if trees is None else trees:
        features = np.asarray(tree["split_indices"])
        inner = np.asarray(tree["left_children"]) != -1
        found.append(np.asarray(tree["split_conditions"], dtype=np.float32)[inner & (features == column)])
    return np.unique(np.concatenate(found)) if found else np.empty(0, np.float32)


def split_columns(trees: list[dict]) -> set[int]:
    """The matrix columns any of ``trees`` splits on."""
    used: set[int] = set()
    for tree in trees:
        inner = np.asarray(tree["left_children"]) != -1
        used.update(np.asarray(tree["split_indices"])[inner].tolist())
    return used


LOOKUP_CHUNK_ROWS = 50_000
LOOKUP_PROBE_ROWS = 2_000


def compile_lookup(
    predictor: TripDurationPredictor,
    check_features,
    expected: np.ndarray | None = None,
    max_thresholds: int = 4096,
    budget: Budget = UNLIMITED,
):
    """Compile an XGBoost predictor into a :class:`DistanceLookup`, or say why not.

    ``check_features`` (a frame with ``PU_DO`` and ``trip_distance``) is predicted both ways
    (``expected``: the booster's predictions for them, if already known); the lookup is returned
    only if every value is identical. The table is filled in chunks: when the budget would end
    before the table is filled and checked, compiling stops and the booster keeps serving.
    Returns ``(lookup or None, message)``.
    """
    import time

    from taxi_assets.ml import vectorizing

    if predictor.kind != "xgboost":
        return None, "only XGBoost models are compiled"
    vocabulary = predictor.vectorizer.vocabulary_
    distance_column = vocabulary["trip_distance"]
    trees = _trees(predictor)
    thresholds = distance_thresholds(predictor, trees)
    if len(thresholds) > max_thresholds:
        return None, f"{len(thresholds)} distance thresholds (more than {max_thresholds})"
    # One distance per interval: below the first threshold, then each threshold itself
    # (x < t is false at t, and true below the next one).
    below = np.nextafter(thresholds[0], np.float32(-np.inf)) if len(thresholds) else np.float32(0)
    points = np.concatenate([[below], thresholds]).astype(np.float32)
    pairs = sorted(
        (name.removeprefix("PU_DO="), column) for name, column in vocabulary.items() if name.startswith("PU_DO=")
    )
    # A pair whose column no tree splits on takes, at every split, the path of an unseen pair (at a
    # split on another pair's column both rows have it missing): its row would be the unseen pair's.
    # Only the pairs the trees split on get rows (about a fifth on a green month): a fifth of the
    # predictions to compile, and a table a fifth the size.
    used = split_columns(trees)
    kept = [(pair, column) for pair, column in pairs if column in used]
    columns = [column for _, column in kept] + [-1]  # -1: an unseen pair (no one-hot column)
    table = np.empty((len(columns), len(points)), dtype=np.float32)
    chunk = max(1, LOOKUP_CHUNK_ROWS // len(points))
    cells = len(columns) * len(points)
    started = time.monotonic()
    # The first block is small: it measures what a cell costs before committing to a large block
    # (a 100-deep booster takes seconds for one large block).
    start, size = 0, max(1, LOOKUP_PROBE_ROWS // len(points))
    while start < len(columns):
        budget.check()
        if start:
            # Filling takes the same time per cell throughout: stop early rather than at the end.
            projected = (time.monotonic() - started) / (start * len(points)) * (cells - start * len(points))
            if projected > budget.remaining():
                return None, (
                    f"not compiled: the {len(columns):,} x {len(points)} table would take about "
                    f"{time.monotonic() - started + projected:.0f} s, more than the budget left; the booster serves"
                )
        block = np.asarray(columns[start : start + size], dtype=np.int64)
        n_rows = len(block) * len(points)
        # Rows laid out as the vectorizer lays them out: the pair's column, then the distance.
        matrix = vectorizing.assemble_csr(
            [np.repeat(block, len(points)), np.full(n_rows, distance_column, dtype=np.int64)],
            [np.ones(n_rows), np.tile(points.astype(np.float64), len(block))],
            n_rows,
            len(vocabulary),
        )
        table[start : start + len(block)] = predictor.predict_matrix(matrix).reshape(len(block), len(points))
        start, size = start + len(block), chunk
    rows = {pair: row for row, (pair, _) in enumerate(kept)}
    lookup = DistanceLookup(rows=rows, thresholds=thresholds, table=table)

    if expected is None:
        expected = predictor.predict_features(check_features)
    got = lookup.predict(check_features["PU_DO"].tolist(), check_features["trip_distance"].to_numpy(dtype=float))
    mismatches = int(np.sum(np.asarray(expected).astype(np.float32) != got))
    if mismatches:
        return None, f"{mismatches} of {len(got)} check predictions differ from the booster's"
    return lookup, (
        f"{len(rows):,} zone pairs the trees split on (of {len(pairs):,}; the others share the unseen pair's row) "
        f"x {len(points)} distance intervals, identical on {len(got):,} check rows"
    )
