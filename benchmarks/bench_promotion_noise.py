"""Where the promotion judgement's tolerance comes from (issue 33): how much two sound models,
trained a month apart, differ on the month after the newer one.

For each month M+1 of the real files: a model trained on month M (the newer, "promoted") and one
trained on M-1 (the one it replaced), both scored on M+1's trips. Two model kinds: XGBoost with the
search's known-good first trial (100 rounds, fixed) and the course's LinearRegression. The gap is
(RMSE of the newer - RMSE of the older) / RMSE of the older; positive means the promotion did worse.
`PROMOTION_TOLERANCE` (5 %) has to sit above the sound months' positive gaps.

Usage: python benchmarks/bench_promotion_noise.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import DATA_DIR, append_results, table  # noqa: E402

from taxi_assets.ml.steering import PROMOTION_TOLERANCE  # noqa: E402
from taxi_assets.ml.training import XGBOOST_FIRST_TRIAL  # noqa: E402

MONTHS = [f"2023-{m:02d}" for m in range(1, 13)] + ["2024-01", "2024-02"]
ROUNDS = 100


def month_trips(month: str):
    from taxi_assets.ml.cleaning import clean
    from taxi_assets.ml.features import combine_features
    from taxi_assets.ml.trip_files import read_trip_file

    trips = combine_features(clean(read_trip_file(DATA_DIR / month[:4] / f"{month[5:]}.parquet", month)))
    return trips[["PU_DO", "trip_distance"]].to_dict("records"), trips["duration"].to_numpy()


def fit(kind: str, records, durations):
    """A fitted (vectorizer, predict) pair of ``kind`` on one month's trips."""
    import xgboost as xgb
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LinearRegression

    vectorizer = DictVectorizer()
    features = vectorizer.fit_transform(records)
    if kind == "LinearRegression":
        model = LinearRegression().fit(features, durations)
        return lambda rows: model.predict(vectorizer.transform(rows))
    params = {k: int(v) if k == "max_depth" else v for k, v in XGBOOST_FIRST_TRIAL.items() if k != "num_boost_round"}
    booster = xgb.train({**params, "seed": 42}, xgb.DMatrix(features, label=durations), num_boost_round=ROUNDS)
    return lambda rows: booster.predict(xgb.DMatrix(vectorizer.transform(rows)))


def main() -> None:
    from sklearn.metrics import root_mean_squared_error

    trips = {month: month_trips(month) for month in MONTHS}
    rows, gaps = [], {"XGBoost": [], "LinearRegression": []}
    for kind in gaps:
        models = {month: fit(kind, *trips[month]) for month in MONTHS[:-1]}
        for older, newer, scored in zip(MONTHS, MONTHS[1:], MONTHS[2:], strict=False):
            records, durations = trips[scored]
            new, old = (root_mean_squared_error(durations, models[m](records)) for m in (newer, older))
            gaps[kind].append((new - old) / old)
            rows.append([kind, scored, newer, f"{new:.3f}", older, f"{old:.3f}", f"{100 * gaps[kind][-1]:+.2f} %"])
    summary = [
        [kind, f"{100 * max(g):+.2f} %", f"{100 * np.median(np.abs(g)):.2f} %", f"{100 * max(np.abs(g)):.2f} %"]
        for kind, g in gaps.items()
    ]
    body = (
        table(["model", "scored month", "newer", "RMSE", "older", "RMSE", "gap"], rows)
        + "\n\n"
        + table(["model", "worst gap (newer worse)", "median abs gap", "largest abs gap"], summary)
        + f"\n\nPROMOTION_TOLERANCE: {100 * PROMOTION_TOLERANCE:.0f} %"
    )
    print(body)
    append_results("bench_promotion_noise: sound models a month apart, scored on the next month", body)


if __name__ == "__main__":
    main()
