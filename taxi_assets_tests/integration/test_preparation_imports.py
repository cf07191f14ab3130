"""Data preparation runs without matplotlib: its charts are drawn with Pillow (plain_charts).

matplotlib's import alone costs about a tenth of the whole data-preparation command, so a stray
import (a new chart, a helper that plots) would quietly undo that. Checked in a fresh process,
where nothing else has imported it already.
"""

from __future__ import annotations

import os
import sys

import pytest

from taxi_assets_tests.helpers import DATA_DIR, REPO_ROOT
from taxi_assets_tests.stack import run_command

SCRIPT = """
import sys
import tempfile

import dagster as dg

from taxi_assets_tests.helpers import failure_messages, run_months

with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
    results = run_months(instance, ["2024-01"], ["raw_trips", "cleaned_trips"]) + run_months(instance, ["2024-02"])
    for result in results:
        assert result.success, failure_messages(result)
    assets = {event.asset_key.to_user_string() for result in results for event in result.get_asset_materialization_events()}
print("materialized:", ",".join(sorted(assets)))
print("matplotlib:", sorted(name for name in sys.modules if name.split(".")[0] == "matplotlib")[:3])
"""


@pytest.mark.production  # the long tier: a dagster asset materialize process
def test_data_preparation_never_imports_matplotlib():
    done = run_command(
        [sys.executable, "-c", SCRIPT],
        600,
        cwd=REPO_ROOT,
        env={**os.environ, "TAXI_DATA_DIR": str(DATA_DIR)},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "materialized: cleaned_trips,raw_trips,training_set" in done.stdout, done.stdout[-2000:]
    assert "matplotlib: []" in done.stdout, done.stdout[-2000:]
