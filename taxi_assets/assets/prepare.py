"""cleaned_trips and training_set: the course's "prepare" and "build" blocks, per month."""


from typing import Any

import dagster as dg
import pandas as pd

from taxi_assets import charts
from taxi_assets.metadata import chart, summary_table
from taxi_assets.ml.quality import DRIFT_EDGES, histogram
from taxi_assets.ml.cleaning import clean
from taxi_assets.ml.features import TARGET, combine_features
from taxi_assets.ml.trip_files import month_start, previous_month
from taxi_assets.partitions import FIRST_MONTH, monthly_partitions, previous_and_current_month


@dg.asset(
    partitions_def=monthly_partitions,
    group_name="data_preparation",
    kinds={"pandas"},
    owners=["team:ml-platform"],
    tags={"stage": "prepare"},
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
            "dagster/row_count": len(cleaned),
            "rows_in": len(raw_trips),
            "rows_dropped": dropped,
            "dropped_share": round(dropped / len(raw_trips), 6) if len(raw_trips) else 0.0,
            "duration_mean_minutes": float(cleaned[TARGET].mean()) if len(cleaned) else float("nan"),
            "trip_distance_mean_miles": float(cleaned["trip_distance"].mean()) if len(cleaned) else float("nan"),
            "duration_summary": summary_table(cleaned[TARGET], "minutes"),
            "duration_chart": chart(
                charts.histogram(cleaned[TARGET], f"Trip duration, {month}", "minutes", bins=59, clip_quantile=None),
                "duration histogram",
            ),
            "trip_distance_chart": chart(
                charts.histogram(cleaned["trip_distance"], f"Trip distance, {month}", "miles"), "trip distance histogram"
            ),
            **drift_histograms,
        },
    )


def _months_by_key(cleaned_trips: Any, month: str, materialized: set[str]) -> list[pd.DataFrame]:
    """The previous and current months, oldest first, or a Failure naming what is missing."""
    previous = previous_month(month)
    if month == FIRST_MONTH:
        raise dg.Failure(
            description=f"training_set partition {month}: it is the first partition, so there is "
            f"no previous month ({previous}) to train on. The first buildable partition is the "
            "second month.",
            allow_retries=False,
        )
    loaded = cleaned_trips if isinstance(cleaned_trips, dict) else {}
    missing = [key for key in (previous, month) if key not in loaded]
    if missing:
        # With one partition loaded, Dagster passes the bare value: find which one it is.
        not_materialized = [key for key in (previous, month) if key not in materialized]
        missing = not_materialized or missing
        raise dg.Failure(
            description=f"training_set partition {month} needs cleaned_trips for {previous} and "
            f"{month}; not materialized: {', '.join(missing)}. Materialize it first, e.g. "
            f"`taxi-assets materialize --partition {missing[0]}`.",
            allow_retries=False,
        )
    return [loaded[previous], loaded[month]]


@dg.asset(
    partitions_def=monthly_partitions,
    ins={"cleaned_trips": previous_and_current_month()},
    group_name="data_preparation",
    kinds={"scikitlearn", "scipy"},
    owners=["team:ml-platform"],
    tags={"stage": "build"},
)
def training_set(context: dg.AssetExecutionContext, cleaned_trips) -> dg.Output[Any]:
    """The course's seven outputs (X, X_train, X_val, y, y_train, y_val, dv) for month M.

    Reads cleaned_trips for M-1 and M; trips picked up before the first instant of M train, the
    rest validate. X has its own vectorizer over both months; X_train/X_val use ``dv``, fitted on
    the training rows only. For 2024-02 this reproduces the course's figures exactly.
    """
    # sklearn loads here, in the one step that builds matrices, not when the code location loads.
    from taxi_assets.ml.dataset import build_training_set
    from taxi_assets.ml.memory import release_memory

    release_memory()  # this step has the run's peak: start it from a clean heap
    month = context.partition_key
    materialized = context.instance.get_materialized_partitions(dg.AssetKey("cleaned_trips"))
    months = _months_by_key(cleaned_trips, month, materialized)
    dataset = build_training_set(months, split_at=month_start(month))
    return dg.Output(
        dataset,
        metadata={
            "X_rows": dataset.X.shape[0],
            "X_features": dataset.X.shape[1],
            "X_train_rows": dataset.X_train.shape[0],
            "X_val_rows": dataset.X_val.shape[0],
            "features": dataset.n_features,
            "split_at": str(month_start(month)),
            "months": f"{previous_month(month)}, {month}",
            "y_train_mean_minutes": float(dataset.y_train.mean()),
            "y_val_mean_minutes": float(dataset.y_val.mean()),
        },
    )
