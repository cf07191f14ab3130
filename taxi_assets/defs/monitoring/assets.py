"""Watching what serves: each month's trips scored by the model that served when the month's file
arrived (trip_predictions), every served model's realized error over time (model_performance),
and a check that the serving model still performs as it did when it was chosen.

Both assets materialize on their own (declarative automation): trip_predictions[M] once a run that
updated cleaned_trips[M] or production_model[M-1] has finished (after the month's retraining) and
both exist, model_performance whenever a month's predictions land.
"""

import dataclasses

import dagster as dg
import pandas as pd
from pydantic import Field

from taxi_assets.lib import charts
from taxi_assets.lib.catalog import CODE_VERSIONS
from taxi_assets.lib.evaluation import evaluation_charts
from taxi_assets.lib.history import latest_metadata, metadata_by_partition
from taxi_assets.lib.metadata import charts as charts_metadata
from taxi_assets.lib.metadata import table
from taxi_assets.lib.months import monthly_partitions, previous_month
from taxi_assets.lib.predictions import PredictionStore
from taxi_assets.lib.steering import JUDGEMENT, model_value, served_value, steering_state
from taxi_assets.lib.tracking import MlflowTracking
from taxi_assets.ml.monitoring import (
    BAD_TRIP_MINUTES,
    DECAY_TOLERANCE,
    DECAY_TOLERANCE_REASON,
    SHARE_FACTOR,
    Served,
    judge,
    performance_table,
    realized_error,
    score_trips,
    worst_trips,
)
from taxi_assets.ml.steering import PROMOTION_TOLERANCE, PROMOTION_TOLERANCE_REASON, judge_promotion

# After a run that updated an input has finished (never while it runs: after the month's
# retraining), once both inputs exist. A month whose previous month has no decision is left to a
# person (materialized by hand, it is scored by the newest older decision).
AFTER_INPUTS_UPDATE = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
)


class TripPredictionsConfig(dg.Config):
    """How much worse a newly promoted model may do on the next month than the model it replaced."""

    promotion_tolerance: float = Field(
        default=PROMOTION_TOLERANCE,
        ge=0,
        description="The promoted model's RMSE on the month after its promotion may exceed the replaced model's "
        "(scored as a shadow) by this fraction before it is rolled back (0.05: 5 %). " + PROMOTION_TOLERANCE_REASON,
    )


@dg.asset(
    partitions_def=monthly_partitions,
    ins={"cleaned_trips": dg.AssetIn()},
    deps=[
        dg.AssetDep("production_model", partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1))
    ],
    group_name="monitoring",
    kinds={"pandas", "parquet"},
    owners=["team:ml-platform"],
    tags={"stage": "monitor"},
    code_version=CODE_VERSIONS["trip_predictions"],
    automation_condition=AFTER_INPUTS_UPDATE,
    output_required=False,  # a month with no earlier decision is not scored (see below)
)
def trip_predictions(
    context: dg.AssetExecutionContext,
    config: TripPredictionsConfig,
    cleaned_trips: pd.DataFrame,
    predictions: PredictionStore,
    mlflow: MlflowTracking,
):
    """Every cleaned trip of the month scored by the model that served when the month's file
    arrived (the newest production decision before the month: it never saw the month), with the
    minutes each trip really took, as a Parquet file people can read without this code. A month
    before any decision (the first of a backfill) had no model serving it: nothing to score."""
    month = context.partition_key
    served = steering_state(context.instance, month).serving
    if served is None:
        context.log.info(
            f"trip_predictions {month}: no production decision before {month}, so no model served when its file "
            f"arrived; nothing to score (retrain {previous_month(month)} to score {month})"
        )
        return
    decision = served_value(context.instance, served, mlflow)
    decided_for = decision.decided_for
    if decision.model_partition >= month:  # a decision before M holds models of M-1 or older
        raise dg.Failure(description=f"trip_predictions {month}: {decision.name} was trained for {month}")
    scored = score_trips(cleaned_trips, decision, decided_for)
    location = predictions.write(month, scored)
    realized = realized_error(scored["actual_minutes"], scored["predicted_minutes"])
    context.log.info(
        f"trip_predictions {month}: {realized['rows']:,} trips scored by {decision.name} "
        f"(decided for {decided_for}), RMSE {realized['rmse']:.3f}"
    )
    metadata = _metadata(month, scored, realized, decision, decided_for, location)
    tolerance = config.promotion_tolerance
    metadata.update(_shadow(context, served, month, cleaned_trips, realized["rmse"], tolerance, mlflow))
    yield dg.MaterializeResult(metadata=metadata)


def _shadow(context, served, month: str, cleaned_trips, serving_rmse: float, tolerance: float, mlflow) -> dict:
    """The month also scored by the model the serving one replaced (batch only, never served), and
    the next month's verdict on the promotion (``taxi_assets.ml.steering.judge_promotion``)."""
    if served.replaced is None:
        return {}
    try:
        shadow = model_value(context.instance, served.replaced, mlflow)
    except Exception as error:  # its files are gone: the month is scored, only not shadowed
        context.log.warning(f"trip_predictions {month}: the shadow {served.replaced.label} does not load ({error})")
        return {}
    scored = score_trips(cleaned_trips, shadow, shadow.decided_for)
    shadow_rmse = realized_error(scored["actual_minutes"], scored["predicted_minutes"])["rmse"]
    metadata = {
        "shadow_model": served.replaced.label,
        "shadow_model_trained_for": served.replaced.model_partition,
        "shadow_rmse": shadow_rmse,
        "promotion_tolerance": tolerance,
    }
    verdict = judge_promotion(served, month, serving_rmse, shadow_rmse, tolerance)
    if verdict is not None:
        context.log.info(f"trip_predictions {month}: {verdict.reason}")
        metadata[JUDGEMENT] = dg.MetadataValue.json(dataclasses.asdict(verdict))
    return metadata


def _metadata(month, scored, realized, decision, decided_for, location) -> dict:
    model = f"{decision.registered_model or decision.name} v{decision.model_version}"
    link = dg.MetadataValue.url(location) if location.startswith("s3://") else dg.MetadataValue.path(location)
    return {
        "charts": charts_metadata(
            evaluation_charts(decision.name, month, scored["actual_minutes"], scored["predicted_minutes"])
        ),
        "dagster/row_count": realized["rows"],
        "rmse": realized["rmse"],
        "mae": realized["mae"],
        "p90_abs_error_minutes": realized["p90_abs_error"],
        "share_over_15_minutes": realized["share_over_15_minutes"],
        "model": model,
        "model_name": decision.name,
        "model_trained_for": decision.model_partition,
        "decided_for": decided_for,
        "validation_rmse_at_selection": decision.rmse,
        "share_over_15_minutes_at_selection": (
            decision.share_over_15_minutes if decision.share_over_15_minutes is not None else float("nan")
        ),
        "file": link,
        "worst_trips": table(worst_trips(scored)),
    }


class ServingModelCheckConfig(dg.Config):
    """How much worse than at its selection the serving model may do on a later month."""

    tolerance: float = Field(
        default=DECAY_TOLERANCE,
        ge=0,
        description="Realized RMSE may exceed the RMSE the model was chosen with by this fraction (0.10: 10 %). "
        + DECAY_TOLERANCE_REASON,
    )
    share_factor: float = Field(
        default=SHARE_FACTOR,
        gt=1,
        description=f"Also decayed when the share of trips off by more than {BAD_TRIP_MINUTES:g} minutes reaches "
        "this multiple of its share when the model was chosen.",
    )


def _partitioned_check(function):
    import warnings

    with warnings.catch_warnings():  # per-partition checks are a preview feature we use knowingly
        warnings.filterwarnings("ignore", category=dg.PreviewWarning)
        return dg.asset_check(
            asset="trip_predictions",
            partitions_def=monthly_partitions,
            blocking=False,
            description="The model that served a month still performs: its realized RMSE on the month is within "
            f"the tolerance (default {DECAY_TOLERANCE:.0%}) of its RMSE when it was chosen, and the share of trips off "
            f"by more than {BAD_TRIP_MINUTES:g} minutes has not doubled. A failure alerts and asks for a retraining.",
        )(function)


def serving_model_performs(context: dg.AssetCheckExecutionContext, config: ServingModelCheckConfig):
    month = context.partition_key
    recorded = latest_metadata(context.instance, "trip_predictions", month)
    if recorded is None:  # the month had no model serving it: nothing was scored
        return dg.AssetCheckResult(passed=True, description=f"{month} was not scored: no model served it")
    share = recorded.get("share_over_15_minutes_at_selection")
    verdict = judge(
        month,
        recorded["model"],
        {"rmse": recorded["rmse"], "share_over_15_minutes": recorded["share_over_15_minutes"]},
        recorded["validation_rmse_at_selection"],
        None if share is None or share != share else share,  # NaN: the decision did not record it
        config.tolerance,
        config.share_factor,
    )
    return dg.AssetCheckResult(
        passed=not verdict.decayed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=verdict.describe(),
        metadata={
            "month": month,
            "model": recorded["model"],
            "realized_rmse": verdict.realized_rmse,
            "expected_rmse": verdict.expected_rmse,
            "tolerance": f"{config.tolerance:.0%}",
            "realized_share_over_15_minutes": verdict.realized_share,
        },
    )


serving_model_performs_check = _partitioned_check(serving_model_performs)


@dg.asset(
    deps=["trip_predictions"],
    group_name="monitoring",
    kinds={"dagster"},
    owners=["team:ml-platform"],
    tags={"stage": "monitor"},
    code_version=CODE_VERSIONS["model_performance"],
    automation_condition=dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress(),
)
def model_performance(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Every model that has served, and its realized RMSE on every month it scored, from the
    months' trip_predictions (their recorded metadata: no data is read). One line per model; a
    line climbing away from its validation RMSE is a model decaying."""
    scored = [
        Served(
            month=month,
            model=metadata["model"],
            trained_for=metadata["model_trained_for"],
            chosen_for=metadata["decided_for"],
            validation_rmse=float(metadata["validation_rmse_at_selection"]),
            realized_rmse=float(metadata["rmse"]),
        )
        for month, metadata in sorted(metadata_by_partition(context.instance, "trip_predictions").items())
    ]
    scored += [
        Served(
            month=month,
            model=metadata["shadow_model"],
            trained_for=metadata.get("shadow_model_trained_for", ""),
            chosen_for="",
            validation_rmse=float("nan"),
            realized_rmse=float(metadata["shadow_rmse"]),
            role="shadow",
        )
        for month, metadata in sorted(metadata_by_partition(context.instance, "trip_predictions").items())
        if "shadow_model" in metadata
    ]
    months, rows = performance_table(scored)
    frame = pd.DataFrame(rows, columns=["model", "role", "trained_for", "chosen_for", "validation_rmse", *months])
    chart = charts.model_performance(rows, months, "Realized RMSE of each served model (and shadow) by month")
    return dg.MaterializeResult(
        metadata={
            "charts": charts_metadata({"realized_rmse_by_month": chart}),
            "performance": table(frame),
            "models": len(rows),
            "months": len(months),
        }
    )
