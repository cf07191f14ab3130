"""Budgets and stop requests in the plain ML code, on small synthetic data."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from taxi_assets.ml import training, vectorizing
from taxi_assets.ml.budget import Budget, Stopped
from taxi_assets.ml.explain import CHUNK_ROWS, mean_abs_contributions
from taxi_assets.ml.hyperparameters import DEEPEST_XGBOOST, check_fixed_xgboost_params, xgboost_space


def synthetic(rows: int = 3_000, pairs: int = 40, seed: int = 0):
    """A vectorized PU_DO + trip_distance matrix and durations, like the real training set."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "PU_DO": [f"{a}_{b}" for a, b in rng.integers(1, 8, size=(rows, 2))][:rows],
            "trip_distance": rng.gamma(2, 1.5, rows).round(2),
        }
    )
    frame["PU_DO"] = frame["PU_DO"].where(frame.index % pairs != 0, "1_1")
    matrix, vectorizer = vectorizing.fit_transform(frame)
    y = 3 + 2.5 * frame["trip_distance"].to_numpy() + rng.normal(0, 1, rows)
    return frame, matrix, y, vectorizer


def expired() -> Budget:
    return Budget(time.monotonic() - 1)


def test_budget_arithmetic():
    assert Budget().remaining() == float("inf") and not Budget().expired()
    # Deadlines, not time left: however long the machine stalls between two lines.
    before = time.monotonic()
    budget = Budget.seconds(10)
    after = time.monotonic()
    assert budget.deadline is not None and before + 10 <= budget.deadline <= after + 10
    assert budget.until(5).deadline == budget.deadline - 5
    assert budget.share(100).deadline == budget.deadline  # never past the budget's own end
    share = budget.share(2)
    assert share.deadline is not None and after + 2 <= share.deadline <= time.monotonic() + 2
    assert 0 <= budget.remaining() <= 10
    assert expired().expired() and expired().remaining() == 0
    with pytest.raises(Stopped, match="run x is CANCELING"):
        Budget(stop_reason=lambda: "run x is CANCELING").check()


def test_forest_stops_growing_at_the_deadline_and_is_the_same_model_otherwise():
    _, X, y, _ = synthetic()
    params = {"n_estimators": 40, "max_depth": 5, "random_state": 3, "n_jobs": 1}
    cut = training.fit_sklearn("RandomForestRegressor", params, X, y, expired())
    assert len(cut.estimators_) == training.TREE_BATCH  # one batch, then it stopped
    whole = training.fit_sklearn("RandomForestRegressor", params, X, y)
    from sklearn.ensemble import RandomForestRegressor

    reference = RandomForestRegressor(**params).fit(X, y)
    # Grown in batches (warm_start) but the same forest as one fit.
    np.testing.assert_array_equal(whole.predict(X), reference.predict(X))


def test_gradient_boosting_stops_between_stages():
    _, X, y, _ = synthetic()
    model = training.fit_sklearn(
        "GradientBoostingRegressor", {"n_estimators": 50, "max_depth": 3, "random_state": 0}, X, y, expired()
    )
    assert model.n_estimators_ < 50


def test_a_stop_request_raises_inside_a_fit():
    _, X, y, _ = synthetic()
    stop = Budget(stop_reason=lambda: "run r is FAILURE")
    for name, params in (
        ("RandomForestRegressor", {"n_estimators": 40, "n_jobs": 1}),
        ("GradientBoostingRegressor", {"n_estimators": 50}),
    ):
        with pytest.raises(Stopped, match="FAILURE"):
            training.fit_sklearn(name, params, X, y, stop)


def test_search_starts_no_trial_that_would_not_fit():
    _, X, y, _ = synthetic()
    # The first trial runs whatever the budget (a search must give a model); no other starts.
    result = training.tune_sklearn("Lasso", X, y, X, y, max_evaluations=20, random_state=0, budget=expired())
    assert len(result.trials) == 1 and result.stopped_by == "time" and result.best_model is not None
    unhurried = training.tune_sklearn("Lasso", X, y, X, y, max_evaluations=3, random_state=0)
    assert len(unhurried.trials) == 3 and unhurried.stopped_by == "trials"
    # The final model is the best trial's fit, not a refit.
    best = min(unhurried.trials, key=lambda trial: trial["metrics"]["rmse"])
    assert unhurried.best_params == best["params"]
    assert training.regression_metrics(y, unhurried.best_model.predict(X))["rmse"] == pytest.approx(
        best["metrics"]["rmse"]
    )


def test_a_space_of_few_points_is_tried_once_per_point():
    """LinearRegression's space is fit_intercept True or False: 10 TPE trials would fit the same
    two models five times over. Each point once; a space with ranges keeps its TPE trials."""
    from taxi_assets.ml.hyperparameters import search_points, sklearn_space

    assert search_points(sklearn_space("LinearRegression", 0), 10) == (2, [{"fit_intercept": 0}, {"fit_intercept": 1}])
    assert search_points(sklearn_space("LinearRegression", 0), 1) == (1, [])  # fewer trials than points: TPE
    assert search_points(sklearn_space("Lasso", 0), 10) == (10, [])
    _, X, y, _ = synthetic()
    result = training.tune_sklearn("LinearRegression", X, y, X, y, max_evaluations=10, random_state=0)
    assert [trial["params"]["fit_intercept"] for trial in result.trials] == [True, False]
    assert result.stopped_by == "trials"


def test_xgboost_trial_stops_at_the_deadline_and_keeps_its_best_round():
    _, X, y, _ = synthetic()
    fixed = {**DEEPEST_XGBOOST, "max_depth": 100}
    result = training.tune_xgboost(
        X,
        y,
        X,
        y,
        max_evaluations=5,
        early_stopping_rounds=1000,
        random_state=0,
        fixed_params=fixed,
        seed_known_good=False,
        budget=expired(),
    )
    booster = result.best_model
    assert len(result.trials) == 1 and booster.num_boosted_rounds() == 1 and result.best_iteration == 0
    assert result.best_metrics["rmse"] == pytest.approx(booster.best_score)
    with pytest.raises(Stopped):
        training.tune_xgboost(X, y, X, y, 2, 10, 0, budget=Budget(stop_reason=lambda: "stop"))


def test_contributions_are_approximate_and_end_with_the_budget():
    frame, X, y, vectorizer = synthetic(rows=2 * CHUNK_ROWS + 10)
    result = training.tune_xgboost(X, y, X, y, 1, 5, 0, fixed_params={"max_depth": 6})
    names = vectorizer.get_feature_names_out()
    full = mean_abs_contributions(result.best_model, X, names, result.best_iteration)
    assert full.rows == X.shape[0] and full.top[0][0] == "trip_distance" and "approx" in full.method
    cut = mean_abs_contributions(result.best_model, X, names, result.best_iteration, budget=expired())
    assert cut.rows == CHUNK_ROWS  # the first chunk only
    with pytest.raises(Stopped):
        mean_abs_contributions(result.best_model, X, names, budget=Budget(stop_reason=lambda: "stop"))


def test_lookup_compiles_exactly_or_gives_up_early_when_it_cannot_finish():
    from taxi_assets.ml import predictor as predictors

    frame, X, y, vectorizer = synthetic()
    result = training.tune_xgboost(X, y, X, y, 1, 5, 0, fixed_params={"max_depth": 8})
    model = predictors.TripDurationPredictor(
        "xgboost", "xgboost", result.best_model, vectorizer, best_iteration=result.best_iteration
    )
    lookup, message = predictors.compile_lookup(model, frame)
    assert lookup is not None and "identical on 3,000 check rows" in message
    np.testing.assert_array_equal(
        lookup.predict(frame["PU_DO"].tolist(), frame["trip_distance"].to_numpy()),
        model.predict_features(frame).astype(np.float32),
    )
    # A budget too short for the table: it stops after the first chunk and says so.
    original = predictors.LOOKUP_CHUNK_ROWS
    predictors.LOOKUP_CHUNK_ROWS = 50
    try:
        lookup, message = predictors.compile_lookup(model, frame, budget=Budget.seconds(1e-6))
    finally:
        predictors.LOOKUP_CHUNK_ROWS = original
    assert lookup is None and message.startswith("not compiled") and "the booster serves" in message


def test_fixed_params_must_be_in_the_space():
    assert check_fixed_xgboost_params({"max_depth": 10.0}) == {"max_depth": 10}
    assert xgboost_space(0, {"max_depth": 7})["max_depth"] == 7
    with pytest.raises(ValueError, match="unknown XGBoost hyperparameter 'depth'"):
        check_fixed_xgboost_params({"depth": 3})
    with pytest.raises(ValueError, match=r"learning_rate = 2 is outside the course's space \[0.04979, 1\]"):
        check_fixed_xgboost_params({"learning_rate": 2})
    check_fixed_xgboost_params(DEEPEST_XGBOOST)  # the corner of the space is in it


@pytest.mark.parametrize(
    "name",
    [
        "LinearRegression",
        "Lasso",
        "LinearSVR",
        "ExtraTreesRegressor",
        "GradientBoostingRegressor",
        "RandomForestRegressor",
    ],
)
@pytest.mark.parametrize("cut", [False, True])
def test_every_model_refits_from_its_fit_record_to_the_same_predictions(name, cut):
    """What `taxi-assets rebuild` relies on, for every model the course trains, including forests
    and gradient boosting a budget stopped early: the fit record refits the same model."""
    from taxi_assets.ml.lineage import fit_record, refit

    _, X, y, _ = synthetic(rows=1_500)
    budget = expired() if cut else Budget()
    result = training.tune_sklearn(name, X, y, X, y, max_evaluations=2, random_state=3, budget=budget)
    record = fit_record("sklearn", result.best_model, result.best_params, None, None)
    again = refit(name, record, X, y, X, y)
    np.testing.assert_allclose(again.predict(X), result.best_model.predict(X), rtol=0, atol=1e-6)


def test_xgboost_refits_from_its_fit_record_to_the_same_booster():
    from taxi_assets.ml.lineage import fit_record, refit

    _, X, y, _ = synthetic(rows=1_500)
    result = training.tune_xgboost(X, y, X, y, 2, 10, 5, fixed_params={"max_depth": 6})
    record = fit_record("xgboost", result.best_model, result.best_params, result.best_iteration, 10)
    again = refit("xgboost", record, X, y, X, y)
    import xgboost as xgb

    rounds = (0, result.best_iteration + 1)
    np.testing.assert_array_equal(
        again.predict(xgb.DMatrix(X), iteration_range=rounds),
        result.best_model.predict(xgb.DMatrix(X), iteration_range=rounds),
    )
