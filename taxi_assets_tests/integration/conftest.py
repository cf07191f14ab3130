"""Fixtures of the integration tests: the real trip files (required), prepared and trained instances."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from taxi_assets_tests.helpers import DATA_DIR, decide, failure_messages, run_months, train


@pytest.fixture(scope="session", autouse=True)
def trip_data_present():
    # The real files are the test data; without them these tests would prove nothing.
    if not (DATA_DIR / "2024" / "02.parquet").is_file():
        raise pytest.UsageError(f"trip data not found under {DATA_DIR}; set TAXI_DATA_DIR")


@pytest.fixture(scope="session")
def prepared_instance(tmp_path_factory) -> Iterator[dg.DagsterInstance]:
    """An instance with 2024-01 (raw, cleaned) and 2024-02 (all three) materialized from the real files."""
    home = tmp_path_factory.mktemp("prepared_home")
    # No "join the community" dialog in the UI tests' browser (the project's dagster.yaml turns it off too).
    with dg.instance_for_test(temp_dir=str(home), overrides={"nux": {"enabled": False}}) as test_instance:
        first = run_months(test_instance, ["2024-01"], ["raw_trips", "cleaned_trips"])
        second = run_months(test_instance, ["2024-02"])
        assert first[0].success and second[0].success, failure_messages(second[0])
        test_instance.test_results = {"2024-01": first[0], "2024-02": second[0]}
        yield test_instance


@pytest.fixture
def data_copy(tmp_path) -> Path:
    """A writable copy of the shared folder (course layout) for tests that break files."""
    target = tmp_path / "trips"
    shutil.copytree(DATA_DIR, target)
    return target


@pytest.fixture(scope="session")
def trained_instance(prepared_instance):
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    result = train(prepared_instance)
    assert result.success, failure_messages(result)
    prepared_instance.training_result = result
    return prepared_instance


@pytest.fixture(scope="session")
def served_instance(trained_instance):
    """The trained instance with 2024-02's production decision made once (the model that serves)."""
    trained_instance.decision_result = decide(trained_instance)
    return trained_instance


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, through Playwright (for the UI tests)."""
    from playwright.sync_api import sync_playwright

    from taxi_assets_tests.integration.test_ui import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
