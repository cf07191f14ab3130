"""production_model: the model that serves, chosen by champion/challenger after each retraining."""

import dataclasses
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from taxi_assets import charts
from taxi_assets.assets.models import evaluation_charts, rmse_history
from taxi_assets.assets.prepare import _months_by_key
from taxi_assets.lifecycle import Stopwatch, step_budget
from taxi_assets.metadata import chart
from taxi_assets.partitions import monthly_partitions, previous_and_current_month
from taxi_assets.tracking import MlflowTracking



class ProductionModelConfig(dg.Config):
    """How much worse a challenger may be and still replace the champion, and the step's budget."""

    tolerance_minutes: float = Field(
        default=0.0, ge=0,
        description="The new month's best model replaces the champion if its validation RMSE is at most the champion's plus this.",
    )
    timeout_seconds: float = Field(
        default=60.0, gt=0,
        description="Budget of the whole step: scoring the champion, the decision, charts, MLflow, and compiling an "
        "XGBoost model into a lookup table (skipped, with the booster serving, when it would not fit).",
    )


@dataclass
class ProductionModel:
    """The serving model and why it serves."""

    predictor: Any
    name: str
    model_partition: str  # the month the model was trained for
    model_version: str | None
    registered_model: str | None
    rmse: float  # on the newest validation month (the partition this decision was made for)
    decided_for: str
    reason: str


def _validation_rows(cleaned_trips, month: str, materialized: set[str]) -> tuple[pd.DataFrame, pd.Series]:
    from taxi_assets.ml.features import FEATURES, TARGET
    from taxi_assets.ml.schema import PICKUP
    from taxi_assets.ml.splitting import split_on_value
    from taxi_assets.ml.trip_files import month_start

    trips = pd.concat(_months_by_key(cleaned_trips, month, materialized), ignore_index=True)
    _, validation = split_on_value(trips[FEATURES + [PICKUP, TARGET]], PICKUP, month_start(month))
    return validation[FEATURES], validation[TARGET]


def newest_decision(instance: dg.DagsterInstance) -> str | None:
    """The newest month with a production_model decision: the one that serves."""
    return max(instance.get_materialized_partitions(dg.AssetKey("production_model")), default=None)


# What production_model keeps back from compiling for writing its value and its metadata.
OUTPUT_RESERVE_SECONDS = 5.0


@dg.asset(
    partitions_def=monthly_partitions,
    ins={
        "cleaned_trips": previous_and_current_month(),
        # The previous month's decision holds the champion (a self-dependency).
        "previous": dg.AssetIn(
            key="production_model",
            partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1),
            metadata={"allow_missing_partitions": True},
        ),
    },
    group_name="serving",
    kinds={"mlflow"},
    owners=["team:ml-platform"],
    tags={"stage": "deploy"},
)
def production_model(
    context: dg.AssetExecutionContext,
    config: ProductionModelConfig,
    sklearn_models,
    xgboost_model,
    cleaned_trips,
    previous,
    mlflow: MlflowTracking,
) -> dg.Output:
    """The model that serves: the new month's best model if its RMSE on the newest validation
    month is not worse than the champion's on the same month (within the tolerance); otherwise
    the champion stays. The decision is metadata and, for the newest month, the MLflow registry
    alias ``champion``: deciding an older month again (a backfill) never moves what serves."""
    import numpy as np

    from taxi_assets.ml.champion import decide
    from taxi_assets.ml.training import regression_metrics

    month = context.partition_key
    clock = Stopwatch()
    with step_budget(context, config.timeout_seconds) as budget:
        materialized = context.instance.get_materialized_partitions(dg.AssetKey("cleaned_trips"))
        features, actual = _validation_rows(cleaned_trips, month, materialized)

        def predictions_of(model) -> np.ndarray:
            # The month's models carry their predictions on these very rows (training_set's X_val).
            stored = getattr(model, "validation_predictions", None)
            if stored is not None and len(stored) == len(actual):
                return np.asarray(stored, dtype=np.float32)
            return np.asarray(model.predictor.predict_features(features), dtype=np.float32)

        candidates = list(sklearn_models.values()) + [xgboost_model]
        predicted = {model.name: predictions_of(model) for model in candidates}
        scores = {name: regression_metrics(actual, values)["rmse"] for name, values in predicted.items()}
        challenger = min(candidates, key=lambda model: scores[model.name])
        challenger_rmse = scores[challenger.name]
        champion = previous if isinstance(previous, ProductionModel) else None
        champion_predicted = None
        champion_rmse = None
        if champion is not None:
            # A compiled champion answers from its table; a booster in chunks (each a bounded call).
            champion_predicted = np.asarray(champion.predictor.predict_features(features), dtype=np.float32)
            champion_rmse = regression_metrics(actual, champion_predicted)["rmse"]
        decision = decide(challenger_rmse, champion_rmse, config.tolerance_minutes)
        context.log.info(f"production_model {month}: {decision.reason}")

        if decision.promote:
            serving = ProductionModel(
                predictor=challenger.predictor, name=challenger.name, model_partition=month,
                model_version=challenger.model_version, registered_model=challenger.registered_model,
                rmse=challenger_rmse, decided_for=month, reason=decision.reason,
            )
            serving_predicted = predicted[challenger.name]
        else:
            assert champion is not None and champion_rmse is not None and champion_predicted is not None
            serving = ProductionModel(
                predictor=champion.predictor, name=champion.name, model_partition=champion.model_partition,
                model_version=champion.model_version, registered_model=champion.registered_model,
                rmse=champion_rmse, decided_for=month, reason=decision.reason,
            )
            serving_predicted = champion_predicted

        # Only the newest month's decision serves; an older month (a backfill) is recorded only.
        newest = newest_decision(context.instance)
        serves = newest is None or month >= newest
        alias = "not set (no registered version)"
        if not serves:
            alias = f"left alone: {newest}'s decision serves"
        elif serving.registered_model and serving.model_version:
            moved = mlflow.set_champion(serving.registered_model, serving.model_version, month)
            alias = f"{serving.registered_model} v{serving.model_version}" if moved else "left alone: a newer decision holds it"

        # Charts of the decision, also kept as artifacts of an MLflow run for this step.
        chart_scores = dict(scores)
        champion_label = f"champion: {champion.name} ({champion.model_partition})" if champion is not None else None
        if champion_label is not None:
            chart_scores[champion_label] = champion_rmse
        decision_charts = {
            "rmse_by_model": charts.bars(
                chart_scores, f"RMSE on {month} validation trips", "RMSE (minutes)",
                highlight=challenger.name if decision.promote else champion_label, fmt="{:.3f}",
            ),
            "rmse_over_months": charts.series_over_months(
                rmse_history(context.instance, month, {model.name: model.rmse for model in candidates}),
                "Validation RMSE of each model across months", "RMSE (minutes)",
            ),
            **evaluation_charts(f"serving: {serving.name}", month, actual.to_numpy(), serving_predicted),
        }
        with mlflow.step_run(
            context, "production_model", run_name=f"production_model-{month}",
            extra_tags={"decision": "promoted" if decision.promote else "kept", "serves": str(serves).lower()},
        ):
            mlflow.log_metrics(
                {"challenger_rmse": challenger_rmse, "serving_rmse": serving.rmse}
                | ({"champion_rmse": champion_rmse} if champion_rmse is not None else {})
            )
            mlflow.log_params({"serving_model": serving.name, "serving_model_partition": serving.model_partition, "tolerance_minutes": config.tolerance_minutes})
            mlflow.log_charts(decision_charts)

        # Serve deep boosters from a verified lookup table: same predictions, microseconds per trip.
        compiled = "no (not an XGBoost model)"
        if serving.predictor.kind == "xgboost" and getattr(serving.predictor, "lookup", None) is None:
            from taxi_assets.ml.predictor import compile_lookup

            lookup, compiled = compile_lookup(
                serving.predictor, features, expected=serving_predicted, budget=budget.until(OUTPUT_RESERVE_SECONDS)
            )
            if lookup is not None:
                serving.predictor = dataclasses.replace(serving.predictor, lookup=lookup)
            context.log.info(f"production_model {month}: lookup table: {compiled}")
        elif getattr(serving.predictor, "lookup", None) is not None:
            compiled = "kept from the champion"

    return dg.Output(
        serving,
        metadata={
            "decision": "promoted" if decision.promote else "kept champion",
            "reason": decision.reason,
            "challenger": f"{challenger.name} ({month})",
            "challenger_rmse": challenger_rmse,
            "champion": f"{champion.name} ({champion.model_partition})" if champion else "none",
            "champion_rmse": champion_rmse if champion_rmse is not None else float("nan"),
            "serving_model": serving.name,
            "serving_model_partition": serving.model_partition,
            "serving_model_version": f"{serving.registered_model} v{serving.model_version}",
            "serves": serves,
            "champion_alias": alias,
            "tolerance_minutes": config.tolerance_minutes,
            "validation_rows": len(actual),
            "serving_lookup_table": compiled,
            "budget_seconds": config.timeout_seconds,
            "step_seconds": clock.seconds(),
            **{f"{name}_chart": chart(png, name.replace("_", " ")) for name, png in decision_charts.items()},
        },
    )
