"""Opening the local MLflow store from several processes at once (the daemon's step, a sensor, a
client such as ``taxi-assets lineage`` or a test): a new SQLite store runs its migrations on first
open, and two processes doing so together fail with alembic's "expected to match one row"."""

from __future__ import annotations

import subprocess
import sys

from taxi_assets_tests.stack import wait_for

# Each process imports MLflow, says it is ready, and opens the store only when told to go, so the
# openings overlap however slow the imports were.
OPEN_WHEN_TOLD = """
import sys, time
from pathlib import Path
from taxi_assets.lib.tracking import open_client
uri, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.01)
client = open_client(uri)
print(len(client.search_experiments()))
"""


def test_processes_opening_a_new_local_store_together_all_get_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_WHEN_TOLD, uri, str(tmp_path / f"ready-{i}"), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    try:
        wait_for(lambda: all((tmp_path / f"ready-{i}").exists() for i in range(4)), 300, "four processes ready")
        go.touch()
        outcomes = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:
            process.kill()
    failed = [err for process, (_, err) in zip(processes, outcomes, strict=True) if process.returncode != 0]
    assert not failed, failed[0][-3000:]
    assert [out.strip() for out, _ in outcomes] == ["1"] * 4  # the store's Default experiment, once
