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
