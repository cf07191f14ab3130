"""Feature engineering: the course's ``PU_DO`` pair and its feature selection."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

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


def record_features(record: Mapping[str, Any]) -> dict[str, Any]:
    """One inference record (the course's input form) as the vectorizer's feature dict.

    Accepts location ids as int or str; raises ``ValueError`` naming a missing or malformed field.
    """
    features: dict[str, Any] = {}
    ids = []
    for field in (PU_LOCATION, DO_LOCATION):
        if field not in record or record[field] is None:
            raise ValueError(f"missing field {field}")
        value = record[field]
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"field {field} must be an integer location id, got {value!r}")
        text = str(value).strip()
        if not text.isdigit():
            raise ValueError(f"field {field} must be an integer location id, got {value!r}")
        ids.append(str(int(text)))
    if TRIP_DISTANCE not in record or record[TRIP_DISTANCE] is None:
        raise ValueError(f"missing field {TRIP_DISTANCE}")
    distance = record[TRIP_DISTANCE]
    if isinstance(distance, bool) or not isinstance(distance, (int, float)):
        raise ValueError(f"field {TRIP_DISTANCE} must be a number, got {distance!r}")
    distance = float(distance)
    if distance != distance or distance < 0:  # NaN or negative
        raise ValueError(f"field {TRIP_DISTANCE} must be a non-negative number, got {distance!r}")
    features[PU_DO] = f"{ids[0]}_{ids[1]}"
    features[TRIP_DISTANCE] = distance
    return features
