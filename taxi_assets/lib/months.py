"""Months: the one partitioning scheme, the month arithmetic, and the previous-month rule.

Everything month-shaped lives here, built on ``monthly_partitions`` (the TLC publishes monthly):
which month precedes another, where a month starts, and the rule that month M's training set
reads the cleaned trips of M-1 and M, so the first partition has nothing to train on.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg
import pandas as pd

FIRST_MONTH = "2023-01"

monthly_partitions = dg.MonthlyPartitionsDefinition(start_date=FIRST_MONTH, fmt="%Y-%m")

# The assets a month needs of its previous month, and the ones that read them.
PREVIOUS_MONTH_ASSETS = ["raw_trips", "cleaned_trips"]
NEEDS_PREVIOUS_MONTH = {"training_set", "sklearn_models", "xgboost_model", "production_model"}


def _window(month: str):
    try:
        return monthly_partitions.time_window_for_partition_key(month)
    except Exception:
        raise ValueError(f"month must look like YYYY-MM, got {month!r}") from None


def parse_partition(month: str) -> str:
    """``month`` if it is a partition key (``YYYY-MM``, from the first month on); ``ValueError``
    naming the valid range otherwise."""
    keys = partition_keys()
    if month not in keys:
        raise ValueError(f"unknown month {month!r}: months run from {keys[0]} to {keys[-1]} (YYYY-MM)")
    return month


def month_start(month: str) -> pd.Timestamp:
    """The first instant of the month: where the training set splits train from validation."""
    return pd.Timestamp(_window(month).start.replace(tzinfo=None))


def next_month(month: str) -> str:
    return _window(month).end.strftime("%Y-%m")


def previous_month(month: str) -> str:
    """M-1 (also for the first partition, whose previous month is not a partition)."""
    return (_window(month).start - dt.timedelta(days=1)).strftime("%Y-%m")


def has_previous_month(month: str) -> bool:
    """Whether M-1 is a partition, i.e. M has something to train on."""
    return month != FIRST_MONTH


def partition_keys(current_time: dt.datetime | None = None) -> list[str]:
    return list(monthly_partitions.get_partition_keys(current_time=current_time))


def previous_and_current_month(key: str | None = None) -> dg.AssetIn:
    """An input of months M-1 and M of a monthly asset (a dict by month when both load).

    Missing months load as absent rather than failing the load, so the asset can say which month
    is missing and how to make it.
    """
    return dg.AssetIn(
        key=key,
        partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1),
        metadata={"allow_missing_partitions": True},
    )


def previous_and_current(consumer: str, asset: str, loaded: Any, month: str, materialized: set[str]) -> list[Any]:
    """The values of months M-1 and M of ``asset``, oldest first, from a
    :func:`previous_and_current_month` input of ``consumer``; a Failure naming what is missing
    otherwise."""
    previous = previous_month(month)
    if not has_previous_month(month):
        raise dg.Failure(
            description=f"{consumer} partition {month}: it is the first partition, so there is no previous month "
            f"({previous}) to train on. The first buildable partition is the second month.",
            allow_retries=False,
        )
    # With one partition loaded, Dagster passes the bare value rather than a dict.
    by_month = loaded if isinstance(loaded, dict) else {}
    missing = [key for key in (previous, month) if key not in by_month]
    if missing:
        not_materialized = [key for key in (previous, month) if key not in materialized]
        missing = not_materialized or missing
        raise dg.Failure(
            description=f"{consumer} partition {month} needs {asset} for {previous} and {month}; not materialized: "
            f"{', '.join(missing)}. Materialize it first, e.g. `taxi-assets materialize --partition {missing[0]}`.",
            allow_retries=False,
        )
    return [by_month[previous], by_month[month]]
