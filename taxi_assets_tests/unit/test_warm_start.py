"""Warm starts (issue 22): what a search passes on, where the next one begins, and that TPE uses it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from taxi_assets.ml import training
from taxi_assets.ml.hyperparameters import XGBOOST_SPACE
from taxi_assets.ml.warm_start import plan_warm_start, search_record
from taxi_assets_tests.unit.test_budget import synthetic

KNOWN_GOOD = training.XGBOOST_FIRST_TRIAL


def params(**changes) -> dict[str, float]:
    return {**KNOWN_GOOD, **changes}


def trial(rmse: float, **changes) -> dict:
    return {"params": {**params(**changes), "objective": "reg:squarederror"}, "metrics": {"rmse": rmse}, "seconds": 1.5}


def test_a_search_record_keeps_the_best_trials_in_the_space_best_first():
    trials = [trial(5.3, max_depth=10), trial(5.1, max_depth=12), trial(float("nan")), trial(5.2, max_depth=14)]
    record = search_record(trials, keep=2)
    assert [entry["rmse"] for entry in record] == [5.1, 5.2]
    assert [entry["params"]["max_depth"] for entry in record] == [12, 14]
    assert set(record[0]["params"]) == set(XGBOOST_SPACE)  # the objective and seeds are not searched
    assert record[0]["seconds"] == 1.5


def test_the_month_before_s_best_trial_goes_first_and_the_rest_teach_tpe():
    record = search_record([trial(5.3, max_depth=10), trial(5.1, max_depth=12), trial(5.2, max_depth=14)])
    warm = plan_warm_start(record, "2024-01", fixed={"subsample": 1.0}, cold_start=KNOWN_GOOD)
    assert [point["max_depth"] for point in warm.first] == [12]
    assert [(point["max_depth"], loss) for point, loss in warm.past] == [(14, 5.2), (10, 5.3)]
    assert all("subsample" not in point for point in [*warm.first, *(p for p, _ in warm.past)])
    assert "2024-01" in warm.source and "5.1000" in warm.source


def test_records_outside_the_space_are_not_used():
    out_of_space = [{"params": params(max_depth=500), "rmse": 5.0}, {"params": {"max_depth": 10}, "rmse": 5.1}]
    near_a_bound = plan_warm_start([{"params": params(reg_alpha=0.0067), "rmse": 5.1}], "2024-01", {}, None)
    assert near_a_bound.first[0]["reg_alpha"] == pytest.approx(math.exp(-5))  # moved onto the bound
    warm = plan_warm_start(out_of_space, "2024-01", fixed={}, cold_start=KNOWN_GOOD)
    assert warm.first == [KNOWN_GOOD] and warm.past == [] and "no usable search record" in warm.source
    assert plan_warm_start(None, None, {}, cold_start=None).first == []
    cold = plan_warm_start(None, None, {"max_depth": 6}, cold_start=KNOWN_GOOD)
    assert "max_depth" not in cold.first[0] and "no earlier month" in cold.source


def test_past_results_steer_tpe_and_are_not_run_again():
    """On a one-dimensional loss with its minimum at 0.7, TPE told how 30 earlier trials did
    proposes closer to it than TPE from its prior alone; every trial it runs is new."""
    from hyperopt import hp

    space = {"x": hp.uniform("x", -10, 10)}
    past = [({"x": x}, (x - 0.7) ** 2) for x in np.linspace(-9.5, 9.5, 30)]

    def distances(past_results) -> list[float]:
        seen: list[float] = []

        def evaluate(point):
            seen.append(point["x"])
            return {"rmse": (point["x"] - 0.7) ** 2}

        training._tune(space, evaluate, 8, 3, training._run_directly, training.UNLIMITED, past_results=past_results)
        assert len(seen) == 8
        return [abs(x - 0.7) for x in seen]

    steered, unsteered = distances(past), distances(None)
    assert np.median(steered) < np.median(unsteered) / 2


def test_an_xgboost_search_begins_with_the_warm_start_s_first_trial():
    _, X, y, _ = synthetic(rows=800)
    record = search_record([trial(4.0, max_depth=5, learning_rate=0.3, num_boost_round=500.0)])
    warm = plan_warm_start(record, "2024-01", fixed={}, cold_start=KNOWN_GOOD)
    result = training.tune_xgboost(X, y, X, y, max_evaluations=2, early_stopping_rounds=5, random_state=0,
                                   warm_start=warm)  # fmt: skip
    first = result.trials[0]["params"]
    assert first["max_depth"] == 5 and first["num_boost_round"] == 500
    assert first["learning_rate"] == pytest.approx(0.3) and len(result.trials) == 2
    assert math.isfinite(result.best_metrics["rmse"])


def test_a_large_training_set_is_searched_on_a_sample_then_boosted_on_all_rows():
    _, X, y, _ = synthetic(rows=4_000, seed=3)
    result = training.tune_xgboost(X, y, X[:1000], y[:1000], max_evaluations=2, early_stopping_rounds=5,
                                   random_state=0, fixed_params={"learning_rate": 0.05, "max_depth": 4},
                                   search_rows=500)  # fmt: skip
    assert "searched on 500 of 4,000 training rows" in result.final_fit
    assert "more rounds on all rows" in result.final_fit or "kept" in result.final_fit
    booster = result.best_model
    assert booster.num_boosted_rounds() >= result.best_iteration + 1
    whole = training.tune_xgboost(X, y, X[:1000], y[:1000], 1, 5, 0, fixed_params={"max_depth": 4}, search_rows=None)
    assert whole.final_fit == "the best trial's booster, on all training rows"


def test_boosting_on_all_rows_keeps_the_sample_s_booster_unless_it_improves():
    import xgboost as xgb

    _, X, y, _ = synthetic(rows=3_000, seed=4)
    dvalid = xgb.DMatrix(X[:500], label=y[:500])
    params = {**KNOWN_GOOD, "max_depth": 3, "learning_rate": 0.3, "num_boost_round": 200, "random_state": 0}
    small = training.train_booster(params, xgb.DMatrix(X[:200], label=y[:200]), dvalid, 5)
    grown, note, _ = training.boost_on_all_rows(small, params, X, y, dvalid, 5, training.UNLIMITED)
    assert grown.best_iteration > small.best_iteration and grown.best_score < small.best_score, note
    assert f"{small.best_score:.4f} -> {grown.best_score:.4f}" in note
    # Rounds that learn only noise (the durations shuffled) do not help: the booster is kept as it was.
    noise = np.random.default_rng(0).permutation(y)
    kept, note, rounds = training.boost_on_all_rows(small, params, X, noise, dvalid, 5, training.UNLIMITED)
    assert kept is small and "kept" in note and rounds == small.num_boosted_rounds()


def test_a_booster_searched_on_a_sample_refits_from_its_fit_record_to_the_same_booster():
    import xgboost as xgb

    from taxi_assets.ml.lineage import fit_record, refit

    _, X, y, _ = synthetic(rows=3_000, seed=5)
    result = training.tune_xgboost(X, y, X[:800], y[:800], 2, 5, 3, fixed_params={"max_depth": 4, "learning_rate": 0.1},
                                   search_rows=600)  # fmt: skip
    assert result.sample is not None and result.sample["rows"] == 600
    record = fit_record("xgboost", result.best_model, result.best_params, result.best_iteration, 5, result.sample)
    again = refit("xgboost", record, X, y, X[:800], y[:800])
    assert again.num_boosted_rounds() == result.best_model.num_boosted_rounds()
    np.testing.assert_array_equal(again.predict(xgb.DMatrix(X)), result.best_model.predict(xgb.DMatrix(X)))
