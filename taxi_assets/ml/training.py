"""Hyperparameter tuning (hyperopt TPE) and training, for scikit-learn models and XGBoost.

The caller may pass ``run_trial(params, evaluate)``: it is called once per trial, must call
``evaluate()`` (which fits and scores) and return its metrics. The Dagster layer uses it to
wrap every trial in an MLflow run; these functions know nothing of MLflow or Dagster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

TrialRunner = Callable[[dict[str, Any], Callable[[], dict[str, float]]], dict[str, float]]


def _run_directly(params: dict[str, Any], evaluate: Callable[[], dict[str, float]]) -> dict[str, float]:
    return evaluate()


def regression_metrics(y_true, y_pred) -> dict[str, float]:
    mse = float(np.mean((np.asarray(y_true, dtype=float) - np.asarray(y_pred, dtype=float)) ** 2))
    return {"rmse": float(np.sqrt(mse)), "mse": mse}


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """hyperopt hands back NumPy scalars; models and MLflow want plain Python values."""
    return {key: value.item() if hasattr(value, "item") else value for key, value in params.items()}


@dataclass
class TuningResult:
    best_params: dict[str, Any]
    best_metrics: dict[str, float]
    trials: list[dict[str, Any]]  # params and metrics of every trial, in order
    seconds: float
    best_model: Any = None  # XGBoost keeps its best booster (trained with early stopping)
    best_iteration: int | None = None


def _tune(
    space, evaluate, max_evaluations: int, random_state: int, run_trial: TrialRunner,
    points_to_evaluate=None, timeout_seconds: float | None = None,
):
    from hyperopt import STATUS_OK, Trials, fmin, space_eval, tpe
    from hyperopt.fmin import generate_trials_to_calculate

    if max_evaluations < 1:
        raise ValueError(f"max_evaluations must be at least 1, got {max_evaluations}")
    history: list[dict[str, Any]] = []
    start = time.perf_counter()

    def objective(sampled):
        params = _plain(sampled)
        metrics = run_trial(params, lambda: evaluate(params))
        history.append({"params": params, "metrics": metrics})
        return {"loss": metrics["rmse"], "status": STATUS_OK}

    seeds = list(points_to_evaluate or [])[:max_evaluations]
    if seeds and max_evaluations == len(seeds):
        # The budget is only the seeded trials: hyperopt cannot be asked for zero new ones.
        for seed in seeds:
            objective(space_eval(space, seed))
        best = min(zip(seeds, history), key=lambda pair: pair[1]["metrics"]["rmse"])[0]
    else:
        # fmin ignores points_to_evaluate when given a Trials object, so seed the Trials; it then
        # runs max_evals trials besides the seeded ones.
        trials = generate_trials_to_calculate(seeds) if seeds else Trials()
        best = fmin(
            objective,
            space,
            algo=tpe.suggest,
            max_evals=max_evaluations - len(seeds),
            trials=trials,
            rstate=np.random.default_rng(random_state),
            show_progressbar=False,
            timeout=timeout_seconds,  # no new trial starts after this
        )
    best_params = _plain(space_eval(space, best))
    best_metrics = min((entry["metrics"] for entry in history), key=lambda metrics: metrics["rmse"])
    return best_params, best_metrics, history, time.perf_counter() - start


def fit_sklearn(name: str, params: dict[str, Any], X, y):
    from taxi_assets.ml.hyperparameters import model_class

    return model_class(name)(**params).fit(X, y)


def tune_sklearn(
    name: str, X_train, y_train, X_val, y_val, max_evaluations: int, random_state: int,
    timeout_seconds: float | None = None, run_trial: TrialRunner = _run_directly,
) -> TuningResult:
    """TPE over the course's space for ``name``; each trial fits on train, scores on validation."""
    from taxi_assets.ml.hyperparameters import sklearn_space

    def evaluate(params):
        model = fit_sklearn(name, params, X_train, y_train)
        return regression_metrics(y_val, model.predict(X_val))

    best_params, best_metrics, history, seconds = _tune(
        sklearn_space(name, random_state), evaluate, max_evaluations, random_state, run_trial,
        timeout_seconds=timeout_seconds,
    )
    return TuningResult(best_params, best_metrics, history, seconds)


# A known-good starting point evaluated first, so a small budget still ends well: deep trees with
# a moderate learning rate suit 5,000 sparse one-hot PU_DO columns. TPE explores from there.
XGBOOST_FIRST_TRIAL = {
    "colsample_bytree": 1.0,
    "gamma": 0.1,
    "learning_rate": 0.1,
    "max_depth": 30.0,
    "min_child_weight": 3.0,
    "num_boost_round": 1000.0,
    "reg_alpha": 0.0067,
    "reg_lambda": 0.0025,
    "subsample": 1.0,
}


def _deadline_callback(deadline: float):
    import xgboost as xgb

    class StopAtDeadline(xgb.callback.TrainingCallback):
        """Ends boosting when the search's time is up; early stopping keeps the best round."""

        def after_iteration(self, model, epoch, evals_log) -> bool:
            return time.monotonic() >= deadline

    return StopAtDeadline()


def train_booster(
    params: dict[str, Any], dtrain, dvalid, early_stopping_rounds: int,
    nthread: int | None = None, deadline: float | None = None,
):
    import xgboost as xgb

    booster_params = {key: value for key, value in params.items() if key not in ("num_boost_round", "random_state")}
    booster_params["seed"] = params.get("random_state", 0)
    if nthread:
        booster_params["nthread"] = nthread
    return xgb.train(
        booster_params,
        dtrain,
        num_boost_round=int(params.get("num_boost_round", 1000)),
        evals=[(dvalid, "validation")],
        early_stopping_rounds=early_stopping_rounds,
        verbose_eval=False,
        callbacks=[_deadline_callback(deadline)] if deadline is not None else None,
    )


def tune_xgboost(
    X_train, y_train, X_val, y_val, max_evaluations: int, early_stopping_rounds: int, random_state: int,
    max_depth: int | None = None, seed_known_good: bool = True, timeout_seconds: float | None = None,
    run_trial: TrialRunner = _run_directly,
) -> TuningResult:
    """TPE over the course's Booster space with early stopping on the validation set.

    ``timeout_seconds`` bounds the whole search: no trial starts after it, and a trial still
    boosting then stops at its best round so far. The space allows 100-deep trees and 1,000
    rounds at a learning rate of 0.05, one of which alone can take minutes on two cores.

    The best trial's booster is kept as the final model: it was trained on the training rows with
    the best hyperparameters and stopped where validation RMSE was lowest, which is what a
    retrain would produce, at no extra cost.
    """
    import xgboost as xgb

    from taxi_assets.ml.hyperparameters import xgboost_space

    dtrain = xgb.DMatrix(X_train, label=np.asarray(y_train))
    dvalid = xgb.DMatrix(X_val, label=np.asarray(y_val))
    best: dict[str, Any] = {"rmse": float("inf")}
    deadline = time.monotonic() + timeout_seconds if timeout_seconds else None

    def evaluate(params):
        booster = train_booster(params, dtrain, dvalid, early_stopping_rounds, deadline=deadline)
        predictions = booster.predict(dvalid, iteration_range=(0, booster.best_iteration + 1))
        metrics = regression_metrics(y_val, predictions)
        metrics["best_iteration"] = float(booster.best_iteration)
        if metrics["rmse"] < best["rmse"]:
            best.update(rmse=metrics["rmse"], booster=booster)
        return metrics

    first = None
    if seed_known_good:
        first = dict(XGBOOST_FIRST_TRIAL)
        if max_depth is not None:
            first.pop("max_depth")
        first = [first]
    best_params, best_metrics, history, seconds = _tune(
        xgboost_space(random_state, max_depth), evaluate, max_evaluations, random_state, run_trial, first,
        timeout_seconds,
    )
    booster = best["booster"]
    return TuningResult(best_params, best_metrics, history, seconds, booster, int(booster.best_iteration))
