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
from taxi_assets.metadata import chart
from taxi_assets.partitions import monthly_partitions, previous_and_current_month
from taxi_assets.tracking import MlflowTracking

CHAMPION_ALIAS = "champion"


class ProductionModelConfig(dg.Config):
    """How much worse a challenger may be and still replace the champion."""

    tolerance_minutes: float = Field(
        default=0.0, ge=0,
        description="The new month's best model replaces the champion if its validation RMSE is at most the champion's plus this.",
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
    the champion stays. The decision is metadata and the MLflow registry alias ``champion``."""
    from taxi_assets.ml.champion import decide
    from taxi_assets.ml.training import regression_metrics

    month = context.partition_key
    materialized = context.instance.get_materialized_partitions(dg.AssetKey("cleaned_trips"))
    features, actual = _validation_rows(cleaned_trips, month, materialized)

    def rmse(predictor) -> float:
        return regression_metrics(actual, predictor.predict_features(features))["rmse"]

    candidates = list(sklearn_models.values()) + [xgboost_model]
    scored = sorted(((rmse(model.predictor), model) for model in candidates), key=lambda pair: pair[0])
    challenger_rmse, challenger = scored[0]
    champion = previous if isinstance(previous, ProductionModel) else None
    champion_rmse = rmse(champion.predictor) if champion else None
    decision = decide(challenger_rmse, champion_rmse, config.tolerance_minutes)
    context.log.info(f"production_model {month}: {decision.reason}")

    if decision.promote:
        serving = ProductionModel(
            predictor=challenger.predictor, name=challenger.name, model_partition=month,
            model_version=challenger.model_version, registered_model=challenger.registered_model,
            rmse=challenger_rmse, decided_for=month, reason=decision.reason,
        )
    else:
        serving = ProductionModel(
            predictor=champion.predictor, name=champion.name, model_partition=champion.model_partition,
            model_version=champion.model_version, registered_model=champion.registered_model,
            rmse=champion_rmse, decided_for=month, reason=decision.reason,
        )
    if serving.registered_model and serving.model_version:
        mlflow.set_alias(serving.registered_model, CHAMPION_ALIAS, serving.model_version)

    # Charts of the decision, also kept as artifacts of an MLflow run for this step.
    scores = {model.name: score for score, model in scored}
    champion_label = f"champion: {champion.name} ({champion.model_partition})" if champion is not None else None
    if champion is not None:
        scores[champion_label] = champion_rmse
    decision_charts = {
        "rmse_by_model": charts.bars(
            scores, f"RMSE on {month} validation trips", "RMSE (minutes)",
            highlight=challenger.name if decision.promote else champion_label, fmt="{:.3f}",
        ),
        "rmse_over_months": charts.series_over_months(
            rmse_history(context.instance, month, {model.name: model.rmse for model in candidates}),
            "Validation RMSE of each model across months", "RMSE (minutes)",
        ),
        **evaluation_charts(f"serving: {serving.name}", month, actual.to_numpy(), serving.predictor.predict_features(features)),
    }
    with mlflow.step_run(context, "production_model", run_name=f"production_model-{month}", extra_tags={"decision": "promoted" if decision.promote else "kept"}):
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

        lookup, compiled = compile_lookup(serving.predictor, features)
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
            "tolerance_minutes": config.tolerance_minutes,
            "validation_rows": len(actual),
            "serving_lookup_table": compiled,
            **{f"{name}_chart": chart(png, name.replace("_", " ")) for name, png in decision_charts.items()},
        },
    )
