"""Model assets: the scikit-learn fan-out and XGBoost, tuned with hyperopt, tracked in MLflow.

The course's "sklearn_training" (load_models as a dynamic block -> hyperparameter_tuning ->
final training) and "xgboost_training" pipelines. Each produces self-contained predictors
(vectorizer + model) that ``taxi_assets.load_model`` and the MLflow registry can serve.
"""

import time
from dataclasses import dataclass

import dagster as dg
from pydantic import Field

from taxi_assets import charts
from taxi_assets.metadata import chart
from taxi_assets.ml.hyperparameters import DEFAULT_SKLEARN_MODELS, short_name, valid_model_names
from taxi_assets.partitions import monthly_partitions
from taxi_assets.tracking import MlflowTracking

REGISTERED_MODEL_PREFIX = "taxi-duration-"


class SklearnModelsConfig(dg.Config):
    """Which scikit-learn models to tune and train, and how hard to search."""

    models: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SKLEARN_MODELS),
        description="Models as module.Class; one of: " + ", ".join(valid_model_names()),
    )
    max_evaluations: int = Field(default=10, ge=1, description="hyperopt (TPE) trials per model.")
    random_state: int = Field(default=7, description="Seed for hyperopt and the models.")
    timeout_seconds: float | None = Field(
        default=120.0, gt=0,
        description="Time budget of each model's search: no trial starts after it (a running fit finishes). None: no limit.",
    )


class XGBoostConfig(dg.Config):
    """The XGBoost search: the course's Booster space, bounded in trials and time."""

    max_evaluations: int = Field(default=10, ge=1, description="hyperopt (TPE) trials at most.")
    early_stopping_rounds: int = Field(default=10, ge=1, description="Rounds without validation improvement before a trial stops.")
    max_depth: int | None = Field(default=None, ge=1, description="Fix max_depth instead of searching 4..100.")
    random_state: int = Field(default=42, description="Seed for hyperopt and XGBoost.")
    timeout_seconds: float | None = Field(
        default=80.0, gt=0,
        description="Time budget of the search: no trial starts after it, a running one stops at its best round. None: no limit.",
    )
    start_from_known_good: bool = Field(
        default=True,
        description="Evaluate a known-good configuration (max_depth 30, learning_rate 0.1) as the first trial.",
    )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    max_evaluations: int
    random_state: int
    timeout_seconds: float | None = None


def _train_tracked(context, mlflow: MlflowTracking, asset: str, name: str, kind: str, dataset, tune):
    """Tune with every trial tracked, then log and register the final predictor.

    ``tune(run_trial)`` returns (TuningResult, fitted model). Everything runs inside one parent
    MLflow run, which ends FAILED if anything raises.
    """
    from taxi_assets.ml.predictor import TrainedModel, TripDurationPredictor

    start = time.perf_counter()
    with mlflow.step_run(context, asset, run_name=f"{name}-{context.partition_key}", extra_tags={"model": name}) as run:
        result, model = tune(mlflow.trial_runner(context, asset, {"model": name}))
        predictor = TripDurationPredictor(
            name=name, kind=kind, model=model, vectorizer=dataset.dv,
            partition=context.partition_key, best_iteration=result.best_iteration,
        )
        metrics = {"rmse": result.best_metrics["rmse"], "mse": result.best_metrics["mse"]}
        predicted = predictor.predict_matrix(dataset.X_val)
        if kind == "sklearn":  # the final fit is scored again: that is the model being served
            from taxi_assets.ml.training import regression_metrics

            metrics = regression_metrics(dataset.y_val, predicted)
        registered = REGISTERED_MODEL_PREFIX + name
        version = mlflow.log_and_register(context, asset, predictor, registered, metrics, result.best_params)
        model_charts = evaluation_charts(name, context.partition_key, dataset.y_val, predicted)
        if kind == "xgboost":
            model_charts["shap_importance"] = shap_chart(predictor, dataset.X_val, context.partition_key)
        mlflow.log_charts(model_charts)
        run_id = run.info.run_id
    return TrainedModel(
        name=name, predictor=predictor, rmse=metrics["rmse"], mse=metrics["mse"],
        best_params=result.best_params, n_trials=len(result.trials),
        train_seconds=time.perf_counter() - start, mlflow_run_id=run_id,
        registered_model=registered, model_version=version, trials=result.trials, charts=model_charts,
    )


def evaluation_charts(name: str, month: str, actual, predicted) -> dict[str, bytes]:
    """Predicted vs actual minutes and the residual histogram on the validation month."""
    import numpy as np

    residuals = np.asarray(predicted, dtype=float) - np.asarray(actual, dtype=float)
    return {
        "predicted_vs_actual": charts.predicted_vs_actual(actual, predicted, f"{name}, validation {month}"),
        "residuals": charts.histogram(
            residuals, f"{name} residuals (predicted - actual), {month}", "minutes", bins=80, clip_quantile=None
        ),
    }


SHAP_ROWS = 2_000


def shap_chart(predictor, X_val, month: str) -> bytes:
    """Mean |SHAP| of the top features on a seeded sample of validation rows."""
    import numpy as np

    from taxi_assets.ml.explain import mean_abs_shap

    rows = X_val
    if X_val.shape[0] > SHAP_ROWS:
        rows = X_val[np.sort(np.random.default_rng(0).choice(X_val.shape[0], SHAP_ROWS, replace=False))]
    importance = mean_abs_shap(
        predictor.model, rows, predictor.vectorizer.get_feature_names_out(), predictor.best_iteration
    )
    return charts.shap_importance(importance, f"XGBoost: top features by mean |SHAP|, {month} ({rows.shape[0]:,} rows)")


def recorded_rmse(instance) -> dict[str, dict[str, float]]:
    """Validation RMSE per model per month, from the event log's model materializations."""
    from taxi_assets.history import metadata_by_partition

    series: dict[str, dict[str, float]] = {}
    for partition, metadata in metadata_by_partition(instance, "sklearn_models").items():
        for key, value in metadata.items():
            if key.endswith("_rmse") and key != "best_rmse":
                series.setdefault(key.removesuffix("_rmse"), {})[partition] = float(value)
    for partition, metadata in metadata_by_partition(instance, "xgboost_model").items():
        if "rmse" in metadata:
            series.setdefault("xgboost", {})[partition] = float(metadata["rmse"])
    return series


def rmse_history(instance, month: str, current: dict[str, float]) -> dict[str, dict[str, float]]:
    """:func:`recorded_rmse` with this run's values for ``month`` (not in the event log yet)."""
    series = recorded_rmse(instance)
    for name, rmse in current.items():
        series.setdefault(name, {})[month] = rmse
    return series


def model_charts_metadata(trained, prefix: str = "") -> dict:
    found = getattr(trained, "charts", None) or {}
    return {f"{prefix}{name}_chart": chart(png, name.replace("_", " ")) for name, png in found.items()}


def _model_metadata(trained, prefix: str = "") -> dict:
    return {
        f"{prefix}rmse": trained.rmse,
        f"{prefix}mse": trained.mse,
        f"{prefix}trials": trained.n_trials,
        f"{prefix}train_seconds": round(trained.train_seconds, 2),
        f"{prefix}best_params": dg.MetadataValue.json(trained.best_params),
        f"{prefix}mlflow_run_id": trained.mlflow_run_id,
        f"{prefix}model_version": f"{trained.registered_model} v{trained.model_version}",
    }


@dg.op(out=dg.DynamicOut(ModelSpec), description="One dynamic output per configured model (Mage's load_models).")
def load_models(config: SklearnModelsConfig):
    names = []
    for requested in config.models:
        try:
            names.append(short_name(requested))
        except ValueError as error:
            raise dg.Failure(description=f"sklearn_models: {error}", allow_retries=False) from None
    if not names:
        raise dg.Failure(description=f"sklearn_models: no models configured; valid models: {', '.join(valid_model_names())}")
    for name in dict.fromkeys(names):
        yield dg.DynamicOutput(ModelSpec(name, config.max_evaluations, config.random_state, config.timeout_seconds), mapping_key=name)


@dg.op(description="hyperopt over the model's space on X_train/X_val, then the final fit on X_train.")
def tune_and_train(context: dg.OpExecutionContext, spec: ModelSpec, training_set, mlflow: MlflowTracking):
    from taxi_assets.ml.training import fit_sklearn, tune_sklearn

    def tune(run_trial):
        result = tune_sklearn(
            spec.name, training_set.X_train, training_set.y_train, training_set.X_val, training_set.y_val,
            spec.max_evaluations, spec.random_state, timeout_seconds=spec.timeout_seconds, run_trial=run_trial,
        )
        # Fitted on the matrix dv produced, so the predictor's vectorizer matches it.
        return result, fit_sklearn(spec.name, result.best_params, training_set.X_train, training_set.y_train)

    trained = _train_tracked(context, mlflow, "sklearn_models", spec.name, "sklearn", training_set, tune)
    context.log.info(f"{spec.name}: validation RMSE {trained.rmse:.3f} after {trained.n_trials} trials")
    return trained


@dg.op(description="All trained models keyed by name, with their metrics as metadata.")
def collect_models(context: dg.OpExecutionContext, trained: list):
    models = {model.name: model for model in sorted(trained, key=lambda model: model.rmse)}
    best = next(iter(models.values()))
    month = context.partition_key
    metadata = {"best_model": best.name, "best_rmse": best.rmse, "models": len(models)}
    for model in models.values():
        metadata.update(_model_metadata(model, prefix=f"{model.name}_"))
    current = {name: model.rmse for name, model in models.items()}
    metadata["rmse_by_model"] = chart(
        charts.bars(current, f"Validation RMSE by model, {month}", "RMSE (minutes)", highlight=best.name, fmt="{:.3f}"),
        "validation RMSE by model",
    )
    history = {name: points for name, points in rmse_history(context.instance, month, current).items() if name in current}
    metadata["rmse_over_months"] = chart(
        charts.series_over_months(history, "Validation RMSE across months", "RMSE (minutes)"), "RMSE across months"
    )
    metadata.update(model_charts_metadata(best, prefix="best_model_"))
    context.add_output_metadata(metadata)
    return models


@dg.graph_asset(
    partitions_def=monthly_partitions,
    group_name="training",
    kinds={"scikitlearn", "hyperopt", "mlflow"},
    owners=["team:ml-platform"],
    tags={"stage": "train"},
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
)
def xgboost_model(context: dg.AssetExecutionContext, config: XGBoostConfig, training_set, mlflow: MlflowTracking) -> dg.Output:
    """An XGBoost booster tuned with hyperopt over the course's space, early-stopped on the
    validation month, with its vectorizer."""
    from taxi_assets.ml.training import tune_xgboost

    def tune(run_trial):
        result = tune_xgboost(
            training_set.X_train, training_set.y_train, training_set.X_val, training_set.y_val,
            max_evaluations=config.max_evaluations, early_stopping_rounds=config.early_stopping_rounds,
            random_state=config.random_state, max_depth=config.max_depth,
            timeout_seconds=config.timeout_seconds, seed_known_good=config.start_from_known_good,
            run_trial=run_trial,
        )
        return result, result.best_model

    trained = _train_tracked(context, mlflow, "xgboost_model", "xgboost", "xgboost", training_set, tune)
    history = rmse_history(context.instance, context.partition_key, {"xgboost": trained.rmse})
    return dg.Output(
        trained,
        metadata=_model_metadata(trained)
        | {"best_iteration": trained.predictor.best_iteration}
        | model_charts_metadata(trained)
        | {
            "rmse_over_months": chart(
                charts.series_over_months({"xgboost": history["xgboost"]}, "XGBoost validation RMSE across months", "RMSE (minutes)"),
                "RMSE across months",
            )
        },
    )
