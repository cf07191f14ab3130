"""Data preparation, per month: raw_trips (ingest), cleaned_trips (prepare), training_set (build).

The course's "data_preparation" pipeline (ingest -> prepare -> build) as three monthly assets.
"""

import warnings
from contextlib import contextmanager
from typing import Any

import dagster as dg
import pandas as pd

from taxi_assets.lib import plain_charts as charts  # drawn with Pillow: no matplotlib in data preparation
from taxi_assets.lib.catalog import CODE_VERSIONS
from taxi_assets.lib.history import observed_version
from taxi_assets.lib.metadata import charts as charts_metadata
from taxi_assets.lib.metadata import column_schema, null_counts, summary_table, table
from taxi_assets.lib.months import (
    month_start,
    monthly_partitions,
    next_month,
    partition_keys,
    previous_and_current,
    previous_and_current_month,
    previous_month,
)
from taxi_assets.lib.settings import step_op_tags
from taxi_assets.lib.sources import TransientSourceError, TripSource
from taxi_assets.ml.cleaning import clean
from taxi_assets.ml.features import TARGET, combine_features
from taxi_assets.ml.quality import DRIFT_EDGES, histogram, profile
from taxi_assets.ml.schema import PICKUP, REQUIRED_COLUMNS, TripDataError, in_schema


@contextmanager
def knowingly_beta():
    """Data versions by partition and on outputs are Dagster beta APIs we use knowingly: their
    warning is silenced here, where they are used, not process-wide."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=dg.BetaWarning)
        yield


# Transient download failures (HTTP 5xx/429, timeouts) are retried: 2 s, 4 s, 8 s (+- jitter).
# Everything else (bad data, a missing month, a bug) becomes Failure(allow_retries=False):
# retrying cannot fix it and would only delay the alert.
SOURCE_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


@dg.observable_source_asset(
    partitions_def=monthly_partitions,
    group_name="data_preparation",
    description="The TLC's monthly trip files in the configured trip source, versioned by their content: a "
    "SHA-256 of the bytes for local files, the ETag in S3, what the server offers over HTTP. A file that "
    "is only copied or touched keeps its version; a changed byte gives a new one, and Dagster marks the "
    "month's raw_trips unsynced.",
    op_tags=step_op_tags("default"),
)
def trip_files(context, trip_source: TripSource) -> dg.DataVersionsByPartition:
    """Observed by the new-data sensor (every tick) and at the start of every run that ingests a
    month, so raw_trips always records the version of the file it read."""
    if context.has_partition_key:
        versions = {month: _observe(context, trip_source, month) for month in context.partition_keys}
    else:  # observed from the UI without a partition: every month the source has
        listed = trip_source.data_versions()
        versions = listed if listed is not None else {m: trip_source.data_version(m) for m in partition_keys()}
    with knowingly_beta():
        return dg.DataVersionsByPartition({month: version for month, version in versions.items() if version})


def _observe(context, trip_source: TripSource, month: str) -> str | None:
    """The month's file version, or None when the source is briefly unreachable: the run goes on,
    and raw_trips (which retries) records the version of the file it reads."""
    try:
        return trip_source.data_version(month)
    except TransientSourceError as error:
        context.log.warning(f"trip_files partition {month}: not observed ({error}); raw_trips records what it reads")
        return None


@dg.asset(
    partitions_def=monthly_partitions,
    deps=[trip_files],
    retry_policy=SOURCE_RETRY_POLICY,
    group_name="data_preparation",
    kinds={"pandas", "parquet"},
    owners=["team:ml-platform"],
    tags={"stage": "ingest"},
    code_version=CODE_VERSIONS["raw_trips"],
    op_tags=step_op_tags("data"),
)
def raw_trips(context: dg.AssetExecutionContext, trip_source: TripSource) -> dg.Output[pd.DataFrame]:
    """The month's trip file from the configured trip source, schema-checked.

    Green (the default) or yellow, as the trip source's ``trip_type`` says. Needs the pickup and
    dropoff datetimes (``lpep_*`` or ``tpep_*``, named ``pickup_datetime`` and
    ``dropoff_datetime`` from here on), integer PULocationID/DOLocationID and numeric
    trip_distance.
    """
    month = context.partition_key
    location = trip_source.describe(month)
    try:
        read = trip_source.read(month)
    except TransientSourceError as error:
        context.log.warning(f"raw_trips partition {month}: {error}; will retry")
        raise
    except Exception as error:
        problem = str(error) if isinstance(error, TripDataError) else f"reading {location} failed: {error!r}"
        raise dg.Failure(
            description=f"raw_trips partition {month}: {problem}",
            metadata={"partition": month, "source": location},
            allow_retries=False,
        ) from error
    observed = observed_version(context, month)
    if observed is not None and observed != read.version:
        context.log.warning(
            f"raw_trips partition {month}: {location} changed after it was observed ({observed}); read {read.version}. "
            "The new-data sensor sees the new version and retrains the month."
        )
    trips = read.trips
    pickups = trips[PICKUP]
    nulls = null_counts(trips)
    month_charts = {
        "pickups_per_day": charts.pickups_per_day(
            pickups, f"Pickups per day, {month}", month_start(month), month_start(next_month(month))
        ),
        "missing_values": charts.bars(
            {column: count for column, count in nulls.items() if count},
            f"Missing values per column, {month} "
            f"({sum(1 for c in nulls.values() if not c)} of {len(nulls)} columns complete)",
            "missing cells",
        ),
    }
    metadata = {
        "charts": charts_metadata(month_charts),
        "dagster/row_count": len(trips),
        "dagster/column_schema": column_schema(trips),
        "source": location,
        "trip_type": trip_source.trip_type,
        "source_version": read.version,
        "columns": len(trips.columns),
        "pickup_min": str(pickups.min()),
        "pickup_max": str(pickups.max()),
        "null_cells": sum(nulls.values()),
        "null_counts": dg.MetadataValue.json({k: v for k, v in nulls.items() if v}),
        "feature_profile": table(profile(trips, list(REQUIRED_COLUMNS))),
    }
    with knowingly_beta():
        # The file's version with this code's: what the month's later assets are derived from.
        # (Dagster's own provenance keeps no per-month version for a partitioned source that is a
        # dep rather than an input, so raw_trips states its own.)
        version = dg.DataVersion(f"{read.version}|raw_trips@{CODE_VERSIONS['raw_trips']}")
        return dg.Output(trips, data_version=version, metadata=metadata)


@dg.asset(
    partitions_def=monthly_partitions,
    group_name="data_preparation",
    kinds={"pandas"},
    owners=["team:ml-platform"],
    tags={"stage": "prepare"},
    code_version=CODE_VERSIONS["cleaned_trips"],
    op_tags=step_op_tags("data"),
)
def cleaned_trips(context: dg.AssetExecutionContext, raw_trips: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """Trips with ``duration`` (minutes) kept within [1, 60], location ids as strings, and
    ``PU_DO`` = "<PULocationID>_<DOLocationID>".

    Its metadata holds fixed-bin histograms of duration and trip_distance, which the drift
    checks compare with the previous month's."""
    month = context.partition_key
    cleaned = combine_features(clean(raw_trips))
    dropped = len(raw_trips) - len(cleaned)
    drift_histograms = {
        f"{column}_histogram": dg.MetadataValue.json(
            {"edges": [str(edge) for edge in edges], "counts": histogram(cleaned[column], edges)}
        )
        for column, edges in DRIFT_EDGES.items()
    }
    return dg.Output(
        cleaned,
        metadata={
            "charts": charts_metadata(
                {
                    "duration": charts.histogram(
                        cleaned[TARGET], f"Trip duration, {month}", "minutes", bins=59, clip_quantile=None
                    ),
                    "trip_distance": charts.histogram(cleaned["trip_distance"], f"Trip distance, {month}", "miles"),
                }
            ),
            "dagster/row_count": len(cleaned),
            "rows_in": len(raw_trips),
            "rows_dropped": dropped,
            "dropped_share": round(dropped / len(raw_trips), 6) if len(raw_trips) else 0.0,
            "duration_mean_minutes": float(cleaned[TARGET].mean()) if len(cleaned) else float("nan"),
            "trip_distance_mean_miles": float(cleaned["trip_distance"].mean()) if len(cleaned) else float("nan"),
            "duration_summary": summary_table(cleaned[TARGET], "minutes"),
            **drift_histograms,
        },
    )


@dg.asset(
    partitions_def=monthly_partitions,
    ins={"cleaned_trips": previous_and_current_month()},
    group_name="data_preparation",
    kinds={"scikitlearn", "scipy"},
    owners=["team:ml-platform"],
    tags={"stage": "build"},
    code_version=CODE_VERSIONS["training_set"],
    op_tags=step_op_tags("data"),
)
def training_set(context: dg.AssetExecutionContext, cleaned_trips) -> dg.Output[Any]:
    """The course's seven outputs (X, X_train, X_val, y, y_train, y_val, dv) for month M.

    Reads cleaned_trips for M-1 and M; trips picked up before the first instant of M train, the
    rest validate. X has its own vectorizer over both months; X_train/X_val use ``dv``, fitted on
    the training rows only. For 2024-02 this reproduces the course's figures exactly.
    """
    # sklearn loads here, in the one step that builds matrices, not when the code location loads.
    from taxi_assets.ml.dataset import build_training_set

    month = context.partition_key
    materialized = context.instance.get_materialized_partitions(dg.AssetKey("cleaned_trips"))
    months = previous_and_current("training_set", "cleaned_trips", cleaned_trips, month, materialized)
    dataset = build_training_set([in_schema(frame) for frame in months], split_at=month_start(month))
    shapes = dataset.shapes()
    return dg.Output(
        dataset,
        metadata={
            "X_rows": shapes["X"][0],
            "X_features": shapes["X"][1],
            "X_train_rows": shapes["X_train"][0],
            "X_val_rows": shapes["X_val"][0],
            "features": dataset.n_features,
            "split_at": str(month_start(month)),
            "months": f"{previous_month(month)}, {month}",
            "y_train_mean_minutes": float(dataset.y_train.mean()),
            "y_val_mean_minutes": float(dataset.y_val.mean()),
        },
    )
