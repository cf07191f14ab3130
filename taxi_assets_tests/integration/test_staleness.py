"""Dagster shows what is out of date: a changed trip file or a new code version makes the months
that depend on it unsynced, naming the cause, in GraphQL (what the UI draws) and in what the
new-data sensor asks for. Small months made from the real ones keep the retrainings short."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from taxi_assets.definitions import build_defs
from taxi_assets.defs.automation import new_trip_data_sensor
from taxi_assets.lib.dagster_private import stale_status_resolver
from taxi_assets.lib.sources import LocalTripSource
from taxi_assets.ml.retraining import CHAIN
from taxi_assets_tests.helpers import REPO_ROOT, TINY_BUDGET, materializer, sampled_months
from taxi_assets_tests.integration.test_ui import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, pytest_configure_chromium
from taxi_assets_tests.stack import GraphQL, Processes

STALENESS = """query($key: AssetKeyInput!, $partition: String!) { assetNodeOrError(assetKey: $key) {
  ... on AssetNode { staleStatus(partition: $partition)
    staleCauses(partition: $partition) { key { path } partitionKey category reason dependency { path }
                                         dependencyPartitionKey } } } }"""


@pytest.fixture(scope="module")
def months(tmp_path_factory):
    """2024-01 and 2024-02 trained (on 3,000 trips a month), then 2024-02's file changed and observed."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("staleness")
    folder = sampled_months(root / "trips", ["2023-12", "2024-01", "2024-02"])
    (root / "home").mkdir()
    source = LocalTripSource(directory=str(folder))
    defs = build_defs(trip_source=source)
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.instance_for_test(temp_dir=str(root / "home"), overrides={"nux": {"enabled": False}}) as instance:
        run = materializer(job, instance)

        run("2023-12", ["trip_files", "raw_trips", "cleaned_trips"])
        for month in ("2024-01", "2024-02"):
            run(month, ["trip_files", *CHAIN], TINY_BUDGET)
        # 2024-02's content changes (one trip's distance), and the change is observed.
        february = folder / "2024" / "02.parquet"
        trips = pd.read_parquet(february)
        trips.loc[trips.index[0], "trip_distance"] += 0.01
        trips.to_parquet(february)
        run("2024-02", ["trip_files"])
        yield {"instance": instance, "defs": defs, "folder": folder, "root": root, "source": source}


@pytest.mark.production  # the long tier: dagster-webserver and Chromium
def test_a_changed_file_makes_its_month_unsynced_in_graphql_naming_the_file(months, browser_page):
    root, instance = months["root"], months["instance"]
    home = Path(instance.storage_directory()).resolve().parent
    processes = Processes(root, {**os.environ, "DAGSTER_HOME": str(home), "TAXI_DATA_DIR": str(months["folder"])})

    def up(port):
        try:
            return GraphQL(f"http://127.0.0.1:{port}").location_loaded()
        except OSError:
            return False

    try:
        port = processes.start_on_a_free_port(
            "webserver",
            lambda port: [str(Path(os.sys.executable).parent / "dagster-webserver"), "-w",
                          str(REPO_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            up,
            timeout=240,
        )  # fmt: skip
        graphql = GraphQL(f"http://127.0.0.1:{port}")

        def staleness(asset, month):
            node = graphql(STALENESS, {"key": {"path": [asset]}, "partition": month})["assetNodeOrError"]
            return node["staleStatus"], node["staleCauses"]

        status, causes = staleness("raw_trips", "2024-02")
        assert status == "STALE", causes
        [cause] = causes
        # The root cause, as the UI shows it: the month's trip file has a new version.
        assert (cause["key"]["path"], cause["partitionKey"]) == (["trip_files"], "2024-02")
        assert cause["category"] == "DATA" and cause["reason"] == "has a new data version"
        # Only that month: January's file did not change.
        assert staleness("raw_trips", "2024-01") == ("FRESH", [])
        # Dagster 1.13 marks the direct dependant; the months' later assets follow once raw_trips
        # is materialized again (the sensor retrains the whole month, see below).
        assert staleness("cleaned_trips", "2024-02")[0] == "FRESH"

        # What the UI shows for that month (README screenshot).
        page = browser_page
        # The UI shows it on the month's partition: "Unsynced", and the cause behind it.
        page = browser_page
        page.goto(f"http://127.0.0.1:{port}/assets/raw_trips?view=partitions&partition=2024-02")
        tag = page.get_by_text("Unsynced (1)").first
        tag.wait_for(timeout=120_000)
        tag.hover()
        page.get_by_text("has a new data version").first.wait_for(timeout=120_000)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "unsynced.png"))
    finally:
        processes.stop_all()


@pytest.fixture
def browser_page():
    pytest_configure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = chromium.new_context(viewport={"width": 1400, "height": 900})
        yield context.new_page()
        chromium.close()


def tick(instance, defs, source, cursor):
    sensor = new_trip_data_sensor(30)
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"trip_source": source}, definitions=defs
    ) as context:
        result = sensor(context)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result


def test_the_sensor_retrains_exactly_the_changed_month(months):
    cursor = json.dumps({"v": 2, "ignored": {}})  # not a first start: every month is ours
    result = tick(months["instance"], months["defs"], months["source"], cursor)
    assert [(r.partition_key, r.run_key.split(":")[0]) for r in result.run_requests] == [("2024-02", "retrain")]


def bumped(defs: dg.Definitions, asset: str) -> dg.Definitions:
    """The same definitions with one asset's code version changed (what a new release does)."""
    key = dg.AssetKey(asset)
    mapped = dg.map_asset_specs(lambda s: s.replace_attributes(code_version="2") if s.key == key else s, defs.assets)
    return dg.Definitions(
        assets=mapped, asset_checks=defs.asset_checks, jobs=defs.jobs, sensors=defs.sensors,
        schedules=defs.schedules, resources=defs.resources,
    )  # fmt: skip


def test_a_new_code_version_marks_exactly_that_asset_and_the_sensor_retrains_from_it(months):
    instance = months["instance"]
    defs = bumped(months["defs"], "training_set")
    resolver = stale_status_resolver(instance, defs.resolve_asset_graph())
    unsynced = {
        (asset, month): [c.reason for c in resolver.get_stale_causes(dg.AssetKey(asset), month)]
        for month in ("2024-01", "2024-02")
        for asset in CHAIN
        if resolver.get_status(dg.AssetKey(asset), month).value == "STALE"
    }
    # training_set in both trained months (its code changed), and February's raw_trips (its file did).
    assert unsynced == {
        ("training_set", "2024-01"): ["has a new code version"],
        ("training_set", "2024-02"): ["has a new code version"],
        ("raw_trips", "2024-02"): ["has a new dependency data version"],
    }
    # The sensor retrains both months, in order: January first, February once January is done.
    result = tick(instance, defs, months["source"], json.dumps({"v": 2, "ignored": {}}))
    assert [(r.partition_key, r.run_key.split(":")[0]) for r in result.run_requests] == [("2024-01", "retrain")]
