"""Checks on the data assets, per partition.

Blocking checks hold the course's build tests and the cleaning invariants: a failing one stops
that month's downstream assets, other months go on. The month-over-month checks (drift, dropped
share) are not blocking: drift is a reason to look, and to retrain.
"""

import warnings

import dagster as dg
import pandas as pd

from taxi_assets.lib.history import latest_metadata
from taxi_assets.lib.months import monthly_partitions, previous_month
from taxi_assets.lib.settings import step_op_tags
from taxi_assets.ml.cleaning import MAX_DURATION_MINUTES, MIN_DURATION_MINUTES
from taxi_assets.ml.features import FEATURES, TARGET
from taxi_assets.ml.quality import (
    DROPPED_SHARE_ERROR_POINTS,
    DROPPED_SHARE_WARN_POINTS,
    PSI_ERROR,
    PSI_WARN,
    ks_statistic,
    psi,
    severity,
)


def _partitioned(make):
    """Per-partition checks (partitions_def on a check) are a Dagster preview feature, which we
    use knowingly; its warning is silenced here, where the checks are made, not process-wide."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=dg.PreviewWarning)
        return make()


def _spec(name: str, asset: str, description: str, blocking: bool = True) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        name, asset=asset, partitions_def=monthly_partitions, blocking=blocking, description=description
    )


def durations_within_bounds(cleaned_trips: pd.DataFrame) -> dg.AssetCheckResult:
    duration = cleaned_trips[TARGET]
    outside = int((~duration.between(MIN_DURATION_MINUTES, MAX_DURATION_MINUTES)).sum())
    return dg.AssetCheckResult(
        check_name="durations_within_bounds",
        passed=outside == 0,
        metadata={
            "rows_outside_bounds": outside,
            "min_duration": float(duration.min()) if len(duration) else float("nan"),
            "max_duration": float(duration.max()) if len(duration) else float("nan"),
        },
    )


def features_not_null(cleaned_trips: pd.DataFrame) -> dg.AssetCheckResult:
    nulls = {column: int(cleaned_trips[column].isna().sum()) for column in FEATURES + [TARGET]}
    return dg.AssetCheckResult(
        check_name="features_not_null", passed=not any(nulls.values()), metadata={"null_counts": nulls}
    )


def matrices_consistent(training_set) -> dg.AssetCheckResult:
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
        problems.append(f"X_train has {training_set.X_train.shape[1]} features, X_val {training_set.X_val.shape[1]}")
    return dg.AssetCheckResult(
        check_name="matrices_consistent",
        passed=not problems,
        description="; ".join(problems) or None,
        metadata={f"{name}_shape": str(matrix.shape) for name, (matrix, _) in pairs.items()},
    )


def rows_match_cleaned_months(context, training_set) -> dg.AssetCheckResult:
    month = context.partition_key
    expected = {}
    for key in (previous_month(month), month):
        metadata = latest_metadata(context.instance, "cleaned_trips", key) or {}
        expected[key] = metadata.get("dagster/row_count")
    rows = {
        name: matrix.shape[0]
        for name, matrix in (("X", training_set.X), ("X_train", training_set.X_train), ("X_val", training_set.X_val))
    }
    problems = []
    if any(count is None for count in expected.values()):
        problems.append(
            f"cleaned_trips recorded no row count for {', '.join(k for k, v in expected.items() if v is None)}"
        )
    elif rows["X"] != sum(expected.values()):
        problems.append(
            f"X has {rows['X']:,} rows; cleaned_trips has {sum(expected.values()):,} for {' and '.join(expected)}"
        )
    if rows["X_train"] + rows["X_val"] != rows["X"]:
        problems.append(f"X_train ({rows['X_train']:,}) + X_val ({rows['X_val']:,}) != X ({rows['X']:,})")
    return dg.AssetCheckResult(
        check_name="rows_match_cleaned_months",
        passed=not problems,
        description="; ".join(problems) or f"{rows['X']:,} rows from {' and '.join(expected)}",
        metadata={f"{name}_rows": count for name, count in rows.items()}
        | {f"cleaned_rows_{key}": count or 0 for key, count in expected.items()},
    )


# The build checks run as one step per asset, each loading its asset once: a step per check
# would cost more (a step's events, a load of the month) than the checks themselves.
def _cleaned_trips_checks(cleaned_trips: pd.DataFrame):
    yield durations_within_bounds(cleaned_trips)
    yield features_not_null(cleaned_trips)


cleaned_trips_invariants = _partitioned(
    lambda: dg.multi_asset_check(
        name="cleaned_trips_invariants",
        ins={"cleaned_trips": dg.AssetIn("cleaned_trips")},
        op_tags=step_op_tags("data"),  # it loads the month's trips
        specs=[
            _spec(
                "durations_within_bounds",
                "cleaned_trips",
                f"Every kept duration lies within [{MIN_DURATION_MINUTES:g}, {MAX_DURATION_MINUTES:g}] minutes.",
            ),
            _spec(
                "features_not_null",
                "cleaned_trips",
                "No missing values in the model's features (" + ", ".join(FEATURES) + f") or the target ({TARGET}).",
            ),
        ],
    )(_cleaned_trips_checks)
)


def _training_set_checks(context: dg.AssetCheckExecutionContext, training_set):
    yield matrices_consistent(training_set)
    yield rows_match_cleaned_months(context, training_set)


training_set_build_checks = _partitioned(
    lambda: dg.multi_asset_check(
        name="training_set_build_checks",
        ins={"training_set": dg.AssetIn("training_set")},
        op_tags=step_op_tags("data"),  # it loads the training set
        specs=[
            _spec(
                "matrices_consistent",
                "training_set",
                "X rows == len(y) for all three pairs, the same features in X_train and X_val, none empty.",
            ),
            _spec(
                "rows_match_cleaned_months",
                "training_set",
                "The course's row tests, for every month: X holds every cleaned trip of M-1 and M (as "
                "cleaned_trips recorded them), and X_train and X_val split exactly those rows.",
            ),
        ],
    )(_training_set_checks)
)


# Month-over-month data-quality checks on cleaned_trips. They read both months' metadata from the
# event log (cleaned_trips records fixed-bin histograms), so they never reload a month of data.
# Not blocking: drift is a reason to look (and retrain), not to stop the pipeline.


def _severity_result(
    check: str, key: str, value: float, warn: float, error: float, metadata: dict, description: str
) -> dg.AssetCheckResult:
    level = severity(value, warn, error)
    return dg.AssetCheckResult(
        check_name=check,
        passed=level == "ok",
        severity=dg.AssetCheckSeverity.ERROR if level == "error" else dg.AssetCheckSeverity.WARN,
        description=f"{description}: {level.upper()} (warn above {warn:g}, error above {error:g})",
        # The thresholds as text: a number would be plotted across partitions as if it were data.
        metadata={key: value, "thresholds": f"warn above {warn:g}, error above {error:g}", "level": level, **metadata},
    )


def _no_previous(check: str, month: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=check,
        passed=True,
        description=f"no cleaned_trips for {previous_month(month)} to compare {month} with",
        metadata={"reference_month": "none"},
    )


def _no_reference(
    check: str, month: str, previous: dict | None, field: str | None = None
) -> dg.AssetCheckResult | None:
    if previous is None:
        return _no_previous(check, month)
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
    missing = _no_reference("dropped_share_stable", month, previous)
    if missing or previous is None:
        return missing or _no_previous("dropped_share_stable", month)
    change = 100 * (float(current["dropped_share"]) - float(previous["dropped_share"]))
    return _severity_result(
        "dropped_share_stable",
        "change_points",
        round(abs(change), 4),
        DROPPED_SHARE_WARN_POINTS,
        DROPPED_SHARE_ERROR_POINTS,
        {
            "dropped_share": float(current["dropped_share"]),
            "reference_dropped_share": float(previous["dropped_share"]),
            "reference_month": previous_month(month),
        },
        f"dropped share {100 * float(current['dropped_share']):.2f}% in {month} vs "
        f"{100 * float(previous['dropped_share']):.2f}% in {previous_month(month)} ({change:+.2f} points)",
    )


def drift_result(column: str, month: str, current: dict, previous: dict | None) -> dg.AssetCheckResult:
    check, field = f"{column}_drift", f"{column}_histogram"
    missing = _no_reference(check, month, previous, field)
    if missing or previous is None:
        return missing or _no_previous(check, month)
    now, before = current[field], previous[field]
    if now["edges"] != before["edges"]:
        return dg.AssetCheckResult(
            check_name=check,
            passed=True,
            description=f"{column} bins changed since {previous_month(month)}; re-materialize it to compare",
            metadata={"reference_month": previous_month(month)},
        )
    if not sum(now["counts"]) or not sum(before["counts"]):
        return dg.AssetCheckResult(
            check_name=check,
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{column}: {month if not sum(now['counts']) else previous_month(month)} "
            "has no trips to compare",
            metadata={"reference_month": previous_month(month)},
        )
    index = psi(before["counts"], now["counts"])
    return _severity_result(
        check,
        "psi",
        round(index, 5),
        PSI_WARN,
        PSI_ERROR,
        {
            "ks_statistic": round(ks_statistic(before["counts"], now["counts"]), 5),
            "reference_month": previous_month(month),
        },
        f"{column} PSI {index:.4f} for {month} against {previous_month(month)}",
    )


def _month_over_month(context: dg.AssetCheckExecutionContext):
    month = context.partition_key
    current = latest_metadata(context.instance, "cleaned_trips", month)
    if current is None:  # the check runs after its asset, so this is a wiped or broken event log
        raise dg.Failure(description=f"cleaned_trips {month} has no materialization to check", allow_retries=False)
    previous = latest_metadata(context.instance, "cleaned_trips", previous_month(month))
    yield dropped_share_result(month, current, previous)
    yield drift_result("duration", month, current, previous)
    yield drift_result("trip_distance", month, current, previous)


# One step evaluates all three (a step per check would cost more than the checks themselves).
cleaned_trips_month_over_month = _partitioned(
    lambda: dg.multi_asset_check(
        name="cleaned_trips_month_over_month",
        op_tags=step_op_tags("default"),  # metadata only
        specs=[
            dg.AssetCheckSpec(
                "dropped_share_stable",
                asset="cleaned_trips",
                partitions_def=monthly_partitions,
                blocking=False,
                description=f"The share of raw rows that cleaning drops (durations outside [{MIN_DURATION_MINUTES:g}, "
                f"{MAX_DURATION_MINUTES:g}] minutes) moved by no more than "
                f"{DROPPED_SHARE_WARN_POINTS:g} points (WARN) / "
                f"{DROPPED_SHARE_ERROR_POINTS:g} points (ERROR) from the previous month.",
            ),
            *[
                dg.AssetCheckSpec(
                    f"{column}_drift",
                    asset="cleaned_trips",
                    partitions_def=monthly_partitions,
                    blocking=False,
                    description=f"Population stability index of {column} ({unit}) against the previous month: WARN "
                    f"above {PSI_WARN:g}, ERROR above {PSI_ERROR:g}. The binned KS statistic is reported alongside.",
                )
                for column, unit in (("duration", "minutes"), ("trip_distance", "miles"))
            ],
        ],
    )(_month_over_month)
)
