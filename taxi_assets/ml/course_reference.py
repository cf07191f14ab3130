"""A faithful re-implementation of the course's data preparation (Mage "data_preparation").

Kept as the yardstick: tests and ``benchmarks/bench_prepare.py`` check that
:mod:`taxi_assets.ml` builds identical matrices, and measure how much faster it is. Row-wise
``apply`` for the duration and ``to_dict('records')`` + ``DictVectorizer`` are deliberate here.
"""

from __future__ import annotations

import pandas as pd
from sklearn.feature_extraction import DictVectorizer

CATEGORICAL_FEATURES = ["PU_DO"]
NUMERICAL_FEATURES = ["trip_distance"]


def clean(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    # The course's attribute assignments, kept as written (pandas' stubs do not model them).
    df.lpep_dropoff_datetime = pd.to_datetime(df.lpep_dropoff_datetime)  # type: ignore[attr-defined]
    df.lpep_pickup_datetime = pd.to_datetime(df.lpep_pickup_datetime)  # type: ignore[attr-defined]
    df["duration"] = df.lpep_dropoff_datetime - df.lpep_pickup_datetime
    df.duration = df.duration.apply(lambda td: td.total_seconds() / 60)  # type: ignore[attr-defined]
    df = df[(df.duration >= 1) & (df.duration <= 60)].copy()
    categorical = ["PULocationID", "DOLocationID"]
    df[categorical] = df[categorical].astype(str)
    return df


def combine_features(df: pd.DataFrame) -> pd.DataFrame:
    df["PU_DO"] = df["PULocationID"].astype(str) + "_" + df["DOLocationID"].astype(str)
    return df


def select_features(df: pd.DataFrame, features=None) -> pd.DataFrame:
    columns = CATEGORICAL_FEATURES + NUMERICAL_FEATURES
    if features:
        columns += features
    return df[columns]


def split_on_value(df, feature, value):
    df_train = df[df[feature] < value].drop(columns=[feature])
    df_val = df[df[feature] >= value].drop(columns=[feature])
    return df_train, df_val


def vectorize_features(training_set, validation_set=None):
    dv = DictVectorizer()
    X_train = dv.fit_transform(training_set.to_dict(orient="records"))
    X_val = None
    if validation_set is not None:
        X_val = dv.transform(validation_set[training_set.columns].to_dict(orient="records"))
    return X_train, X_val, dv


def prepare_and_build(raw_months: list[pd.DataFrame], split_on_feature_value: str):
    """ingest (concat) -> prepare -> build; returns (X, X_train, X_val, y, y_train, y_val, dv)."""
    df = pd.concat(raw_months)
    df = clean(df)
    df = combine_features(df)
    df = select_features(df, features=["lpep_pickup_datetime", "duration"])
    df_train, df_val = split_on_value(df, "lpep_pickup_datetime", split_on_feature_value)
    X, _, _ = vectorize_features(select_features(df))
    y = df["duration"]
    X_train, X_val, dv = vectorize_features(select_features(df_train), select_features(df_val))
    return X, X_train, X_val, y, df_train["duration"], df_val["duration"], dv
