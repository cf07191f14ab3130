"""Blocking per-partition checks: the course's build tests, and cleaning invariants.

A failing check stops the downstream asset for that partition; other partitions go on.
"""


import warnings

import dagster as dg
import pandas as pd

from taxi_assets.ml.cleaning import MAX_DURATION_MINUTES, MIN_DURATION_MINUTES
from taxi_assets.ml.features import FEATURES, TARGET
from taxi_assets.partitions import monthly_partitions

# Per-partition checks (partitions_def on a check) are a Dagster preview feature; we rely on it
# knowingly, so its warning is noise in every command's output.
warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec.*")

# The course's build tests (Mage's data_preparation/build block) for this partition.
COURSE_FIGURES = {
    "2024-02": {"X": (105_870, 7_027), "X_train": (54_378, 5_094), "X_val": (51_492, 5_094)},
}


@dg.asset_check(asset="cleaned_trips", partitions_def=monthly_partitions, blocking=True)
def durations_within_bounds(cleaned_trips: pd.DataFrame) -> dg.AssetCheckResult:
    """Every kept duration lies within [1, 60] minutes."""
    duration = cleaned_trips[TARGET]
    outside = int((~duration.between(MIN_DURATION_MINUTES, MAX_DURATION_MINUTES)).sum())
    return dg.AssetCheckResult(
        passed=outside == 0,
        metadata={
            "rows_outside_bounds": outside,
            "min_duration": float(duration.min()) if len(duration) else float("nan"),
            "max_duration": float(duration.max()) if len(duration) else float("nan"),
        },
    )


@dg.asset_check(asset="cleaned_trips", partitions_def=monthly_partitions, blocking=True)
def features_not_null(cleaned_trips: pd.DataFrame) -> dg.AssetCheckResult:
    """No missing values in the model's features or the target."""
    nulls = {column: int(cleaned_trips[column].isna().sum()) for column in FEATURES + [TARGET]}
    return dg.AssetCheckResult(passed=not any(nulls.values()), metadata={"null_counts": nulls})


@dg.asset_check(asset="training_set", partitions_def=monthly_partitions, blocking=True)
def matrices_consistent(training_set) -> dg.AssetCheckResult:
    """X rows == len(y) for all three pairs, same feature count in X_train and X_val, none empty."""
    pairs = {
        "X": (training_set.X, training_set.y),
        "X_train": (training_set.X_train, training_set.y_train),
        "X_val": (training_set.X_val, training_set.y_val),
    }
    problems = [
        f"{name} has {matrix.shape[0]} rows but its target has {len(target)}"
        for name, (matrix, target) in pairs.items()
        if matrix.shape[0] != len(target)
    ]
    problems += [f"{name} is empty ({matrix.shape})" for name, (matrix, _) in pairs.items() if 0 in matrix.shape]
    if training_set.X_train.shape[1] != training_set.X_val.shape[1]:
        problems.append(
            f"X_train has {training_set.X_train.shape[1]} features, X_val {training_set.X_val.shape[1]}"
        )
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or None,
        metadata={f"{name}_shape": str(matrix.shape) for name, (matrix, _) in pairs.items()},
    )


@dg.asset_check(asset="training_set", partitions_def=monthly_partitions, blocking=True)
def matches_course_figures(context: dg.AssetCheckExecutionContext, training_set) -> dg.AssetCheckResult:
    """For partitions the course published figures for (2024-02), the shapes match exactly."""
    expected = COURSE_FIGURES.get(context.partition_key)
    actual = training_set.shapes()
    if expected is None:
        return dg.AssetCheckResult(
            passed=True, metadata={"reference": "the course published no figures for this month"}
        )
    mismatches = [f"{name} is {actual[name]}, expected {shape}" for name, shape in expected.items() if actual[name] != shape]
    return dg.AssetCheckResult(
        passed=not mismatches,
        description="; ".join(mismatches) or None,
        metadata={f"{name}_expected": str(shape) for name, shape in expected.items()}
        | {f"{name}_actual": str(shape) for name, shape in actual.items()},
    )


# Month-over-month data-quality checks on cleaned_trips. They read both months' metadata from the
# event log (cleaned_trips records fixed-bin histograms), so they never reload a month of data.
# Not blocking: drift is a reason to look (and retrain), not to stop the pipeline.


def _severity_result(
    check: str, key: str, value: float, warn: float, error: float, metadata: dict, description: str
) -> dg.AssetCheckResult:
    from taxi_assets.ml.quality import severity

    level = severity(value, warn, error)
    return dg.AssetCheckResult(
        check_name=check,
        passed=level == "ok",
        severity=dg.AssetCheckSeverity.ERROR if level == "error" else dg.AssetCheckSeverity.WARN,
        description=f"{description}: {level.upper()} (warn above {warn}, error above {error})",
        metadata={key: value, "warn_threshold": warn, "error_threshold": error, "level": level, **metadata},
    )


def _no_reference(check: str, month: str, previous: dict | None, field: str | None = None) -> dg.AssetCheckResult | None:
    from taxi_assets.ml.trip_files import previous_month

    if previous is None:
        return dg.AssetCheckResult(
            check_name=check,
            passed=True,
            description=f"no cleaned_trips for {previous_month(month)} to compare {month} with",
            metadata={"reference_month": "none"},
        )
    if field is not None and field not in previous:
        return dg.AssetCheckResult(
            check_name=check,
            passed=True,
            description=f"cleaned_trips {previous_month(month)} was materialized before {field} was recorded; "
            "re-materialize it to compare",
            metadata={"reference_month": previous_month(month)},
        )
    return None


def dropped_share_result(month: str, current: dict, previous: dict | None) -> dg.AssetCheckResult:
    from taxi_assets.ml.quality import DROPPED_SHARE_ERROR_POINTS, DROPPED_SHARE_WARN_POINTS
    from taxi_assets.ml.trip_files import previous_month

    missing = _no_reference("dropped_share_stable", month, previous)
    if missing:
        return missing
    change = 100 * (float(current["dropped_share"]) - float(previous["dropped_share"]))
    return _severity_result(
        "dropped_share_stable", "change_points", round(abs(change), 4), DROPPED_SHARE_WARN_POINTS, DROPPED_SHARE_ERROR_POINTS,
        {
            "dropped_share": float(current["dropped_share"]),
            "reference_dropped_share": float(previous["dropped_share"]),
            "reference_month": previous_month(month),
        },
        f"dropped share {100 * float(current['dropped_share']):.2f}% in {month} vs "
        f"{100 * float(previous['dropped_share']):.2f}% in {previous_month(month)} ({change:+.2f} points)",
    )


def drift_result(column: str, month: str, current: dict, previous: dict | None) -> dg.AssetCheckResult:
    from taxi_assets.ml.quality import PSI_ERROR, PSI_WARN, ks_statistic, psi
    from taxi_assets.ml.trip_files import previous_month

    check, field = f"{column}_drift", f"{column}_histogram"
    missing = _no_reference(check, month, previous, field)
    if missing:
        return missing
    now, before = current[field], previous[field]
    if now["edges"] != before["edges"]:
        return dg.AssetCheckResult(
            check_name=check, passed=True,
            description=f"{column} bins changed since {previous_month(month)}; re-materialize it to compare",
            metadata={"reference_month": previous_month(month)},
        )
    if not sum(now["counts"]) or not sum(before["counts"]):
        return dg.AssetCheckResult(
            check_name=check, passed=False, severity=dg.AssetCheckSeverity.ERROR,
            description=f"{column}: {month if not sum(now['counts']) else previous_month(month)} has no trips to compare",
            metadata={"reference_month": previous_month(month)},
        )
    index = psi(before["counts"], now["counts"])
    return _severity_result(
        check, "psi", round(index, 5), PSI_WARN, PSI_ERROR,
        {"ks_statistic": round(ks_statistic(before["counts"], now["counts"]), 5), "reference_month": previous_month(month)},
        f"{column} PSI {index:.4f} for {month} against {previous_month(month)}",
    )


# One step evaluates all three (a step per check would cost more than the checks themselves).
@dg.multi_asset_check(
    name="cleaned_trips_month_over_month",
    specs=[
        dg.AssetCheckSpec(
            "dropped_share_stable", asset="cleaned_trips", partitions_def=monthly_partitions, blocking=False,
            description="The share of raw rows that cleaning drops (durations outside [1, 60] minutes) moved by no "
            "more than 2 points (WARN) / 5 points (ERROR) from the previous month.",
        ),
        *[
            dg.AssetCheckSpec(
                f"{column}_drift", asset="cleaned_trips", partitions_def=monthly_partitions, blocking=False,
                description=f"Population stability index of {column} ({unit}) against the previous month: WARN "
                "above 0.1, ERROR above 0.25. The binned KS statistic is reported alongside.",
            )
            for column, unit in (("duration", "minutes"), ("trip_distance", "miles"))
        ],
    ],
)
def cleaned_trips_month_over_month(context: dg.AssetCheckExecutionContext):
    from taxi_assets.history import latest_metadata
    from taxi_assets.ml.trip_files import previous_month

    month = context.partition_key
    current = latest_metadata(context.instance, "cleaned_trips", month)
    previous = latest_metadata(context.instance, "cleaned_trips", previous_month(month))
    yield dropped_share_result(month, current, previous)
    yield drift_result("duration", month, current, previous)
    yield drift_result("trip_distance", month, current, previous)


@dg.asset_check(asset="production_model", blocking=False)
def model_freshness(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """The newest production_model decision is for the newest month of cleaned_trips; WARN when
    newer cleaned data exists (a retraining is due or failed)."""
    newest_data = max(context.instance.get_materialized_partitions(dg.AssetKey("cleaned_trips")), default=None)
    newest_model = max(context.instance.get_materialized_partitions(dg.AssetKey("production_model")), default=None)
    metadata = {"newest_cleaned_month": newest_data or "none", "newest_production_month": newest_model or "none"}
    if newest_data is None:
        return dg.AssetCheckResult(passed=True, description="no cleaned data yet", metadata=metadata)
    if newest_model is None or newest_model < newest_data:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"production_model was last decided for {newest_model or 'no month'}, but cleaned_trips "
            f"has {newest_data}: retrain {newest_data} (`taxi-assets materialize --partition {newest_data}`)",
            metadata=metadata,
        )
    return dg.AssetCheckResult(passed=True, description=f"up to date with {newest_data}", metadata=metadata)
