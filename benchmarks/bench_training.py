"""Training benchmark (issue 3), partition 2024-02.

(a) All six scikit-learn models (the retraining job's multiprocess executor: one process per model,
    two at a time)
    and XGBoost with the default budgets: validation RMSE, trials and wall time, in one table.
(b) XGBoost with the course's own settings (early_stopping_rounds=3, max_evaluations=3, plain
    TPE, no time budget) beside our defaults.
(c) The scikit-learn fan-out in-process against the multiprocess executor, for the default two
    models and for all six.

Targets: XGBoost validation RMSE <= 5.15 with the default budget, whole xgboost_model step <= 120 s.
Usage: python benchmarks/bench_training.py [--skip-six]
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
from common import DATA_DIR, append_results, table, write_scratch_instance  # noqa: E402

from taxi_assets.apps import cli  # noqa: E402
from taxi_assets.definitions import build_defs  # noqa: E402
from taxi_assets.lib.sources import LocalTripSource  # noqa: E402
from taxi_assets.ml.hyperparameters import valid_model_names  # noqa: E402

MONTH = "2024-02"


def instance_in(home: Path) -> dg.DagsterInstance:
    write_scratch_instance(home)
    return dg.DagsterInstance.from_config(str(home))


def step_seconds(instance, result, step_key: str) -> float:
    """STEP_START to STEP_SUCCESS of one step, from the instance's event log."""
    times = {
        entry.dagster_event.event_type_value: entry.timestamp
        for entry in instance.all_logs(result.run_id)
        if entry.dagster_event and entry.dagster_event.step_key == step_key
    }
    return times["STEP_SUCCESS"] - times["STEP_START"]


def run_in_process(defs, instance, assets, run_config):
    job = defs.resolve_implicit_global_asset_job_def()
    start = time.perf_counter()
    result = job.execute_in_process(
        instance=instance,
        partition_key=MONTH,
        asset_selection=[dg.AssetKey(a) for a in assets],
        run_config=run_config,
        raise_on_error=True,
    )
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-six", action="store_true", help="skip (a)'s six scikit-learn models")
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # a store of our own in the scratch instance

    with tempfile.TemporaryDirectory() as scratch:
        instance = instance_in(Path(scratch))
        defs = build_defs(trip_source=LocalTripSource(directory=str(DATA_DIR)))
        job = defs.resolve_implicit_global_asset_job_def()
        for month, assets in (
            ("2024-01", ["raw_trips", "cleaned_trips"]),
            (MONTH, ["raw_trips", "cleaned_trips", "training_set"]),
        ):
            job.execute_in_process(
                instance=instance, partition_key=month, asset_selection=[dg.AssetKey(a) for a in assets]
            )

        rows = []
        if not args.skip_six:
            config = {"ops": {"sklearn_models": {"ops": {"load_models": {"config": {"models": valid_model_names()}}}}}}
            start = time.perf_counter()
            with cli._execute(instance, ["sklearn_models"], MONTH, config) as result:
                assert result.success, "the six-model fan-out failed"
            six_wall = time.perf_counter() - start
            models = defs.load_asset_value("sklearn_models", partition_key=MONTH, instance=instance)
            for model in sorted(models.values(), key=lambda m: m.rmse):
                rows.append(
                    [
                        model.name,
                        f"{model.rmse:.3f}",
                        model.n_trials,
                        f"{model.train_seconds:.1f} s",
                        "default (10 trials, 120 s budget per model)",
                    ]
                )
            rows.append(["(all six, multiprocess executor, 2 processes)", "", "", f"{six_wall:.1f} s wall", ""])

        xgb_default, _ = run_in_process(defs, instance, ["xgboost_model"], None)
        default_model = defs.load_asset_value("xgboost_model", partition_key=MONTH, instance=instance)
        default_step = step_seconds(instance, xgb_default, "xgboost_model")
        rows.append(
            [
                "XGBoost, our defaults",
                f"{default_model.rmse:.3f}",
                default_model.n_trials,
                f"{default_step:.1f} s step",
                "10 trials, early stop 10, 80 s budget, known-good first",
            ]
        )

        course_config = {
            "ops": {
                "xgboost_model": {
                    "config": {
                        "max_evaluations": 3,
                        "early_stopping_rounds": 3,
                        "start_from_known_good": False,
                        "timeout_seconds": 3600,
                    }
                }
            }
        }
        xgb_course, _ = run_in_process(defs, instance, ["xgboost_model"], course_config)
        course_model = defs.load_asset_value("xgboost_model", partition_key=MONTH, instance=instance)
        course_step = step_seconds(instance, xgb_course, "xgboost_model")
        rows.append(
            [
                "XGBoost, the course's settings",
                f"{course_model.rmse:.3f}",
                course_model.n_trials,
                f"{course_step:.1f} s step",
                "3 trials, early stop 3, plain TPE, budget 3600 s (none in the course)",
            ]
        )

        fan_rows = []
        selections = [("LinearRegression + Lasso (default)", None)]
        if not args.skip_six:
            selections.append(("all six", {"models": valid_model_names()}))
        for label, model_config in selections:
            config = (
                {"ops": {"sklearn_models": {"ops": {"load_models": {"config": model_config}}}}}
                if model_config
                else None
            )
            _, in_process = run_in_process(defs, instance, ["sklearn_models"], config)
            start = time.perf_counter()
            with cli._execute(instance, ["sklearn_models"], MONTH, config) as result:
                assert result.success
            multiprocess = time.perf_counter() - start
            fan_rows.append(
                [label, f"{in_process:.1f} s", f"{multiprocess:.1f} s", f"{in_process / multiprocess:.2f}x"]
            )
        instance.dispose()

    ok_rmse, ok_time = default_model.rmse <= 5.15, default_step <= 120
    body = "\n\n".join(
        [
            "(a) + (b) validation RMSE (minutes) on 2024-02, trials, wall time:",
            table(["model", "val RMSE", "trials", "time", "budget"], rows),
            f"XGBoost default: RMSE {default_model.rmse:.3f} (target <= 5.15): {'PASS' if ok_rmse else 'FAIL'}; "
            f"step {default_step:.1f} s (target <= 120 s): {'PASS' if ok_time else 'FAIL'}. "
            f"Course settings: RMSE {course_model.rmse:.3f} in {course_step:.1f} s "
            f"(quoted, not measured here, the issue's figures: Mage original 5.17-5.30 in 80-130 s; LinearRegression about 6.0).",
            "(c) the scikit-learn fan-out, whole run, in-process executor against the multiprocess executor (2 at a time):",
            table(["models", "in-process", "multiprocess", "in-process / multiprocess"], fan_rows),
            "Command: `python benchmarks/bench_training.py" + (" --skip-six" if args.skip_six else "") + "`",
        ]
    )
    print(body)
    append_results("bench_training: model assets", body)


if __name__ == "__main__":
    main()
