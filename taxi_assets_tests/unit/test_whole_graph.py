"""The wiring, with no trip data anywhere: the whole graph, raw_trips to production_model and the
batch predictions, on three small months of made-up green trips, one trial per model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

ASSETS = ["trip_files", "raw_trips", "cleaned_trips", "training_set", "sklearn_models", "xgboost_model",
          "production_model"]  # fmt: skip
ONE_TRIAL = {
    "ops": {
        "sklearn_models": {"ops": {"load_models": {"config": {"models": ["LinearRegression"], "max_evaluations": 1}}}},
        "xgboost_model": {"config": {"max_evaluations": 1, "fixed_params": {"max_depth": 6, "learning_rate": 0.5}}},
        "production_model": {"config": {"timeout_seconds": 600}},
    }
}


def made_up_month(month: str, trips: int = 1_500, seed: int = 0) -> pd.DataFrame:
    """Green-shaped trips: 12 zones, distances, and durations that grow with distance."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(f"{month}-01")
    pickup = start + pd.to_timedelta(rng.uniform(0, 27 * 24 * 3600, trips), unit="s")
    distance = rng.gamma(2.0, 1.5, trips).round(2)
    minutes = np.clip(4 + 3.2 * distance + rng.normal(0, 2, trips), 0.5, 90)
    return pd.DataFrame(
        {
            "VendorID": np.full(trips, 2, dtype="int32"),
            "lpep_pickup_datetime": pickup.astype("datetime64[us]"),
            "lpep_dropoff_datetime": (pickup + pd.to_timedelta(minutes, unit="m")).astype("datetime64[us]"),
            "PULocationID": rng.integers(1, 13, trips).astype("int32"),
            "DOLocationID": rng.integers(1, 13, trips).astype("int32"),
            "trip_distance": distance,
            "fare_amount": (3 + 2.5 * distance).round(2),
        }
    )


@pytest.fixture
def made_up_folder(tmp_path):
    for index, month in enumerate(("2024-01", "2024-02", "2024-03")):
        path = tmp_path / "trips" / month[:4] / f"{month[5:]}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        made_up_month(month, seed=index).to_parquet(path)
    return tmp_path / "trips"


def test_the_whole_graph_runs_on_made_up_months(instance, made_up_folder, monkeypatch):
    import dagster as dg

    from taxi_assets.definitions import build_defs
    from taxi_assets.lib.history import latest_metadata
    from taxi_assets.lib.sources import LocalTripSource

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = build_defs(trip_source=LocalTripSource(directory=str(made_up_folder))).resolve_implicit_global_asset_job_def()

    def run(month, assets, config=None):
        result = job.execute_in_process(
            instance=instance, partition_key=month, asset_selection=[dg.AssetKey(a) for a in assets],
            run_config=config, raise_on_error=False,
        )  # fmt: skip
        assert result.success, [e.event_specific_data.error.message for e in result.get_step_failure_events()]
        return result

    run("2024-01", ASSETS[:3])
    run("2024-02", ASSETS, ONE_TRIAL)
    third = run("2024-03", [*ASSETS, "trip_predictions"], ONE_TRIAL)
    job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("model_performance")])

    materialized = {e.asset_key.to_user_string() for e in third.get_asset_materialization_events()}
    assert materialized == {*ASSETS[1:], "trip_predictions"}
    assert all(e.passed for e in third.get_asset_check_evaluations() if e.check_name != "serving_model_performs")
    decision = latest_metadata(instance, "production_model", "2024-03")
    assert decision["serves"] is True and decision["champion"].endswith("(2024-02)")
    scored = latest_metadata(instance, "trip_predictions", "2024-03")
    assert scored["decided_for"] == "2024-02" and scored["dagster/row_count"] > 1_000
    performance = latest_metadata(instance, "model_performance", None)
    assert performance["models"] == 1 and performance["months"] == 1
