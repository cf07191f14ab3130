"""Where XGBoost's search starts (issue 22): the known-good first trial, and warm starts.

(a) Starting points: one boosting run to its early stop (no budget) of each configuration on
three months (trained on the month before, validated on the month): the known-good configuration
the search began from before issue 22 (depth 30, learning rate 0.1) and the one it begins from now.
The new one was chosen on 2023-06 and 2023-10; 2024-02 (the month the freshness goal is judged on)
is shown, not used to choose.

(b) Warm start within the default budget, on 2024-02: the default search from the known-good
configuration (cold), against the same search begun from 2024-01's search record (its best trial
first, the rest told to TPE), with 2024-01 searched first with the same defaults. Budget: the
search's share of XGBoostConfig's default timeout, as the asset gives it.

Usage: python benchmarks/bench_warm_start.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import DATA_DIR, append_results, table  # noqa: E402

from taxi_assets.ml import training  # noqa: E402
from taxi_assets.ml.budget import Budget  # noqa: E402
from taxi_assets.ml.warm_start import plan_warm_start, search_record  # noqa: E402

BEFORE = {**training.XGBOOST_FIRST_TRIAL, "max_depth": 30.0, "learning_rate": 0.1}
MONTHS = ["2023-06", "2023-10", "2024-02"]


def training_set(month: str):
    from taxi_assets.ml.cleaning import clean
    from taxi_assets.ml.dataset import build_training_set
    from taxi_assets.ml.features import combine_features
    from taxi_assets.ml.trip_files import read_trip_file

    year, number = int(month[:4]), int(month[5:])
    before = f"{year - (number == 1)}-{(number - 2) % 12 + 1:02d}"
    frames = [
        combine_features(clean(read_trip_file(DATA_DIR / m[:4] / f"{m[5:]}.parquet", m))) for m in (before, month)
    ]
    return build_training_set(frames, f"{month}-01")


def one_run(params: dict, data) -> tuple[float, int, float]:
    import xgboost as xgb

    dtrain = xgb.DMatrix(data.X_train, label=np.asarray(data.y_train))
    dvalid = xgb.DMatrix(data.X_val, label=np.asarray(data.y_val))
    whole = {name: int(value) if name in ("max_depth", "num_boost_round") else value for name, value in params.items()}
    began = time.perf_counter()
    booster = training.train_booster({**whole, "random_state": 42}, dtrain, dvalid, early_stopping_rounds=10)
    return float(booster.best_score), int(booster.best_iteration), time.perf_counter() - began


def search(data, warm, seconds: float):
    return training.tune_xgboost(
        data.X_train, data.y_train, data.X_val, data.y_val, 10, 10, 42, budget=Budget.seconds(seconds),
        warm_start=warm,
    )  # fmt: skip


def main() -> None:
    from taxi_assets.defs.training.assets import XGBoostConfig, post_search_reserve

    sets = {month: training_set(month) for month in MONTHS}
    rows = []
    for name, params in (("before issue 22", BEFORE), ("now", training.XGBOOST_FIRST_TRIAL)):
        for month in MONTHS:
            rmse, best, seconds = one_run(params, sets[month])
            rows.append([f"{name}: depth {params['max_depth']:.0f}, rate {params['learning_rate']}", month,
                         f"{rmse:.4f}", best + 1, f"{seconds:.1f} s"])  # fmt: skip
            print(rows[-1], flush=True)
    timeout = XGBoostConfig().timeout_seconds
    seconds = timeout - post_search_reserve("xgboost", timeout)
    january = search(training_set("2024-01"), None, seconds)
    warm = plan_warm_start(search_record(january.trials), "2024-01", {}, training.XGBOOST_FIRST_TRIAL)
    cold = plan_warm_start(None, None, {}, training.XGBOOST_FIRST_TRIAL)
    searched = []
    for name, start in (("cold (known-good first)", cold), ("warm (2024-01's record)", warm)):
        result = search(sets["2024-02"], start, seconds)
        firsts = result.trials[0]["metrics"]["rmse"]
        searched.append([name, f"{result.best_metrics['rmse']:.4f}", len(result.trials), f"{firsts:.4f}",
                         result.stopped_by, f"{result.seconds:.1f} s"])  # fmt: skip
        print(searched[-1], flush=True)
    body = "\n\n".join(
        [
            "(a) one boosting run to its early stop, trained on the month before:",
            table(["configuration", "validation month", "RMSE", "rounds", "seconds"], rows),
            f"(b) the default search on 2024-02 in its default budget ({seconds:.0f} s of the step's {timeout:.0f} s); "
            f"2024-01 searched first the same way: best RMSE {january.best_metrics['rmse']:.4f} after "
            f"{len(january.trials)} trials. Warm start: {warm.source}.",
            table(["search", "best RMSE", "trials", "first trial's RMSE", "ended by", "search seconds"], searched),
            "Command: `python benchmarks/bench_warm_start.py`",
        ]
    )
    print(body)
    append_results("bench_warm_start: where XGBoost's search starts", body)


if __name__ == "__main__":
    main()
