"""The decision as a pure function: the best new model against the champion on the same trips."""

from __future__ import annotations

import numpy as np
import pytest

from taxi_assets.ml.champion import compare, decide

ACTUAL = np.array([10.0, 20.0, 30.0, 40.0])


def test_no_champion_promotes_the_best_new_model():
    compared = compare(ACTUAL, {"Lasso": ACTUAL + 2, "xgboost": ACTUAL + 1}, None)
    assert compared.challenger == "xgboost" and compared.decision.promote
    assert compared.scores == pytest.approx({"Lasso": 2.0, "xgboost": 1.0})
    assert compared.decision.reason == "no champion yet"
    np.testing.assert_array_equal(compared.serving_predicted, ACTUAL + 1)
    assert compared.at_selection["rmse"] == pytest.approx(1.0)


def test_a_better_champion_stays_and_its_predictions_are_what_serves():
    champion = ACTUAL + 0.5
    compared = compare(ACTUAL, {"xgboost": ACTUAL + 1}, champion)
    assert not compared.decision.promote and compared.decision.champion_rmse == pytest.approx(0.5)
    assert "champion stays" in compared.decision.reason
    np.testing.assert_array_equal(compared.serving_predicted, champion)


def test_the_tolerance_lets_a_slightly_worse_challenger_replace_the_champion():
    compared = compare(ACTUAL, {"xgboost": ACTUAL + 1}, ACTUAL + 0.5, tolerance=0.5)
    assert compared.decision.promote
    # Equal RMSE promotes: the newer model has seen the newer month.
    assert decide(1.0, 1.0).promote and not decide(1.0001, 1.0).promote


def test_a_share_over_15_minutes_is_recorded_at_selection():
    predicted = ACTUAL.copy()
    predicted[0] += 20  # one trip of four off by more than 15 minutes
    compared = compare(ACTUAL, {"xgboost": predicted}, None)
    assert compared.at_selection["share_over_15_minutes"] == pytest.approx(0.25)
