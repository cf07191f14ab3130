"""Time to a fresh model (issue 13): from a new month's file landing to the server answering
with that month's production decision, on the real stack with default budgets.

Set-up: a watched folder with 2023-12 and 2024-01, and a DAGSTER_HOME holding the project's own
dagster.yaml (SQLite instance, local MLflow store, queued runs). 2024-01 is trained with the
default budgets first (`taxi-assets materialize`), so a champion is serving. Then the stack a
user runs starts: `dagster dev` (webserver and daemon; the new-data sensor is on by default and
ticks every 5 s) and `taxi-assets serve` (default reload interval, 1 s). Once the sensor's first
tick has recorded the files present, 2024-02's file is moved into the folder (one atomic rename)
and the clock starts; it stops when the server's /health names the model of 2024-02's decision
(the run that decided; the decision may keep 2024-01's champion).

Each stage comes from the instance's own records: the sensor's tick (file -> run created), the
run's start (created -> RUN_START: queue, daemon, run worker), every step (STEP_START ->
STEP_SUCCESS), and the server's reload (production_model materialized -> served).
Goal (2 cores, default budgets; issue 22): the median of three runs at most 60 s from file to served
model, XGBoost RMSE on 2024-02 at most 5.15.

Usage: python benchmarks/bench_freshness.py [--repeat N]   (the goal is judged with --repeat 3)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dagster as dg  # noqa: E402
from common import DATA_DIR, REPO_ROOT, append_results, table  # noqa: E402
from dagster._core.scheduler.instigation import InstigatorType  # noqa: E402

BIN = Path(sys.executable).parent
MONTH, PREVIOUS = "2024-02", "2024-01"
ALL_ASSETS = "raw_trips,cleaned_trips,training_set,sklearn_models,xgboost_model,production_model"
GOAL_SECONDS, GOAL_RMSE = 60.0, 5.15
# The course's Mage pipelines on the same data, triggered by hand, with much smaller budgets
# (the figures): data 6.7 s, two sklearn models 57.6 s, XGBoost 82-127 s (3 evaluations).
MAGE = {"data preparation": "6.7 s", "scikit-learn models": "57.6 s", "xgboost": "82-127 s"}


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str, headers: dict | None = None):
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def wait(condition, seconds: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = condition()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {seconds:.0f} s waiting for {what}")


def start(command: list, env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    with log.open("ab") as sink:
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=sink, stderr=sink, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)
    except ProcessLookupError:
        pass


def link_month(data: Path, month: str) -> None:
    year, number = month.split("-")
    (data / year).mkdir(parents=True, exist_ok=True)
    (data / year / f"{number}.parquet").symlink_to(DATA_DIR / year / f"{number}.parquet")


def step_times(instance, run_id: str) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Run-level event times (RUN_START, RUN_SUCCESS...) and each step's (start, end)."""
    run_events: dict[str, float] = {}
    steps: dict[str, list[float]] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        kind = event.event_type_value
        if event.step_key is None:
            run_events.setdefault(kind, record.timestamp)
        elif kind == "STEP_START":
            steps[event.step_key] = [record.timestamp, float("nan")]
        elif kind == "STEP_SUCCESS":
            steps[event.step_key][1] = record.timestamp
    return run_events, {key: (begin, end) for key, (begin, end) in steps.items()}


def latest_metadata(instance, asset: str, month: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[month]), limit=1
    ).records
    event = records[0].event_log_entry if records else event
    materialization = event.asset_materialization
    return {key: value.value for key, value in materialization.metadata.items()} | {"_timestamp": event.timestamp}


def one_run(index: int, log_dir: Path) -> dict:
    root = Path(tempfile.mkdtemp(prefix="taxi-freshness-"))
    home, data = root / "home", root / "data"
    home.mkdir()
    data.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    for month in ("2023-12", PREVIOUS):
        link_month(data, month)
    token = secrets.token_urlsafe(24)
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DAGSTER_"))},
        "DAGSTER_HOME": str(home),
        "TAXI_DATA_DIR": str(data),
        "TAXI_API_TOKEN": token,
    }
    # This process reads the instance too; dagster.yaml's paths are relative to DAGSTER_HOME.
    os.environ["DAGSTER_HOME"] = str(home)
    processes: list[subprocess.Popen] = []
    try:
        # The state a user is in: last month trained with the default budgets, a champion serving.
        began = time.perf_counter()
        subprocess.run(
            [BIN / "taxi-assets", "materialize", "--partition", PREVIOUS, "--select", ALL_ASSETS],
            env=env, cwd=root, check=True, capture_output=True,
        )  # fmt: skip
        print(f"run {index}: {PREVIOUS} trained in {time.perf_counter() - began:.0f} s", flush=True)
        web_port, serve_port = free_port(), free_port()
        processes.append(
            start(
                [BIN / "dagster", "dev", "-w", REPO_ROOT / "workspace.yaml", "-h", "127.0.0.1", "-p", str(web_port)],
                env,
                REPO_ROOT,
                log_dir / f"dagster-dev-{index}.log",
            )  # fmt: skip
        )
        processes.append(
            start([BIN / "taxi-assets", "serve", "--port", str(serve_port)], env, root, log_dir / f"serve-{index}.log")
        )
        health = f"http://127.0.0.1:{serve_port}/health"
        served = wait(lambda: get_json(health).get("model"), 120, "the server's first model")
        assert served["partition"] == PREVIOUS, served

        def first_tick_recorded():
            with dg.DagsterInstance.from_config(str(home)) as instance:
                states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
                return any(state.instigator_data and state.instigator_data.cursor for state in states)

        wait(first_tick_recorded, 180, "the sensor's first tick", interval=1)

        # The new month lands: written beside the folder, then renamed in (atomic, as an upload
        # tool or `aws s3 cp` followed by a sync would finish).
        target = data / "2024" / "02.parquet"
        target.parent.mkdir(exist_ok=True)
        partial = data / ".02.parquet.partial"
        shutil.copyfile(DATA_DIR / "2024" / "02.parquet", partial)
        dropped_at = time.time()
        os.replace(partial, target)
        before = served["run_id"]
        # 2024-02's decision serves once the server's model comes from another run (the decision
        # may keep 2024-01's champion: then the model is the same, decided again by the new run).
        served = wait(
            lambda: (lambda model: model if model and model.get("run_id") != before else None)(
                get_json(health).get("model")
            ),
            600,
            f"the server to serve {MONTH}'s decision",
        )
        served_at = time.time()

        with dg.DagsterInstance.from_config(str(home)) as instance:
            [record] = [
                r
                for r in instance.get_run_records(dg.RunsFilter(job_name="retraining"))
                if r.dagster_run.tags.get("dagster/partition") == MONTH
            ]
            run = record.dagster_run
            assert served["run_id"] == run.run_id, (served, run.run_id)
            run_events, steps = step_times(instance, run.run_id)
            xgb = latest_metadata(instance, "xgboost_model", MONTH)
            production = latest_metadata(instance, "production_model", MONTH)
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(root, ignore_errors=True)
    created = record.create_timestamp.timestamp()
    run_start = run_events.get("PIPELINE_START", run_events.get("RUN_START"))
    data_steps = [steps[name] for name in ("raw_trips", "cleaned_trips", "training_set") if name in steps]
    stages = {
        "sensor tick (file -> run requested)": created - dropped_at,
        "run start (requested -> RUN_START: queue, daemon, run worker)": run_start - created,
        "data preparation (raw_trips, cleaned_trips, training_set, checks)": max(e for _, e in data_steps)
        - min(b for b, _ in data_steps),
    }
    data_names = {"raw_trips", "cleaned_trips", "training_set"}
    for key, (begin, end) in sorted(steps.items(), key=lambda item: item[1][0]):
        if key not in data_names and not key.startswith(("raw_trips_", "cleaned_trips_", "training_set_")):
            stages[f"step {key}"] = end - begin
    stages["server reload (production_model materialized -> served)"] = served_at - production["_timestamp"]
    # Where the time between steps goes: each step's start and end, in seconds after the file landed.
    timeline = ", ".join(
        f"{key} {begin - dropped_at:.1f}-{end - dropped_at:.1f}"
        for key, (begin, end) in sorted(steps.items(), key=lambda item: item[1][0])
    )
    return {
        "timeline": f"run start {run_start - dropped_at:.1f}, {timeline}, served {served_at - dropped_at:.1f}",
        "total": served_at - dropped_at,
        "stages": stages,
        "xgboost_rmse": float(xgb["rmse"]),
        "xgboost_search": f"{xgb['trials']} trial(s), {xgb.get('search_began_from', 'no warm-start record')}",
        "decision": f"{served['name']} ({production.get('decision', '')})",
        "served": served,
        "run_seconds": (record.end_time or served_at) - run_start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="taxi-freshness-logs-"))
    results = [one_run(index + 1, log_dir) for index in range(args.repeat)]
    rows = []
    for stage in results[0]["stages"]:
        values = [result["stages"][stage] for result in results]
        rows.append([stage, " / ".join(f"{value:.1f} s" for value in values), ""])
    totals = [result["total"] for result in results]
    rmses = [result["xgboost_rmse"] for result in results]
    rows.append(["**file to served model**", " / ".join(f"**{value:.1f} s**" for value in totals),
                 "PASS" if statistics.median(totals) <= GOAL_SECONDS else "FAIL"])  # fmt: skip
    rows.append(["XGBoost validation RMSE, 2024-02", " / ".join(f"{value:.3f}" for value in rmses),
                 "PASS" if statistics.median(rmses) <= GOAL_RMSE else "FAIL"])  # fmt: skip
    body = "\n\n".join(
        [
            table(["stage", "seconds (each run)" if len(results) > 1 else "seconds", "goal"], rows),
            f"Goal: median file to served model <= {GOAL_SECONDS:.0f} s, median XGBoost RMSE <= {GOAL_RMSE} (default budgets). "
            f"Median file to served {statistics.median(totals):.1f} s over {len(results)} run(s); the retraining run "
            f"itself {statistics.median([r['run_seconds'] for r in results]):.1f} s. Served after the drop: "
            + "; ".join(f"{r['decision']}" for r in results)
            + ". Quoted, not measured here (the issue's figures): the course's Mage pipelines on the same data with "
            "much smaller budgets, triggered by hand: "
            + ", ".join(f"{name} {value}" for name, value in MAGE.items())
            + ".",
            "XGBoost's search in each run: " + "; ".join(r["xgboost_search"] for r in results) + ".",
            "Timeline of each run (seconds after the file landed, each step's start-end): "
            + "; ".join(f"run {number}: {r['timeline']}" for number, r in enumerate(results, 1))
            + ".",
            f"Logs of the stack: {log_dir}. Command: `python benchmarks/bench_freshness.py --repeat {args.repeat}`",
        ]
    )
    print(body)
    append_results("bench_freshness: new file to served model, real stack, default budgets", body)


if __name__ == "__main__":
    main()
