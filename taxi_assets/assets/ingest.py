"""raw_trips: one month of TLC green-taxi trips, as published."""


import dagster as dg
import pandas as pd

from taxi_assets import charts
from taxi_assets.metadata import chart, column_schema, markdown, null_counts
from taxi_assets.ml.quality import markdown_table, profile
from taxi_assets.ml.schema import REQUIRED_COLUMNS, PICKUP, TripDataError
from taxi_assets.ml.trip_files import month_start, next_month
from taxi_assets.partitions import monthly_partitions
from taxi_assets.resources import TransientSourceError, TripSource

# Transient download failures (HTTP 5xx/429, timeouts) are retried: 2 s, 4 s, 8 s (+- jitter).
# Everything else (bad data, a missing month, a bug) becomes Failure(allow_retries=False):
# retrying cannot fix it and would only delay the alert.
SOURCE_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


@dg.asset(
    partitions_def=monthly_partitions,
    retry_policy=SOURCE_RETRY_POLICY,
    group_name="data_preparation",
    kinds={"pandas", "parquet"},
    owners=["team:ml-platform"],
    tags={"stage": "ingest"},
)
def raw_trips(context: dg.AssetExecutionContext, trip_source: TripSource) -> dg.Output[pd.DataFrame]:
    """The month's green-taxi trip file from the configured trip source, schema-checked.

    Needs pickup/dropoff datetimes, integer PULocationID/DOLocationID and numeric trip_distance.
    """
    month = context.partition_key
    charts.preload()  # overlaps the file read
    location = trip_source.describe(month)
    try:
        # Before reading: if the file changes meanwhile, the sensor sees a new fingerprint and
        # retrains again, rather than missing the change.
        fingerprint = trip_source.fingerprint(month) or ""
        trips = trip_source.read_month(month)
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

    pickups = trips[PICKUP]
    nulls = null_counts(trips)
    return dg.Output(
        trips,
        metadata={
            "dagster/row_count": len(trips),
            "dagster/column_schema": column_schema(trips),
            "source": location,
            "source_fingerprint": fingerprint,
            "columns": len(trips.columns),
            "pickup_min": str(pickups.min()),
            "pickup_max": str(pickups.max()),
            "null_cells": sum(nulls.values()),
            "null_counts": dg.MetadataValue.json({k: v for k, v in nulls.items() if v}),
            "feature_profile": markdown(markdown_table(profile(trips, list(REQUIRED_COLUMNS)))),
            "pickups_per_day": chart(
                charts.pickups_per_day(pickups, f"Pickups per day, {month}", month_start(month), month_start(next_month(month))),
                "pickups per day",
            ),
            "missing_values": chart(
                charts.bars(
                    {column: count for column, count in nulls.items() if count},
                    f"Missing values per column, {month} ({sum(1 for c in nulls.values() if not c)} of {len(nulls)} columns complete)",
                    "missing cells",
                ),
                "missing values per column",
            ),
        },
    )
