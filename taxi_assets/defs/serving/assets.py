"""production_model: the model that serves, chosen by champion/challenger after each retraining."""

import dataclasses

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from taxi_assets.lib import charts
from taxi_assets.lib.catalog import CODE_VERSIONS
from taxi_assets.lib.evaluation import evaluation_charts
from taxi_assets.lib.history import rmse_history
from taxi_assets.lib.lifecycle import Stopwatch, step_budget
from taxi_assets.lib.metadata import charts as charts_metadata
from taxi_assets.lib.model_store import newest_decision, read_value
from taxi_assets.lib.months import (
    month_start,
    monthly_partitions,
    previous_and_current,
    previous_and_current_month,
    previous_month,
)
from taxi_assets.lib.publishing import SERVING_RECORD, publish, served_fields, wait_for_own_record
from taxi_assets.lib.serving_pointer import serving_store
from taxi_assets.lib.settings import step_op_tags
from taxi_assets.lib.tracking import MlflowTracking
from taxi_assets.ml.budget import Budget
from taxi_assets.ml.champion import ChampionDecision, Comparison, ProductionModel, compare

# What production_model keeps back from compiling for writing its value and its metadata.
OUTPUT_RESERVE_SECONDS = 5.0


class ProductionModelConfig(dg.Config):
    """How much worse a challenger may be and still replace the champion, and the step's budget."""

    tolerance_minutes: float = Field(
        default=0.0,
        ge=0,
        description="The new month's best model replaces the champion if its validation RMSE is at most "
        "the champion's plus this.",
    )
    timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Budget of the whole step: scoring the champion, the decision, charts, MLflow, and compiling an "
        "XGBoost model into a lookup table (skipped, with the booster serving, when it would not fit).",
    )


def _validation_rows(cleaned_trips, month: str, materialized: set[str]) -> tuple[pd.DataFrame, pd.Series]:
    """The month's validation trips (features, minutes): the rows of training_set's X_val."""
    from taxi_assets.ml.features import FEATURES, TARGET
    from taxi_assets.ml.schema import PICKUP, in_schema
    from taxi_assets.ml.splitting import split_on_value

    months = previous_and_current("production_model", "cleaned_trips", cleaned_trips, month, materialized)
    trips = pd.concat([in_schema(frame) for frame in months], ignore_index=True)
    _, validation = split_on_value(trips[FEATURES + [PICKUP, TARGET]], PICKUP, month_start(month))
    return validation[FEATURES], validation[TARGET]


def _previous_decision(context, month: str) -> ProductionModel | None:
    """M-1's decision (the champion), read through the one read path to models, if there is one."""
    previous = previous_month(month)
    if previous not in context.instance.get_materialized_partitions(dg.AssetKey("production_model")):
        return None
    value = read_value(context.instance, "production_model", previous)
    return value if isinstance(value, ProductionModel) else None


def _predictions(model, features: pd.DataFrame, rows: int) -> np.ndarray:
    """A model's minutes on the validation rows; this month's models carry them already."""
    stored = getattr(model, "validation_predictions", None)
    if stored is not None and len(stored) == rows:
        return np.asarray(stored, dtype=np.float32)
    # A champion from an earlier month: from its lookup table, or the booster in bounded chunks.
    return np.asarray(model.predictor.predict_features(features), dtype=np.float32)


def _serving(decision: ChampionDecision, challenger, champion: ProductionModel | None, month: str) -> ProductionModel:
    if decision.promote:
        return ProductionModel(
            predictor=challenger.predictor,
            name=challenger.name,
            model_partition=month,
            model_version=challenger.model_version,
            registered_model=challenger.registered_model,
            rmse=decision.challenger_rmse,
            decided_for=month,
            reason=decision.reason,
        )
    assert champion is not None and decision.champion_rmse is not None
    return dataclasses.replace(champion, rmse=decision.champion_rmse, decided_for=month, reason=decision.reason)


def _serves(instance, month: str) -> tuple[bool, str]:
    """Only the newest month's decision serves: a backfilled older month publishes nothing."""
    newest = newest_decision(instance)
    if newest is not None and month < newest:
        return False, f"left alone: {newest}'s decision serves"
    return True, "moved after this decision is stored (serving_publisher)"


def _decision_charts(instance, month, compared: Comparison, challenger, champion, candidates, serving, actual):
    decision = compared.decision
    chart_scores = dict(compared.scores)
    champion_label = f"champion: {champion.name} ({champion.model_partition})" if champion is not None else None
    if champion_label is not None and decision.champion_rmse is not None:
        chart_scores[champion_label] = decision.champion_rmse
    return {
        "rmse_by_model": charts.bars(
            chart_scores,
            f"RMSE on {month} validation trips",
            "RMSE (minutes)",
            highlight=challenger.name if decision.promote else champion_label,
            highlight_label="serving (the decision)",
            fmt="{:.3f}",
        ),
        "rmse_over_months": charts.series_over_months(
            rmse_history(instance, month, {model.name: model.rmse for model in candidates}),
            "Validation RMSE of each model across months",
            "RMSE (minutes)",
        ),
        **evaluation_charts(f"serving: {serving.name}", month, actual.to_numpy(), compared.serving_predicted),
    }


def _compared_lineage(mlflow: MlflowTracking, challenger, champion) -> dict[str, dict[str, str]]:
    """The lineage of the two models the decision compared (their registered versions' tags)."""

    def lineage(registered, version) -> dict[str, str]:
        tags = mlflow.version_tags(registered, version)
        model = {"model": f"{registered} v{version}"} if registered else {}
        return model | {key: value for key, value in tags.items() if key.startswith("lineage.")}

    return {
        "challenger": lineage(challenger.registered_model, challenger.model_version),
        "champion": lineage(champion.registered_model, champion.model_version) if champion else {},
    }


def _record_in_mlflow(context, mlflow: MlflowTracking, compared: Comparison, serving, serves, compared_models, charts):
    """The decision's MLflow run: RMSEs, what serves, its charts, and the lineage of both models
    it compared (returned, for the metadata)."""
    decision, month = compared.decision, context.partition_key
    with mlflow.step_run(
        context,
        "production_model",
        run_name=f"production_model-{month}",
        extra_tags={"decision": "promoted" if decision.promote else "kept", "serves": str(serves).lower()},
    ):
        rmses = {"challenger_rmse": decision.challenger_rmse, "serving_rmse": serving.rmse}
        if decision.champion_rmse is not None:
            rmses["champion_rmse"] = decision.champion_rmse
        mlflow.log_metrics(rmses)
        mlflow.log_params(
            {
                "serving_model": serving.name,
                "serving_model_partition": serving.model_partition,
                "tolerance_minutes": context.op_config["tolerance_minutes"],
            }
        )
        mlflow.log_charts(charts)
        lineage = _compared_lineage(mlflow, *compared_models)
        mlflow.set_tags({f"{role}.{key}": value for role, tags in lineage.items() for key, value in tags.items()})
    return lineage


def _compiled_for_serving(serving: ProductionModel, features, expected, budget: Budget) -> tuple[ProductionModel, str]:
    """Deep boosters serve from a verified lookup table (same predictions, microseconds a trip),
    when it can be built and checked in the budget; otherwise the booster serves."""
    if getattr(serving.predictor, "lookup", None) is not None:
        return serving, "kept from the champion"
    if serving.predictor.kind != "xgboost":
        return serving, "no (not an XGBoost model)"
    from taxi_assets.ml.predictor import compile_lookup

    lookup, message = compile_lookup(serving.predictor, features, expected=expected, budget=budget)
    if lookup is not None:
        serving = dataclasses.replace(serving, predictor=dataclasses.replace(serving.predictor, lookup=lookup))
    return serving, message


@dg.success_hook(required_resource_keys={"mlflow"})
def publish_decision(context: dg.HookContext) -> None:
    """Publish once this run's decision is in the event log (the record first, always)."""
    if not wait_for_own_record(context.instance, context.run_id):
        context.log.warning("production_model's materialization is not in the event log yet; the sensor publishes it")
        return
    own = (context.run_id, context.op_output_values.get("result"))
    plan = publish(context.instance, serving_store(context.instance), context.resources.mlflow, context.log, own)
    context.log.info(f"serving: {plan.reason}")


@dg.asset(
    partitions_def=monthly_partitions,
    ins={"cleaned_trips": previous_and_current_month()},
    # The previous month's decision holds the champion: a self-dependency, read in the asset only
    # when it exists (no champion yet is the normal start, not a warning).
    deps=[
        dg.AssetDep("production_model", partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1))
    ],
    group_name="serving",
    kinds={"mlflow"},
    owners=["team:ml-platform"],
    tags={"stage": "deploy"},
    code_version=CODE_VERSIONS["production_model"],
    op_tags=step_op_tags("default"),
    # After the decision is stored, it is published: the pointer the server reads, then the alias.
    hooks={publish_decision},
)
def production_model(
    context: dg.AssetExecutionContext,
    config: ProductionModelConfig,
    sklearn_models,
    xgboost_model,
    cleaned_trips,
    mlflow: MlflowTracking,
) -> dg.Output:
    """The model that serves: the new month's best model if its RMSE on the newest validation
    month is not worse than the champion's on the same month (within the tolerance); otherwise
    the champion stays. Once stored, the newest month's decision is published (the pointer the
    server reads, then the MLflow alias ``champion``); deciding an older month again (a backfill)
    never moves what serves."""
    month = context.partition_key
    clock = Stopwatch()
    with step_budget(context, config.timeout_seconds) as budget:
        materialized = context.instance.get_materialized_partitions(dg.AssetKey("cleaned_trips"))
        features, actual = _validation_rows(cleaned_trips, month, materialized)
        candidates = {model.name: model for model in [*sklearn_models.values(), xgboost_model]}
        champion = _previous_decision(context, month)
        compared = compare(
            actual.to_numpy(),
            {name: _predictions(model, features, len(actual)) for name, model in candidates.items()},
            _predictions(champion, features, -1) if champion is not None else None,
            config.tolerance_minutes,
        )
        challenger, decision = candidates[compared.challenger], compared.decision
        context.log.info(f"production_model {month}: {decision.reason}")
        serving = dataclasses.replace(
            _serving(decision, challenger, champion, month),
            share_over_15_minutes=compared.at_selection["share_over_15_minutes"],
        )
        serves, alias = _serves(context.instance, month)
        decision_charts = _decision_charts(
            context.instance, month, compared, challenger, champion, list(candidates.values()), serving, actual
        )
        lineage = _record_in_mlflow(context, mlflow, compared, serving, serves, (challenger, champion), decision_charts)
        serving, compiled = _compiled_for_serving(
            serving, features, compared.serving_predicted, budget.until(OUTPUT_RESERVE_SECONDS)
        )
        context.log.info(f"production_model {month}: lookup table: {compiled}")

    return dg.Output(
        serving,
        metadata={
            "charts": charts_metadata(decision_charts),
            "decision": "promoted" if decision.promote else "kept champion",
            "reason": decision.reason,
            "challenger": f"{challenger.name} ({month})",
            "challenger_rmse": decision.challenger_rmse,
            "champion": f"{champion.name} ({champion.model_partition})" if champion else "none",
            "champion_rmse": decision.champion_rmse if decision.champion_rmse is not None else float("nan"),
            "serving_model": serving.name,
            "serving_model_partition": serving.model_partition,
            "serving_model_version": f"{serving.registered_model} v{serving.model_version}",
            "serves": serves,
            "champion_alias": alias,
            SERVING_RECORD: dg.MetadataValue.json(served_fields(serving)),
            "tolerance_minutes": config.tolerance_minutes,
            "validation_rows": len(actual),
            "serving_lookup_table": compiled,
            "serving_share_over_15_minutes": compared.at_selection["share_over_15_minutes"],
            "challenger_lineage": dg.MetadataValue.json(lineage["challenger"]),
            "champion_lineage": dg.MetadataValue.json(lineage["champion"]),
            "budget_seconds": config.timeout_seconds,
            "step_seconds": clock.seconds(),
        },
    )
