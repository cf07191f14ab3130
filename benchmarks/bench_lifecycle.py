"""Soak benchmark of the bounded lifecycle (issue 10): every asset of 2024-02 in one
`dagster asset materialize` call with default config, five times with different random states,
then once with the deepest configuration the course's space allows.

Each step's wall time (STEP_START to STEP_SUCCESS in the instance's event log) is printed against
its bound (the configured budget plus the stated slack), and the whole command's wall.
Targets, on 2 cores: no step past its bound, no run over 6 minutes.

Usage: python benchmarks/bench_lifecycle.py [--seeds 1,2,3,4,5] [--no-deepest]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dagster as dg  # noqa: E402
from common import DATA_DIR, REPO_ROOT, append_results, step_seconds, table  # noqa: E402

from taxi_assets.ml.hyperparameters import DEEPEST_XGBOOST  # noqa: E402

MONTH = "2024-02"
ASSETS = "raw_trips,cleaned_trips,training_set,sklearn_models,xgboost_model,production_model"
SLACK_SECONDS = 20
RUN_LIMIT_SECONDS = 6 * 60
BIN = Path(sys.executable).parent


def budgets(config: dict) -> dict[str, float]:
    """Each model step's configured budget (the defaults where the config is silent)."""
    from taxi_assets.defs.serving.assets import ProductionModelConfig
    from taxi_assets.defs.training.assets import SklearnModelsConfig, XGBoostConfig

    sklearn = SklearnModelsConfig(
        **config.get("sklearn_models", {}).get("ops", {}).get("load_models", {}).get("config", {})
    )
    xgb = XGBoostConfig(**config.get("xgboost_model", {}).get("config", {}))
    production = ProductionModelConfig(**config.get("production_model", {}).get("config", {}))
    found = {"xgboost_model": xgb.timeout_seconds, "production_model": production.timeout_seconds}
    from taxi_assets.ml.hyperparameters import short_name

    for model in sklearn.models:
        found[f"sklearn_models.tune_and_train[{short_name(model)}]"] = sklearn.timeout_seconds
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--no-deepest", action="store_true")
    args = parser.parse_args()

    scenarios = [
        (
            f"default, random_state {seed}",
            {
                "sklearn_models": {"ops": {"load_models": {"config": {"random_state": int(seed)}}}},
                "xgboost_model": {"config": {"random_state": int(seed)}},
            },
        )
        for seed in args.seeds.split(",")
    ]
    if not args.no_deepest:
        scenarios.append(
            (
                "deepest: max_depth 100, 1,000 rounds at learning rate 0.05, no early stop",
                {
                    "xgboost_model": {
                        "config": {
                            "fixed_params": DEEPEST_XGBOOST,
                            "early_stopping_rounds": 1000,
                            "start_from_known_good": False,
                        }
                    },
                },
            )
        )

    with tempfile.TemporaryDirectory(prefix="bench-lifecycle-") as scratch:
        home, elsewhere = Path(scratch) / "home", Path(scratch) / "cwd"
        home.mkdir()
        elsewhere.mkdir()
        shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "MLFLOW_"))} | {
            "DAGSTER_HOME": str(home),
            "TAXI_DATA_DIR": str(DATA_DIR),
        }
        base = [BIN / "dagster", "asset", "materialize", "-m", "taxi_assets.definitions", "--partition"]
        subprocess.run(
            [*base, "2024-01", "--select", "raw_trips,cleaned_trips"],
            env=env,
            cwd=elsewhere,
            check=True,
            capture_output=True,
        )
        os.environ["DAGSTER_HOME"] = str(home)

        rows, verdicts = [], []
        for name, config in scenarios:
            path = home / "run.yaml"
            path.write_text(yaml.safe_dump({"ops": config}))
            start = time.perf_counter()
            done = subprocess.run(
                [*base, MONTH, "--select", ASSETS, "-c", str(path)],
                env=env,
                cwd=elsewhere,
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - start
            with dg.DagsterInstance.get() as instance:
                run = instance.get_runs(limit=1)[0]
                seconds = step_seconds(instance, run.run_id)
                xgb = (
                    instance.fetch_materializations(
                        dg.AssetRecordsFilter(asset_key=dg.AssetKey("xgboost_model"), asset_partitions=[MONTH]), limit=1
                    )
                    .records[0]
                    .asset_materialization.metadata
                )
                production = (
                    instance.fetch_materializations(
                        dg.AssetRecordsFilter(asset_key=dg.AssetKey("production_model"), asset_partitions=[MONTH]),
                        limit=1,
                    )
                    .records[0]
                    .asset_materialization.metadata
                )
            limits = budgets(config)
            ok = run.status == dg.DagsterRunStatus.SUCCESS and wall <= RUN_LIMIT_SECONDS
            for step, value in sorted(seconds.items(), key=lambda item: -item[1]):
                if value < 1 and step not in limits:
                    continue
                bound = limits.get(step)
                within = bound is None or value <= bound + SLACK_SECONDS
                ok &= within
                rows.append(
                    [
                        name,
                        step,
                        f"{value:.1f} s",
                        f"{bound:.0f} s + {SLACK_SECONDS} s" if bound else "-",
                        "" if bound is None else ("yes" if within else "**NO**"),
                    ]
                )
            rows.append(
                [
                    name,
                    "**whole command**",
                    f"{wall:.1f} s",
                    f"{RUN_LIMIT_SECONDS} s",
                    "yes" if wall <= RUN_LIMIT_SECONDS else "**NO**",
                ]
            )
            verdicts.append(
                f"- {name}: {run.status.value}; XGBoost RMSE {xgb['rmse'].value:.4f} after {xgb['trials'].value} trials "
                f"(search ended by {xgb['search_ended_by'].value}, best round {xgb['best_iteration'].value}); "
                f"serving {production['serving_model'].value}, lookup table: {production['serving_lookup_table'].value}"
                + ("" if done.returncode == 0 else f"; exit {done.returncode}: {done.stderr[-400:]}")
            )
            print(f"{name}: {wall:.1f} s, {run.status.value}", flush=True)
            if not ok:
                verdicts[-1] += " **FAIL**"

    body = (
        table(["run", "step", "wall", "bound", "within"], rows)
        + "\n\n"
        + "\n".join(verdicts)
        + f"\n\nEvery step within its bound and every run under {RUN_LIMIT_SECONDS // 60} minutes: "
        + ("PASS" if not any("FAIL" in line for line in verdicts) else "FAIL")
        + "\n\nCommand: `python benchmarks/bench_lifecycle.py`"
    )
    print(body)
    append_results("bench_lifecycle: bounded steps, whole graph of a month", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
