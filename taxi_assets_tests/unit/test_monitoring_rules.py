"""Monitoring's decisions over plain data: realized error, decay, what decay triggers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from taxi_assets.ml.monitoring import (
    DECAY_TOLERANCE,
    Served,
    judge,
    performance_table,
    realized_error,
    respond_to_decay,
    retraining_helped,
)


def test_realized_error_is_sklearns_and_counts_bad_trips():
    actual = np.array([10.0, 20.0, 30.0, 40.0])
    predicted = np.array([12.0, 20.0, 10.0, 41.0])  # one trip 20 minutes off
    error = realized_error(actual, predicted)
    assert error["rmse"] == pytest.approx(math.sqrt((4 + 0 + 400 + 1) / 4))
    assert error["mae"] == pytest.approx((2 + 0 + 20 + 1) / 4)
    assert error["share_over_15_minutes"] == 0.25 and error["rows"] == 4
    assert error["p90_abs_error"] == pytest.approx(np.percentile([2, 0, 20, 1], 90))
    empty = realized_error([], [])
    assert empty["rows"] == 0 and math.isnan(empty["rmse"])


def verdict(rmse, share=0.03, expected=5.0, expected_share=0.03):
    return judge("2024-03", "xgboost v2", {"rmse": rmse, "share_over_15_minutes": share}, expected, expected_share)


def test_decay_is_rmse_beyond_the_tolerance_or_twice_the_bad_trips():
    assert DECAY_TOLERANCE == 0.10
    assert not verdict(5.49).decayed and verdict(5.51).decayed  # 10 % of 5.0
    assert verdict(5.0, share=0.06).decayed and not verdict(5.0, share=0.059).decayed
    assert not verdict(5.0, share=0.5, expected_share=None).decayed  # an old decision without the share
    text = verdict(11.8, share=0.18).describe()
    assert text.startswith("2024-03: xgboost v2 has RMSE 11.800") and "against 5.000" in text
    assert "+136%" in text and "18.0% of trips" in text and "decayed" in text


def test_a_decayed_model_gets_one_retraining_unless_one_runs_or_ran_after():
    decayed = verdict(11.8)
    assert respond_to_decay(decayed, 100.0, "2024-03", False, None).retrain
    assert respond_to_decay(decayed, 100.0, "2024-03", False, 90.0).retrain  # retrained before the check
    running = respond_to_decay(decayed, 100.0, "2024-03", True, None)
    assert not running.retrain and "running" in running.why
    after = respond_to_decay(decayed, 100.0, "2024-03", False, 120.0)
    assert not after.retrain and "after the check failed" in after.why
    assert retraining_helped("xgboost v2", "xgboost v3") and not retraining_helped("xgboost v2", "xgboost v2")


def test_performance_table_has_a_line_per_served_model():
    scored = [
        Served("2024-02", "xgboost v1", "2024-01", "2024-01", 5.1, 5.3),
        Served("2024-03", "xgboost v2", "2024-02", "2024-02", 5.2, 11.8),
        Served("2024-04", "xgboost v2", "2024-02", "2024-03", 5.2, 12.0),  # kept as champion
    ]
    months, rows = performance_table(scored)
    assert months == ["2024-02", "2024-03", "2024-04"]
    assert [row["model"] for row in rows] == ["xgboost v1", "xgboost v2"]
    assert rows[1] == {
        "model": "xgboost v2", "role": "served", "trained_for": "2024-02", "chosen_for": "2024-02",
        "validation_rmse": 5.2, "2024-03": 11.8, "2024-04": 12.0,
    }  # fmt: skip


def test_a_shadowed_model_has_its_own_line_after_the_served_ones():
    scored = [
        Served("2024-03", "xgboost v2", "2024-02", "2024-02", 5.2, 11.8),
        Served("2024-03", "xgboost v1", "2024-01", "", float("nan"), 5.4, role="shadow"),
        Served("2024-02", "xgboost v1", "2024-01", "2024-01", 5.1, 5.3),
    ]
    _, rows = performance_table(scored)
    assert [(row["model"], row["role"]) for row in rows] == [
        ("xgboost v1", "served"), ("xgboost v2", "served"), ("xgboost v1", "shadow"),
    ]  # fmt: skip
    assert rows[2]["2024-03"] == 5.4 and "2024-02" not in rows[2]
