"""production_model: the model that serves, chosen by champion/challenger after each retraining."""

import dataclasses
from datetime import UTC, datetime
from enum import Enum

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from taxi_assets.lib import charts
from taxi_assets.lib.catalog import CODE_VERSIONS
from taxi_assets.lib.evaluation import evaluation_charts
from taxi_assets.lib.history import rmse_history
from taxi_assets.lib.lifecycle import Stopwatch, op_context, step_budget
from taxi_assets.lib.metadata import charts as charts_metadata
from taxi_assets.lib.months import (
    month_start,
    monthly_partitions,
    previous_and_current,
    previous_and_current_month,
    previous_month,
)
from taxi_assets.lib.publishing import SERVING_RECORD, publish_decision, served_fields
from taxi_assets.lib.settings import promotion_mode, step_op_tags
from taxi_assets.lib.steering import STEERING_EVENT, event_document, model_value, steering_state
from taxi_assets.lib.tracking import MlflowTracking
from taxi_assets.ml.budget import Budget
from taxi_assets.ml.champion import ChampionDecision, Comparison, ProductionModel, compare
from taxi_assets.ml.steering import AUTOMATIC, Event, ModelRef, apply

# What production_model keeps back from compiling for writing its value and its metadata.
OUTPUT_RESERVE_SECONDS = 5.0


class Promotion(Enum):
    """How a winning challenger goes live (``promotion`` below)."""

    automatic = "automatic"
    approval = "approval"


class ProductionModelConfig(dg.Config):
    """How much worse a challenger may be and still replace the champion, and the step's budget."""

    tolerance_minutes: float = Field(
        default=0.0,
        ge=0,
        description="The new month's best model replaces the champion if its validation RMSE is at most "
        "the champion's plus this.",
    )
    promotion: Promotion | None = Field(
        default=None,
        description="automatic: a winning challenger serves at once; approval: it waits, pending, until a person "
        "runs `taxi-assets approve <month>` (an email says so). Default: TAXI_PROMOTION, else automatic.",
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


def _previous_decision(context, month: str, mlflow: MlflowTracking) -> ProductionModel | None:
    """The champion: the model that served when the month's file arrived, if M-1 was decided
    (by the recorded decisions, so a pin or a rollback is the champion)."""
    state = steering_state(context.instance, month)
    if state.serving is None or state.newest_month != previous_month(month):
        return None
    value = model_value(context.instance, state.serving.model, mlflow)
    return value if isinstance(value, ProductionModel) else None


def _promotion(config: ProductionModelConfig) -> str:
    return config.promotion.value if config.promotion is not None else promotion_mode()


def _steering_event(month: str, decision: ChampionDecision, serving: ProductionModel, promotion: str) -> Event:
    """This decision as the steering fold reads it (its storage id is the record's)."""
    model = ModelRef(
        serving.name, serving.model_partition, serving.registered_model, serving.model_version, month, serving.rmse
    )
    return Event(
        storage_id=0,
        kind=AUTOMATIC,
        month=month,
        model=model,
        promoted=decision.promote,
        approval=promotion == "approval",
        challenger_rmse=decision.challenger_rmse,
        champion_rmse=decision.champion_rmse,
        reason=decision.reason,
        at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


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


def _serves(instance, event: Event) -> tuple[bool, str]:
    """What this decision will do once recorded, by the decisions recorded so far: serve, keep,
    wait for approval, be held by a pin, or (a backfilled older month) leave what serves alone."""
    state = steering_state(instance)
    after = apply(state, dataclasses.replace(event, storage_id=max(state.outcomes, default=0) + 1))
    outcome = after.outcomes[max(after.outcomes)]
    return after.serving is not None and after.serving.event.month == event.month, outcome


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
                "tolerance_minutes": op_context(context).op_config["tolerance_minutes"],
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
        champion = _previous_decision(context, month, mlflow)
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
        event = _steering_event(month, decision, serving, _promotion(config))
        serves, outcome = _serves(context.instance, event)
        context.log.info(f"production_model {month}: serving: {outcome}")
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
            "serving_outcome": outcome,
            "promotion": _promotion(config),
            SERVING_RECORD: dg.MetadataValue.json(served_fields(serving)),
            STEERING_EVENT: dg.MetadataValue.json(event_document(event)),
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
