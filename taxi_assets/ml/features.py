"""Feature engineering: the course's ``PU_DO`` pair and its feature selection."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from taxi_assets.ml.schema import DO_LOCATION, PU_LOCATION, TRIP_DISTANCE

PU_DO = "PU_DO"
CATEGORICAL_FEATURES = [PU_DO]
NUMERICAL_FEATURES = [TRIP_DISTANCE]
FEATURES = CATEGORICAL_FEATURES + NUMERICAL_FEATURES
TARGET = "duration"


def combine_features(trips: pd.DataFrame) -> pd.DataFrame:
    """Add ``PU_DO`` = "<PULocationID>_<DOLocationID>" (one vectorized string concatenation)."""
    pu_do = trips[PU_LOCATION].astype(str) + "_" + trips[DO_LOCATION].astype(str)
    return trips.assign(**{PU_DO: pu_do})


def select_features(trips: pd.DataFrame, extra: Iterable[str] = ()) -> pd.DataFrame:
    """The model's input columns, plus any ``extra`` ones (the split column, the target)."""
    return trips[FEATURES + list(extra)]
