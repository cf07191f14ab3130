"""Helpers shared by the benchmarks: machine description, process measurement, RESULTS.md."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
DATA_DIR = Path(os.environ.get("TAXI_DATA_DIR") or REPO_ROOT.parent / "shared" / "data" / "taxi" / "green").resolve()

# Runs a command and reports its wall time and the peak RSS of its whole process tree
# (ru_maxrss of the waited-for children: the largest of them).
_MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
wall = time.perf_counter() - start
print(json.dumps({"wall": wall, "rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "code": code}))
"""


def measure_process(args: list[str], env: dict[str, str], cwd: Path) -> dict:
    output = subprocess.run(
        [sys.executable, "-c", _MEASURE, *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(output)


def timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return time.perf_counter() - start, value


def median(values):
    return statistics.median(values)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Python {platform.python_version()}, {platform.system()}"


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def append_results(title: str, body: str) -> None:
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    with RESULTS.open("a") as results:
        results.write(f"\n## {title} ({stamp})\n\nMachine: {machine()}\n\n{body}\n")
    print(f"\nappended to {RESULTS}")


def write_scratch_instance(home: Path) -> None:
    """A dagster.yaml for a throwaway instance in ``home``: absolute paths, and the default run
    coordinator so runs launched through GraphQL start without a daemon."""
    (home / "dagster.yaml").write_text(
        f"storage:\n  sqlite:\n    base_dir: {home}\n"
        f"local_artifact_storage:\n  module: dagster._core.storage.root\n  class: LocalArtifactStorage\n"
        f"  config:\n    base_dir: {home}\n"
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
        "telemetry:\n  enabled: false\n"
    )


def step_seconds(instance, run_id: str) -> dict[str, float]:
    """Each step's wall time in a run, STEP_START to STEP_SUCCESS (or STEP_FAILURE), from the event log."""
    import dagster as dg

    started, seconds = {}, {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            started[event.step_key] = record.timestamp
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            seconds[event.step_key] = record.timestamp - started[event.step_key]
    return seconds
