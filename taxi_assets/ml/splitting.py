"""The course's ``split_on_value``: train before a value of a column, validate from it on."""

from __future__ import annotations

import pandas as pd


def split_on_value(
    frame: pd.DataFrame, column: str, value, drop_column: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows with ``frame[column] < value`` train, the rest (``>= value``) validate."""
    # Two comparisons, not one and its negation: rows whose value is missing (NaT) belong to
    # neither side, as in the course.
    train, validation = frame.loc[frame[column] < value], frame.loc[frame[column] >= value]
    if drop_column:
        train, validation = train.drop(columns=[column]), validation.drop(columns=[column])
    return train, validation
