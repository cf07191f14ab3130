"""Model assets: the scikit-learn fan-out and XGBoost, tuned with hyperopt, tracked in MLflow.

The course's "sklearn_training" (load_models as a dynamic block -> hyperparameter_tuning ->
final training) and "xgboost_training" pipelines. Each produces self-contained predictors
(vectorizer + model) that ``taxi_assets.load_model`` and the MLflow registry can serve.
"""

from dataclasses import dataclass, field

import dagster as dg
from pydantic import Field

from taxi_assets.lib import charts
from taxi_assets.lib.catalog import CODE_VERSIONS
from taxi_assets.lib.evaluation import contributions_chart, evaluation_charts, model_metadata
from taxi_assets.lib.history import latest_metadata, rmse_history
from taxi_assets.lib.lifecycle import Stopwatch, exit_stuck_step, step_budget
from taxi_assets.lib.metadata import charts as charts_metadata
from taxi_assets.lib.months import monthly_partitions, previous_month
from taxi_assets.lib.settings import ecs_task_vcpus, step_op_tags, usable_cores
from taxi_assets.lib.tracking import REGISTERED_MODEL_PREFIX, MlflowTracking
from taxi_assets.ml.hyperparameters import (
    DEFAULT_SKLEARN_MODELS,
    SKLEARN_MODELS,
    XGBOOST_SPACE,
    SklearnModel,
    valid_model_names,
)
from taxi_assets.ml.training import ALL_ROWS_SHARE, SEARCH_ROWS, ModelSpec
from taxi_assets.ml.warm_start import plan_warm_start, search_record


class SklearnModelsConfig(dg.Config):
    """Which scikit-learn models to tune and train, and how hard to search."""

    models: list[SklearnModel] = Field(  # type: ignore[valid-type]  # a functional Enum
        default=list(DEFAULT_SKLEARN_MODELS),
        description="The scikit-learn models to train, one step each: any of " + ", ".join(SKLEARN_MODELS),
    )
    max_evaluations: int = Field(
        default=10,
        ge=1,
        description="hyperopt (TPE) trials per model; a space of fewer points (LinearRegression's two) is tried "
        "once per point.",
    )
    random_state: int = Field(default=7, description="Seed for hyperopt and the models.")
    timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        description="Budget of each model's whole step (search, scoring, charts, MLflow logging). Trials that would "
        "not fit are not started; forests and gradient boosting stop growing at the deadline.",
    )


class XGBoostConfig(dg.Config):
    """The XGBoost search: the course's Booster space, bounded in trials and time."""

    max_evaluations: int = Field(default=10, ge=1, description="hyperopt (TPE) trials at most.")
    early_stopping_rounds: int = Field(
        default=10, ge=1, description="Rounds without validation improvement before a trial stops."
    )
    fixed_params: dict[str, float] = Field(
        default={},
        description="Hyperparameters to fix instead of searching, e.g. {max_depth: 10}; names from the course's space: "
        + ", ".join(XGBOOST_SPACE),
    )
    random_state: int = Field(default=42, description="Seed for hyperopt and XGBoost.")
    timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Budget of the whole step: search, final scoring, charts, explanations, MLflow logging. A trial "
        "still boosting when the search's share ends stops at its best round.",
    )
    start_from_known_good: bool = Field(
        default=True,
        description="Without a warm start: evaluate a known-good configuration (max_depth 8, learning_rate 0.5) "
        "as the first trial.",
    )
    search_rows: int = Field(
        default=SEARCH_ROWS,
        ge=1_000,
        description="Above this many training rows, trials train on a seeded sample of this many (and as many "
        "validation rows); the best trial's booster then goes on boosting on all training rows with "
        f"{ALL_ROWS_SHARE:.0%} of the search's time. Keeps a yellow-sized month (60x a green one) within the budget.",
    )
    warm_start: bool = Field(
        default=True,
        description="Begin from the month before's search: its best trial is evaluated first and its other kept "
        "trials are given to TPE as finished ones. Off: every month's search starts afresh.",
    )


def post_search_reserve(kind: str, seconds: float) -> float:
    """Seconds of a step's budget kept back from the search for what follows it: scoring the
    best model on the validation month, charts, explanations, MLflow logging and registration.
    Scoring a booster costs about a tenth of its training time, so XGBoost keeps more."""
    if kind == "xgboost":
        return min(30.0, max(8.0, 0.2 * seconds))
    return min(15.0, max(5.0, 0.1 * seconds))


def _progress(context, name: str, trials: int, search):
    """Logs each trial as it ends (INFO: the UI's run view and the CLI show it): trial i of N,
    its RMSE, the best so far, and the search time left."""
    best = {"rmse": float("inf")}

    def on_trial(number, params, metrics, seconds):
        best["rmse"] = min(best["rmse"], metrics["rmse"])
        left = search.remaining()
        context.log.info(
            f"{name} {context.partition_key}: trial {number} of {trials}: "
            f"RMSE {metrics['rmse']:.4f} in {seconds:.1f} s "
            f"(best {best['rmse']:.4f}); "
            + (f"{left:.0f} s of the search left" if left != float("inf") else "no time limit")
        )

    return on_trial


@dataclass(frozen=True)
class Training:
    """One model's training step: which model of which asset, how hard to search, in what budget,
    and the config it runs with (recorded in its lineage)."""

    asset: str  # sklearn_models or xgboost_model
    name: str  # the model: xgboost, LinearRegression, ...
    kind: str  # xgboost or sklearn
    seconds: float  # the whole step's budget
    trials: int
    config: dict = field(default_factory=dict)
    early_stopping_rounds: int | None = None


def _train_tracked(context, mlflow: MlflowTracking, dataset, tune, *, training: Training):
    """Tune with every trial tracked, then score, chart, log and register the best model with its
    lineage, all within ``training.seconds``. ``tune(run_trial, budget)`` returns a TuningResult
    whose ``best_model`` is the final model. One parent MLflow run holds it all: it ends FAILED if
    anything raises, KILLED if the run is stopped."""
    clock = Stopwatch()
    month, name = context.partition_key, training.name
    stuck = exit_stuck_step(context, f"{name}-{month}", mlflow.end_open_runs)
    with (
        step_budget(context, training.seconds, on_stuck=stuck) as budget,
        mlflow.step_run(context, training.asset, run_name=f"{name}-{month}", extra_tags={"model": name}) as run,
    ):
        search = budget.until(post_search_reserve(training.kind, training.seconds))
        context.log.info(f"{name} {month}: up to {training.trials} trials in {search.remaining():.0f} s, then scoring")
        on_trial = _progress(context, name, training.trials, search)
        result = tune(mlflow.trial_runner(context, training.asset, {"model": name}, on_trial=on_trial), search)
        search_seconds = clock.seconds()
        scored = _score(context, dataset, result, training, budget)
        mlflow.log_metrics({"search_seconds": search_seconds, "budget_seconds": training.seconds})
        version = _register(context, mlflow, scored, result, training)
        mlflow.log_charts(scored["charts"])
    return _trained(scored, result, training, version, run.info.run_id, clock.seconds(), search_seconds)


def _score(context, dataset, result, training: Training, budget) -> dict:
    """The final model as a predictor, its validation predictions, metrics and charts."""
    import numpy as np

    from taxi_assets.ml.predictor import TripDurationPredictor
    from taxi_assets.ml.training import regression_metrics

    month = context.partition_key
    predictor = TripDurationPredictor(
        name=training.name, kind=training.kind, model=result.best_model, vectorizer=dataset.dv,
        partition=month, best_iteration=result.best_iteration,
    )  # fmt: skip
    # The model being served, scored on the whole validation month.
    predicted = np.asarray(predictor.predict_matrix(dataset.X_val, budget), dtype=np.float32)
    model_charts = evaluation_charts(training.name, month, dataset.y_val, predicted)
    if training.kind == "xgboost":
        model_charts["feature_contributions"] = contributions_chart(predictor, dataset.X_val, month, budget)
    metrics = regression_metrics(dataset.y_val, predicted)
    return {"predictor": predictor, "predicted": predicted, "metrics": metrics, "charts": model_charts}


def _register(context, mlflow: MlflowTracking, scored: dict, result, training: Training) -> str:
    """Register the model in MLflow with its lineage (files, code, config, and how to fit it again)."""
    from taxi_assets.lib.lineage import model_lineage
    from taxi_assets.ml.lineage import fit_record

    fit = fit_record(
        training.kind, result.best_model, result.best_params, result.best_iteration, training.early_stopping_rounds,
        result.sample,
    )  # fmt: skip
    lineage = model_lineage(context.instance, context.partition_key, training.asset, training.config, fit)
    registered = REGISTERED_MODEL_PREFIX + training.name
    return mlflow.log_and_register(
        context, training.asset, scored["predictor"], registered, scored["metrics"], result.best_params, lineage
    )


def _trained(scored: dict, result, training: Training, version: str, run_id: str, seconds, search_seconds):
    from taxi_assets.ml.predictor import TrainedModel

    return TrainedModel(
        name=training.name,
        predictor=scored["predictor"],
        rmse=scored["metrics"]["rmse"],
        mse=scored["metrics"]["mse"],
        best_params=result.best_params,
        n_trials=len(result.trials),
        train_seconds=seconds,
        mlflow_run_id=run_id,
        registered_model=REGISTERED_MODEL_PREFIX + training.name,
        model_version=version,
        trials=result.trials,
        charts=scored["charts"],
        validation_predictions=scored["predicted"],
        search_seconds=search_seconds,
        budget_seconds=training.seconds,
        stopped_by=result.stopped_by,
        final_fit=result.final_fit,
    )


@dg.op(
    out=dg.DynamicOut(ModelSpec),
    description="One dynamic output per configured model (Mage's load_models).",
    tags=step_op_tags("default"),
)
def load_models(config: SklearnModelsConfig):
    names = [getattr(model, "name", model) for model in config.models]
    if not names:
        raise dg.Failure(
            description=f"sklearn_models: no models configured; valid models: {', '.join(valid_model_names())}"
        )
    for name in dict.fromkeys(names):
        yield dg.DynamicOutput(
            ModelSpec(name, config.max_evaluations, config.random_state, config.timeout_seconds), mapping_key=name
        )


@dg.op(
    description="hyperopt over the model's space on X_train/X_val; the best trial's fit is the final model.",
    tags=step_op_tags("default"),
)
def tune_and_train(context: dg.OpExecutionContext, spec: ModelSpec, training_set, mlflow: MlflowTracking):
    from taxi_assets.ml.training import tune_sklearn

    def tune(run_trial, budget):
        # Fitted on the matrix dv produced, so the predictor's vectorizer matches it.
        return tune_sklearn(
            spec.name,
            training_set.X_train,
            training_set.y_train,
            training_set.X_val,
            training_set.y_val,
            spec.max_evaluations,
            spec.random_state,
            budget=budget,
            run_trial=run_trial,
        )

    from taxi_assets.ml.hyperparameters import describe_space, search_points, sklearn_space

    space = sklearn_space(spec.name, spec.random_state)
    config = {
        "model": spec.name,
        "max_evaluations": spec.max_evaluations,
        "random_state": spec.random_state,
        "timeout_seconds": spec.timeout_seconds,
        "search_space": describe_space(space),
    }
    trials, _ = search_points(space, spec.max_evaluations)  # a space of few points: each once
    training = Training("sklearn_models", spec.name, "sklearn", spec.timeout_seconds, trials, config)
    trained = _train_tracked(context, mlflow, training_set, tune, training=training)
    context.log.info(f"{spec.name}: validation RMSE {trained.rmse:.3f} after {trained.n_trials} trials")
    return trained


@dg.op(description="All trained models keyed by name, with their metrics as metadata.", tags=step_op_tags("default"))
def collect_models(context: dg.OpExecutionContext, trained: list):
    models = {model.name: model for model in sorted(trained, key=lambda model: model.rmse)}
    best = next(iter(models.values()))
    month = context.partition_key
    metadata = {"best_model": best.name, "best_rmse": best.rmse, "models": len(models)}
    for model in models.values():
        metadata.update(model_metadata(model, prefix=f"{model.name}_"))
    current = {name: model.rmse for name, model in models.items()}
    history = {
        name: points for name, points in rmse_history(context.instance, month, current).items() if name in current
    }
    model_charts = {
        "rmse_by_model": charts.bars(
            current,
            f"Validation RMSE by model, {month}",
            "RMSE (minutes)",
            highlight=best.name,
            fmt="{:.3f}",
            highlight_label="best model",
        ),
        "rmse_over_months": charts.series_over_months(history, "Validation RMSE across months", "RMSE (minutes)"),
        **{f"best_model_{name}": png for name, png in best.charts.items()},
    }
    context.add_output_metadata({"charts": charts_metadata(model_charts), **metadata})
    return models


@dg.graph_asset(
    partitions_def=monthly_partitions,
    group_name="training",
    kinds={"scikitlearn", "hyperopt", "mlflow"},
    owners=["team:ml-platform"],
    tags={"stage": "train"},
    code_version=CODE_VERSIONS["sklearn_models"],
)
def sklearn_models(training_set):
    """scikit-learn models tuned with hyperopt and trained, one dynamic step per model, as
    ``{name: TrainedModel}``. Every trial and final model is tracked in MLflow."""
    specs = load_models()
    return collect_models(specs.map(lambda spec: tune_and_train(spec, training_set)).collect())


@dg.asset(
    partitions_def=monthly_partitions,
    group_name="training",
    kinds={"xgboost", "hyperopt", "mlflow"},
    owners=["team:ml-platform"],
    tags={"stage": "train"},
    code_version=CODE_VERSIONS["xgboost_model"],
    op_tags=step_op_tags("xgboost"),
)
def xgboost_model(
    context: dg.AssetExecutionContext, config: XGBoostConfig, training_set, mlflow: MlflowTracking
) -> dg.Output:
    """An XGBoost booster tuned with hyperopt over the course's space, early-stopped on the
    validation month, with its vectorizer."""
    from taxi_assets.ml.hyperparameters import check_fixed_xgboost_params
    from taxi_assets.ml.training import tune_xgboost, xgboost_threads

    try:
        fixed = check_fixed_xgboost_params(config.fixed_params)
    except ValueError as error:
        raise dg.Failure(description=f"xgboost_model: fixed_params: {error}", allow_retries=False) from None

    warm = _warm_start(context, config, fixed)
    context.log.info(f"xgboost {context.partition_key}: {warm.source}")
    vcpus, cores = ecs_task_vcpus(), usable_cores()
    threads = xgboost_threads(vcpus, cores)
    context.log.info(
        f"xgboost {context.partition_key}: {threads} threads "
        + (f"(its ECS task has {vcpus:g} vCPUs)" if vcpus else f"({cores} usable cores)")
    )

    def tune(run_trial, budget):
        return tune_xgboost(
            training_set.X_train,
            training_set.y_train,
            training_set.X_val,
            training_set.y_val,
            max_evaluations=config.max_evaluations,
            early_stopping_rounds=config.early_stopping_rounds,
            random_state=config.random_state,
            fixed_params=fixed,
            budget=budget,
            run_trial=run_trial,
            warm_start=warm,
            search_rows=config.search_rows,
            nthread=threads,
        )

    from taxi_assets.ml.hyperparameters import describe_space, xgboost_space

    recorded = config.model_dump() | {
        "search_space": describe_space(xgboost_space(config.random_state, fixed)),
        "search_began_from": warm.source,
    }
    training = Training(
        "xgboost_model", "xgboost", "xgboost", config.timeout_seconds, config.max_evaluations, recorded,
        early_stopping_rounds=config.early_stopping_rounds,
    )  # fmt: skip
    trained = _train_tracked(context, mlflow, training_set, tune, training=training)
    history = rmse_history(context.instance, context.partition_key, {"xgboost": trained.rmse})
    return dg.Output(
        trained,
        metadata={
            "charts": charts_metadata(
                {
                    **trained.charts,
                    "rmse_over_months": charts.series_over_months(
                        {"xgboost": history["xgboost"]}, "XGBoost validation RMSE across months", "RMSE (minutes)"
                    ),
                }
            )
        }
        | model_metadata(trained)
        | {
            "best_iteration": trained.predictor.best_iteration,
            "search_began_from": warm.source,
            "final_fit": trained.final_fit,
            "threads": threads,
            SEARCH_RECORD: dg.MetadataValue.json(search_record(trained.trials)),
        },
    )


SEARCH_RECORD = "search_record"  # xgboost_model's metadata: the best trials, for the next month's warm start


def _warm_start(context: dg.AssetExecutionContext, config: XGBoostConfig, fixed: dict):
    """Where this month's search begins: the month before's recorded search, if any (read from
    its newest xgboost_model materialization), else the known-good configuration."""
    from taxi_assets.ml.training import XGBOOST_FIRST_TRIAL

    before = previous_month(context.partition_key)
    recorded = latest_metadata(context.instance, "xgboost_model", before) if config.warm_start else None
    previous = (recorded or {}).get(SEARCH_RECORD)
    cold = XGBOOST_FIRST_TRIAL if config.start_from_known_good else None
    return plan_warm_start(previous if isinstance(previous, list) else None, before if recorded else None, fixed, cold)
