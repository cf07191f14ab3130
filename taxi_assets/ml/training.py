"""Hyperparameter tuning (hyperopt TPE) and training, for scikit-learn models and XGBoost.

The caller may pass ``run_trial(params, evaluate)``: it is called once per trial, must call
``evaluate()`` (which fits and scores) and return its metrics. The Dagster layer uses it to
wrap every trial in an MLflow run; these functions know nothing of MLflow or Dagster.

Every search takes a :class:`~taxi_assets.ml.budget.Budget`. No trial starts after its deadline,
a trial that would not fit in what is left does not start (its estimate: the slowest trial so
far), and the fits that can stop part way do: XGBoost between boosting rounds, the tree ensembles
between batches of trees, gradient boosting between stages. Each keeps what it fitted so far.
The best trial's fitted model is the final model (no refit), so nothing runs after the search
but scoring.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from taxi_assets.ml.budget import UNLIMITED, Budget

TrialRunner = Callable[[dict[str, Any], Callable[[], dict[str, float]]], dict[str, float]]


@dataclass(frozen=True)
class ModelSpec:
    """One model of the scikit-learn fan-out and its search settings (one dynamic output)."""

    name: str
    max_evaluations: int
    random_state: int
    timeout_seconds: float


def _run_directly(params: dict[str, Any], evaluate: Callable[[], dict[str, float]]) -> dict[str, float]:
    return evaluate()


def regression_metrics(y_true, y_pred) -> dict[str, float]:
    from sklearn.metrics import mean_squared_error

    mse = float(mean_squared_error(np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)))
    return {"rmse": float(np.sqrt(mse)), "mse": mse}


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """hyperopt hands back NumPy scalars; models and MLflow want plain Python values."""
    return {key: value.item() if hasattr(value, "item") else value for key, value in params.items()}


@dataclass
class TuningResult:
    best_params: dict[str, Any]
    best_metrics: dict[str, float]
    trials: list[dict[str, Any]]  # params, metrics and seconds of every trial, in order
    seconds: float
    best_model: Any = None  # the best trial's fitted model (the final model)
    best_iteration: int | None = None  # XGBoost: the best boosting round (early stopping)
    stopped_by: str = "trials"  # "trials" (all ran) or "time" (the budget ended the search)


def _tune(
    space,
    evaluate,
    max_evaluations: int,
    random_state: int,
    run_trial: TrialRunner,
    budget: Budget,
    points_to_evaluate=None,
    estimate_trials: bool = True,
):
    """TPE over ``space``; returns (best trial, history, seconds, stopped_by).

    The first trial always runs (a search must produce a model). After it, no trial starts once
    the budget has expired, nor, with ``estimate_trials``, when the slowest trial so far would
    not fit in the time left: fits that cannot stop part way must not start late.
    """
    from hyperopt import STATUS_OK, Trials, fmin, space_eval, tpe
    from hyperopt.fmin import generate_trials_to_calculate

    if max_evaluations < 1:
        raise ValueError(f"max_evaluations must be at least 1, got {max_evaluations}")
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    stopped_by = {"reason": "trials"}

    def out_of_time() -> bool:
        if budget.expired():
            return True
        slowest = max((entry["seconds"] for entry in history), default=0.0)
        return estimate_trials and slowest > budget.remaining()

    def objective(sampled):
        budget.check()
        params = _plain(sampled)
        began = time.perf_counter()
        metrics = run_trial(params, lambda: evaluate(params))
        history.append({"params": params, "metrics": metrics, "seconds": time.perf_counter() - began})
        return {"loss": metrics["rmse"], "status": STATUS_OK}

    def early_stop(trials, *args):
        if len(history) < max_evaluations and out_of_time():
            stopped_by["reason"] = "time"
            return True, args
        return False, args

    seeds = list(points_to_evaluate or [])[:max_evaluations]
    if seeds and max_evaluations == len(seeds):
        # The budget is only the seeded trials: hyperopt cannot be asked for zero new ones.
        for number, seed in enumerate(seeds):
            if number and out_of_time():
                stopped_by["reason"] = "time"
                break
            objective(space_eval(space, seed))
    else:
        # fmin ignores points_to_evaluate when given a Trials object, so seed the Trials; it then
        # runs max_evals trials besides the seeded ones.
        trials = generate_trials_to_calculate(seeds) if seeds else Trials()
        fmin(
            objective,
            space,
            algo=tpe.suggest,
            max_evals=max_evaluations - len(seeds),
            trials=trials,
            rstate=np.random.default_rng(random_state),
            show_progressbar=False,
            early_stop_fn=early_stop,
        )
    best = min(history, key=lambda entry: entry["metrics"]["rmse"])
    return best, history, time.perf_counter() - start, stopped_by["reason"]


# Fits that can stop part way: how many trees a tree ensemble grows between two looks at the
# clock (a batch of 10 trees of depth 45 takes about a second on 2 cores).
TREE_BATCH = 10


def fit_sklearn(name: str, params: dict[str, Any], X, y, budget: Budget = UNLIMITED):
    """Fit model ``name`` with ``params``; ensembles stop growing when the budget ends.

    Random forests and extra trees grow in batches (``warm_start``, which draws the same
    per-tree seeds as one fit, so an unhurried fit is the same model); gradient boosting checks
    after every stage (its ``monitor``). The linear models are one call each (about a second on
    this data), so they are only not started late (see :func:`_tune`).
    """
    from sklearn.ensemble import ExtraTreesRegressor, GradientBoostingRegressor, RandomForestRegressor

    from taxi_assets.ml.hyperparameters import model_class

    budget.check()
    model = model_class(name)(**params)
    if isinstance(model, GradientBoostingRegressor):

        def monitor(stage, estimator, local_variables) -> bool:
            budget.check()
            return budget.expired()

        return model.fit(X, y, monitor=monitor)
    if isinstance(model, (RandomForestRegressor, ExtraTreesRegressor)):
        wanted = model.n_estimators
        model.set_params(warm_start=True)
        grown = 0
        while grown < wanted:
            grown = min(wanted, grown + TREE_BATCH)
            model.set_params(n_estimators=grown)
            model.fit(X, y)
            budget.check()
            if budget.expired():
                break
        return model.set_params(warm_start=False)
    return model.fit(X, y)


def tune_sklearn(
    name: str,
    X_train,
    y_train,
    X_val,
    y_val,
    max_evaluations: int,
    random_state: int,
    budget: Budget = UNLIMITED,
    run_trial: TrialRunner = _run_directly,
) -> TuningResult:
    """TPE over the course's space for ``name``; each trial fits on train, scores on validation.

    The best trial's model is returned as the final model, with its validation predictions.
    """
    from taxi_assets.ml.hyperparameters import sklearn_space

    best: dict[str, Any] = {"rmse": float("inf")}

    def evaluate(params):
        model = fit_sklearn(name, params, X_train, y_train, budget)
        metrics = regression_metrics(y_val, model.predict(X_val))
        if metrics["rmse"] < best["rmse"]:
            best.update(rmse=metrics["rmse"], model=model)
        return metrics

    trial, history, seconds, stopped_by = _tune(
        sklearn_space(name, random_state),
        evaluate,
        max_evaluations,
        random_state,
        run_trial,
        budget,
    )
    return TuningResult(trial["params"], trial["metrics"], history, seconds, best["model"], stopped_by=stopped_by)


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


def _budget_callback(budget: Budget):
    from xgboost.callback import TrainingCallback

    class StopAtDeadline(TrainingCallback):
        """Between two boosting rounds: raise if asked to stop, end boosting when time is up
        (early stopping keeps the best round)."""

        def after_iteration(self, model, epoch, evals_log) -> bool:
            budget.check()
            return budget.expired()

    return StopAtDeadline()


def train_booster(
    params: dict[str, Any],
    dtrain,
    dvalid,
    early_stopping_rounds: int,
    nthread: int | None = None,
    budget: Budget = UNLIMITED,
):
    """One boosting run with early stopping on ``dvalid``; it stops between rounds when the
    budget ends. ``booster.best_iteration`` / ``best_score`` are the best round and its RMSE."""
    import xgboost as xgb
    from xgboost.callback import EarlyStopping

    booster_params = {key: value for key, value in params.items() if key not in ("num_boost_round", "random_state")}
    booster_params["seed"] = params.get("random_state", 0)
    booster_params["eval_metric"] = "rmse"
    if nthread:
        booster_params["nthread"] = nthread
    return xgb.train(
        booster_params,
        dtrain,
        num_boost_round=int(params.get("num_boost_round", 1000)),
        evals=[(dvalid, "validation")],
        verbose_eval=False,
        # Early stopping first: XGBoost asks callbacks in order and stops at the first that says
        # so, and the best round must be recorded even when the budget ends the first round.
        callbacks=[EarlyStopping(rounds=early_stopping_rounds), _budget_callback(budget)],
    )


def tune_xgboost(
    X_train,
    y_train,
    X_val,
    y_val,
    max_evaluations: int,
    early_stopping_rounds: int,
    random_state: int,
    fixed_params: dict[str, float] | None = None,
    seed_known_good: bool = True,
    budget: Budget = UNLIMITED,
    run_trial: TrialRunner = _run_directly,
) -> TuningResult:
    """TPE over the Booster space with early stopping on the validation set; the best trial's
    booster is the model (trained on the training rows, stopped at its best validation round).

    ``budget`` bounds the search: no trial starts after it, and one still boosting stops at its
    best round so far. ``fixed_params`` fixes hyperparameters instead of searching them."""
    import xgboost as xgb

    from taxi_assets.ml.hyperparameters import xgboost_space

    fixed = dict(fixed_params or {})
    dtrain = xgb.DMatrix(X_train, label=np.asarray(y_train))
    dvalid = xgb.DMatrix(X_val, label=np.asarray(y_val))
    best: dict[str, Any] = {"rmse": float("inf")}

    def evaluate(params):
        booster = train_booster(params, dtrain, dvalid, early_stopping_rounds, budget=budget)
        rmse = float(booster.best_score)
        metrics = {"rmse": rmse, "mse": rmse * rmse, "best_iteration": float(booster.best_iteration)}
        if rmse < best["rmse"]:
            best.update(rmse=rmse, booster=booster)
        return metrics

    first = None
    if seed_known_good:
        first = [{key: value for key, value in XGBOOST_FIRST_TRIAL.items() if key not in fixed}]
    trial, history, seconds, stopped_by = _tune(
        xgboost_space(random_state, fixed),
        evaluate,
        max_evaluations,
        random_state,
        run_trial,
        budget,
        first,
        estimate_trials=False,  # a trial that starts late stops at the deadline anyway
    )
    booster = best["booster"]
    return TuningResult(
        trial["params"],
        trial["metrics"],
        history,
        seconds,
        booster,
        int(booster.best_iteration),
        stopped_by,
    )
