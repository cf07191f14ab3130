"""The training set: the course's "build" block as one typed value."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import pandas as pd
import scipy.sparse as sp

if TYPE_CHECKING:
    from sklearn.feature_extraction import DictVectorizer

from taxi_assets.ml import vectorizing
from taxi_assets.ml.features import TARGET, select_features
from taxi_assets.ml.schema import PICKUP
from taxi_assets.ml.splitting import split_on_value


def _shape(matrix: sp.csr_matrix) -> tuple[int, int]:
    rows, columns = matrix.shape  # type: ignore[misc]  # scipy's stubs allow None
    return int(rows), int(columns)


@dataclass(frozen=True)
class TrainingSet:
    """The course's seven outputs.

    ``X``/``y``: every cleaned trip of both months, ``X`` with a vectorizer of its own.
    ``X_train``/``X_val``: the rows picked up before / from the split instant, both vectorized
    with ``dv``, which was fitted on the training rows only. ``feature_names`` are ``dv``'s
    columns; ``dv`` itself (a scikit-learn ``DictVectorizer``) is built when first asked for.
    """

    X: sp.csr_matrix
    X_train: sp.csr_matrix
    X_val: sp.csr_matrix
    y: pd.Series
    y_train: pd.Series
    y_val: pd.Series
    feature_names: tuple[str, ...]

    @cached_property
    def dv(self) -> DictVectorizer:
        """The course's fitted ``DictVectorizer``: ``dv.transform(records)`` gives X_val's columns."""
        return vectorizing.dict_vectorizer(self.feature_names)

    @property
    def n_features(self) -> int:
        return self.shapes()["X_train"][1]

    def shapes(self) -> dict[str, tuple[int, int]]:
        return {
            name: _shape(matrix) for name, matrix in (("X", self.X), ("X_train", self.X_train), ("X_val", self.X_val))
        }


def build_training_set(cleaned_months: Sequence[pd.DataFrame], split_at: pd.Timestamp | str) -> TrainingSet:
    """Build the training set from cleaned months (oldest first).

    Trips picked up before ``split_at`` train, the rest validate, as the course's
    ``split_on_feature_value``. The matrices equal the course's ``DictVectorizer`` ones.
    """
    trips = pd.concat(cleaned_months, ignore_index=True) if len(cleaned_months) > 1 else cleaned_months[0]
    trips = select_features(trips, extra=[PICKUP, TARGET])
    train, validation = split_on_value(trips, PICKUP, pd.Timestamp(split_at))

    X, _ = vectorizing.fit(select_features(trips))
    X_train, names = vectorizing.fit(select_features(train))
    X_val = vectorizing.transform(select_features(validation), names)
    return TrainingSet(
        X=X,
        X_train=X_train,
        X_val=X_val,
        y=trips[TARGET],
        y_train=train[TARGET],
        y_val=validation[TARGET],
        feature_names=tuple(names),
    )
