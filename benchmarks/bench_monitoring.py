"""What batch scoring costs (issue 19): trip_predictions for a month against cleaned_trips for
the same month, and against the retraining that made the model it scores with.

Set-up (not timed): a scratch instance; 2023-12..2024-02 prepared; 2024-01 retrained and decided
with the default configuration (the model that serves when 2024-02's file lands). Then
trip_predictions[2024-02] and cleaned_trips[2024-02] are materialized in turn, --repeat times
each, alternating so machine noise hits both alike. Times are the steps' own (STEP_START to
STEP_SUCCESS in the event log) and the whole in-process run. Target: trip_predictions a small
fraction of a retraining.

Usage: python benchmarks/bench_monitoring.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dagster as dg  # noqa: E402
from common import DATA_DIR, append_results, median, step_seconds, table  # noqa: E402

from taxi_assets.definitions import build_defs  # noqa: E402
from taxi_assets.lib.sources import LocalTripSource  # noqa: E402

PREPARATION = ["trip_files", "raw_trips", "cleaned_trips", "training_set"]
RETRAINING = ["sklearn_models", "xgboost_model", "production_model"]


def materialize(job, instance, month: str, assets: list[str]) -> tuple[float, dict[str, float]]:
    """Materialize ``assets`` for ``month``; the run's wall time and each step's."""
    start = time.perf_counter()
    result = job.execute_in_process(
        instance=instance, partition_key=month, asset_selection=[dg.AssetKey(a) for a in assets], raise_on_error=False
    )
    wall = time.perf_counter() - start
    if not result.success:
        raise SystemExit(f"{assets} {month} failed: see the instance's event log")
    return wall, step_seconds(instance, result.run_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        instance = dg.DagsterInstance.local_temp(home)
        job = build_defs(trip_source=LocalTripSource(directory=str(DATA_DIR))).resolve_implicit_global_asset_job_def()
        materialize(job, instance, "2023-12", PREPARATION[:-1])  # read by 2024-01's training set
        for month in ("2024-01", "2024-02"):
            materialize(job, instance, month, PREPARATION)
        retraining_wall, retraining_steps = materialize(job, instance, "2024-01", RETRAINING)
        timings: dict[str, list[tuple[float, float]]] = {"trip_predictions": [], "cleaned_trips": []}
        for _ in range(args.repeat):
            for asset in timings:
                wall, steps = materialize(job, instance, "2024-02", [asset])
                timings[asset].append((steps[asset], wall))
        scored = instance.fetch_materializations(dg.AssetKey("trip_predictions"), limit=1).records[0]
        metadata = {key: value.value for key, value in scored.asset_materialization.metadata.items()}
    realized, chosen = float(metadata["rmse"]), float(metadata["validation_rmse_at_selection"])
    step = {asset: median([s for s, _ in runs]) for asset, runs in timings.items()}
    wall = {asset: median([w for _, w in runs]) for asset, runs in timings.items()}
    rows = [
        [asset, f"{step[asset]:.2f}", f"{wall[asset]:.2f}", f"{step[asset] / step['cleaned_trips']:.2f}x",
         f"{100 * step[asset] / retraining_wall:.1f} %"]
        for asset in timings
    ]  # fmt: skip
    rows.append(["retraining 2024-01 (default config)", f"{sum(retraining_steps.values()):.1f} (sum of steps)",
                 f"{retraining_wall:.1f}", "", "100 %"])  # fmt: skip
    load = os.getloadavg()[0]
    body = (
        f"Month 2024-02, medians of {args.repeat} alternating runs; load average at the end {load:.1f}.\n\n"
        + table(["asset", "step s", "run s", "vs cleaned_trips", "vs retraining"], rows)
        + f"\n\nThe model chosen for 2024-01 ({metadata['model']}) on 2024-02's trips: realized RMSE {realized:.3f} "
        f"against {chosen:.3f} when it was chosen ({100 * (realized / chosen - 1):+.1f} %; the decay check's "
        "default tolerance is 10 %)."
    )
    print(body)
    append_results("trip_predictions cost (bench_monitoring.py)", body)


if __name__ == "__main__":
    main()
