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
from taxi_assets.ml.warm_start import WarmStart, plan_warm_start

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
    final_fit: str = ""  # how the final model was fitted (all rows, or a sample then all rows)
    # XGBoost searched on a sample: {"rows", "seed", "rounds"} (the rounds boosted on the sample
    # before the rest on all rows), what refitting needs (taxi_assets.ml.lineage.refit).
    sample: dict[str, int] | None = None


def _tune(
    space,
    evaluate,
    max_evaluations: int,
    random_state: int,
    run_trial: TrialRunner,
    budget: Budget,
    points_to_evaluate=None,
    estimate_trials: bool = True,
    past_results=None,
):
    """TPE over ``space``; returns (best trial, history, seconds, stopped_by).

    ``points_to_evaluate`` are evaluated first; ``past_results`` (``(point, loss)`` pairs, e.g. an
    earlier month's trials) are given to TPE as finished trials: it models them, they are not run.

    The first trial always runs (a search must produce a model). After it, no trial starts once
    the budget has expired, nor, with ``estimate_trials``, when the slowest trial so far would
    not fit in the time left: fits that cannot stop part way must not start late.
    """
    from hyperopt import STATUS_OK, fmin, space_eval

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
        trials, algo = _seeded_trials(seeds, list(past_results or []))
        fmin(
            objective,
            space,
            algo=algo,
            # max_evals counts the Trials' finished and seeded trials too.
            max_evals=len(trials) + max_evaluations - len(seeds),
            trials=trials,
            rstate=np.random.default_rng(random_state),
            show_progressbar=False,
            early_stop_fn=early_stop,
        )
    best = min(history, key=lambda entry: entry["metrics"]["rmse"])
    return best, history, time.perf_counter() - start, stopped_by["reason"]


def _seeded_trials(seeds: list[dict], past: list[tuple[dict, float]]):
    """hyperopt Trials holding ``seeds`` to evaluate first and ``past`` as finished trials, and the
    TPE to search with. fmin ignores points_to_evaluate when given a Trials object, hence this.
    TPE draws from its prior until it has ``n_startup_jobs`` finished trials (20 by default);
    with past results it models them from its first proposal on."""
    from functools import partial

    from hyperopt import JOB_STATE_DONE, STATUS_OK, Trials, tpe
    from hyperopt.fmin import generate_trial

    docs = [generate_trial(tid, point) for tid, point in enumerate(seeds)]
    for tid, (point, loss) in enumerate(past, start=len(seeds)):
        doc = generate_trial(tid, point)
        doc.update(state=JOB_STATE_DONE, result={"loss": float(loss), "status": STATUS_OK})
        docs.append(doc)
    trials = Trials()
    if docs:
        trials.insert_trial_docs(docs)
        trials.refresh()
    if not past:
        return trials, tpe.suggest
    return trials, partial(tpe.suggest, n_startup_jobs=len(past) + len(seeds))


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
    """TPE over the course's space for ``name`` (a space of a few points: each point once, see
    :func:`~taxi_assets.ml.hyperparameters.search_points`); each trial fits on train, scores on
    validation.

    The best trial's model is returned as the final model, with its validation predictions.
    """
    from taxi_assets.ml.hyperparameters import search_points, sklearn_space

    space = sklearn_space(name, random_state)
    max_evaluations, points = search_points(space, max_evaluations)
    best: dict[str, Any] = {"rmse": float("inf")}

    def evaluate(params):
        model = fit_sklearn(name, params, X_train, y_train, budget)
        metrics = regression_metrics(y_val, model.predict(X_val))
        if metrics["rmse"] < best["rmse"]:
            best.update(rmse=metrics["rmse"], model=model)
        return metrics

    trial, history, seconds, stopped_by = _tune(
        space, evaluate, max_evaluations, random_state, run_trial, budget, points_to_evaluate=points
    )
    return TuningResult(trial["params"], trial["metrics"], history, seconds, best["model"], stopped_by=stopped_by)


# A known-good starting point evaluated first when no earlier month's search can be (a cold
# start), so a small budget still ends well. Depth 8 at learning rate 0.5 stops after about 260
# rounds: within 0.01 of the RMSE of depth 30 at rate 0.1 (the first trial before issue 22) on
# 2023-06 and 2023-10, in about a third of the time (benchmarks/bench_warm_start.py). TPE explores
# from there.
XGBOOST_FIRST_TRIAL = {
    "colsample_bytree": 1.0,
    "gamma": 0.1,
    "learning_rate": 0.5,
    "max_depth": 8.0,
    "min_child_weight": 3.0,
    "num_boost_round": 1000.0,
    "reg_alpha": 0.0068,
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
    start_from=None,
):
    """One boosting run with early stopping on ``dvalid``; it stops between rounds when the
    budget ends. ``booster.best_iteration`` / ``best_score`` are the best round and its RMSE.
    ``start_from``: a booster to add rounds to (its rounds count in ``best_iteration``)."""
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
        xgb_model=start_from,
    )


def xgboost_threads(task_vcpus: float | None, usable_cores: int) -> int:
    """XGBoost's nthread for a step: the whole vCPUs of the ECS task it runs in (``task_vcpus``,
    the task metadata's ``Limits.CPU``), else the cores this process may run on. Never more than
    those cores (more threads would only take turns on them), at least one (a 0.5-vCPU task)."""
    cores = max(1, usable_cores)
    if task_vcpus is None or task_vcpus <= 0:
        return cores
    return max(1, min(cores, int(task_vcpus)))


# Above this many training rows the search runs on a sample (issue 22: a yellow-sized month is
# 60x a green one); this share of the search's time is kept for boosting on all rows afterwards.
SEARCH_ROWS = 250_000
ALL_ROWS_SHARE = 0.4


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
    warm_start: WarmStart | None = None,
    search_rows: int | None = SEARCH_ROWS,
    nthread: int | None = None,
) -> TuningResult:
    """TPE over the Booster space with early stopping on the validation set; the best trial's
    booster is the model (trained on the training rows, stopped at its best validation round).

    ``budget`` bounds the search: no trial starts after it, and one still boosting stops at its
    best round so far. ``fixed_params`` fixes hyperparameters instead of searching them.
    ``warm_start`` (see :mod:`taxi_assets.ml.warm_start`) says where the search begins; without
    it, the known-good configuration is the first trial when ``seed_known_good``. With more than
    ``search_rows`` training rows, trials see a sample of them (and of the validation rows), and
    the best trial's booster then goes on boosting on all training rows (:func:`boost_on_all_rows`).
    ``nthread``: XGBoost's threads (its default without: every core it sees)."""
    from taxi_assets.ml.hyperparameters import xgboost_space

    fixed = dict(fixed_params or {})
    dtrain, dvalid, sampled = search_matrices(X_train, y_train, X_val, y_val, search_rows, random_state)
    search = budget.until(ALL_ROWS_SHARE * budget.remaining()) if sampled else budget
    best: dict[str, Any] = {"rmse": float("inf")}

    def evaluate(params):
        booster = train_booster(params, dtrain, dvalid, early_stopping_rounds, nthread, budget=search)
        rmse = float(booster.best_score)
        metrics = {"rmse": rmse, "mse": rmse * rmse, "best_iteration": float(booster.best_iteration)}
        if rmse < best["rmse"]:
            best.update(rmse=rmse, booster=booster)
        return metrics

    if warm_start is None:
        warm_start = plan_warm_start(None, None, fixed, XGBOOST_FIRST_TRIAL if seed_known_good else None)
    trial, history, seconds, stopped_by = _tune(
        xgboost_space(random_state, fixed),
        evaluate,
        max_evaluations,
        random_state,
        run_trial,
        search,
        warm_start.first,
        estimate_trials=False,  # a trial that starts late stops at the deadline anyway
        past_results=warm_start.past,
    )
    booster, final_fit, sample = best["booster"], "the best trial's booster, on all training rows", None
    if sampled:
        sample = {"rows": int(dtrain.num_row()), "seed": random_state}
        booster, final_fit, sample["rounds"] = boost_on_all_rows(
            booster, trial["params"], X_train, y_train, dvalid, early_stopping_rounds, budget, nthread
        )
        final_fit = f"searched on {dtrain.num_row():,} of {X_train.shape[0]:,} training rows; {final_fit}"
    return TuningResult(
        trial["params"], trial["metrics"], history, seconds, booster, int(booster.best_iteration), stopped_by,
        final_fit, sample,
    )  # fmt: skip


def search_matrices(X_train, y_train, X_val, y_val, search_rows: int | None, random_state: int):
    """The DMatrix pair trials train and stop on: all rows, or a seeded sample of at most
    ``search_rows`` training rows and as many validation rows. Returns (dtrain, dvalid, sampled)."""
    import xgboost as xgb

    y_train, y_val = np.asarray(y_train), np.asarray(y_val)
    if search_rows is None or X_train.shape[0] <= search_rows:
        return xgb.DMatrix(X_train, label=y_train), xgb.DMatrix(X_val, label=y_val), False
    rng = np.random.default_rng(random_state)
    rows = np.sort(rng.choice(X_train.shape[0], search_rows, replace=False))
    checks = np.sort(rng.choice(X_val.shape[0], min(search_rows, X_val.shape[0]), replace=False))
    return xgb.DMatrix(X_train[rows], label=y_train[rows]), xgb.DMatrix(X_val[checks], label=y_val[checks]), True


def boost_on_all_rows(
    booster, params: dict[str, Any], X_train, y_train, dvalid, early_stopping_rounds: int, budget, nthread=None
):
    """Continue the search's best booster (up to its best round) on every training row, with
    early stopping on the same validation rows, until the budget ends. It is kept only if it
    scores better there than the booster it began from. Returns (booster, what happened, the
    rounds it boosted on the sample: all of them if the sample's booster is kept).

    A fit from scratch on all rows would be the textbook final model, but at 60x a green month
    it does not fit in the default budget; continuing keeps what the sample taught and adds
    rounds that see every trip."""
    import xgboost as xgb

    start = booster[: booster.best_iteration + 1]
    before = float(booster.best_score)
    if budget.expired():
        said = f"no time left to boost on all rows (validation RMSE {before:.4f})"
        return booster, said, booster.num_boosted_rounds()
    dall = xgb.DMatrix(X_train, label=np.asarray(y_train))
    rounds = max(1, int(params.get("num_boost_round", 1000)) - start.num_boosted_rounds())
    more = train_booster({**params, "num_boost_round": rounds}, dall, dvalid, early_stopping_rounds, nthread,
                         budget=budget, start_from=start)  # fmt: skip
    after = float(more.best_score)
    added = more.best_iteration + 1 - start.num_boosted_rounds()
    if after < before:
        said = f"then {added} more rounds on all rows (validation RMSE {before:.4f} -> {after:.4f})"
        return more, said, start.num_boosted_rounds()
    said = f"rounds on all rows did not improve validation RMSE {before:.4f}; the sample's booster kept"
    return booster, said, booster.num_boosted_rounds()
