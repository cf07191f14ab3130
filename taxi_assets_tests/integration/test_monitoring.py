"""Watching what serves, on the real months: batch predictions scored by the model that served when
the month arrived, realized error over time, and what a decayed model triggers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from taxi_assets.definitions import build_defs
from taxi_assets.defs.monitoring.sensors import DECAY_OF_TAG, model_decay_sensor
from taxi_assets.lib.alerts import EmailAlerts
from taxi_assets.lib.catalog import MONTH_TAG, REASON_TAG
from taxi_assets.lib.history import latest_metadata
from taxi_assets.lib.sources import LocalTripSource
from taxi_assets.ml.retraining import CHAIN
from taxi_assets_tests.helpers import DATA_DIR, TINY_BUDGET, materializer
from taxi_assets_tests.integration.test_serving import TOKEN, Client
from taxi_assets_tests.servers import SmtpServer, inference_server
from taxi_assets_tests.stack import wait_for

# The least a retraining can do, with a production step that does not wait to compile a lookup
# table (the predictions are the booster's either way).
RETRAIN = dg.RunConfig(ops={**TINY_BUDGET.ops, "production_model": {"config": {"timeout_seconds": 3.0}}})
PREPARE = ["trip_files", "raw_trips", "cleaned_trips"]


def decayed_month(february: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """2024-03 made from 2024-02's trips: pickups and drop-offs a month later, and each trip's
    duration taken from another trip (shuffled), so distances no longer explain durations."""
    rng = np.random.default_rng(seed)
    march = february.copy()
    durations = (march["lpep_dropoff_datetime"] - march["lpep_pickup_datetime"]).to_numpy()
    march["lpep_pickup_datetime"] = march["lpep_pickup_datetime"] + pd.DateOffset(months=1)
    march["lpep_dropoff_datetime"] = march["lpep_pickup_datetime"] + rng.permutation(durations)
    return march


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    """2024-01 trained and decided; 2024-02 prepared and scored (by 2024-01's decision)."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("monitoring")
    folder, home = root / "trips", root / "home"
    home.mkdir()
    for month in ("2023-12", "2024-01", "2024-02"):
        target = folder / month[:4] / f"{month[5:]}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA_DIR / month[:4] / f"{month[5:]}.parquet", target)
    decayed_month(pd.read_parquet(folder / "2024" / "02.parquet")).to_parquet(folder / "2024" / "03.parquet")
    defs = build_defs(trip_source=LocalTripSource(directory=str(folder)))
    job = defs.resolve_implicit_global_asset_job_def()

    with dg.instance_for_test(temp_dir=str(home), overrides={"nux": {"enabled": False}}) as instance:
        run = materializer(job, instance)
        run("2023-12", PREPARE)
        run("2024-01", ["trip_files", *CHAIN], RETRAIN)
        scored = run("2024-02", [*PREPARE, "training_set", "trip_predictions"])
        yield {"instance": instance, "run": run, "defs": defs, "home": home, "scored": scored, "root": root}


def test_a_month_is_scored_by_the_model_that_served_when_it_arrived(monitored):
    instance = monitored["instance"]
    recorded = latest_metadata(instance, "trip_predictions", "2024-02")
    # production_model[2024-01]'s model: trained for 2024-01, never saw 2024-02.
    assert (recorded["decided_for"], recorded["model_trained_for"]) == ("2024-01", "2024-01")
    decision = latest_metadata(instance, "production_model", "2024-01")
    assert recorded["model"] == decision["serving_model_version"]
    assert recorded["validation_rmse_at_selection"] == pytest.approx(decision["challenger_rmse"])
    # Every cleaned trip of 2024-02, in a Parquet file under the instance anyone can read.
    cleaned = latest_metadata(instance, "cleaned_trips", "2024-02")["dagster/row_count"]
    path = Path(recorded["file"])
    assert path == Path(instance.storage_directory()).resolve().parent / "predictions" / "2024" / "02.parquet"
    frame = pd.read_parquet(path)
    assert len(frame) == recorded["dagster/row_count"] == cleaned
    assert list(frame.columns) == [
        "pickup_datetime", "PULocationID", "DOLocationID", "trip_distance", "predicted_minutes", "actual_minutes",
        "model", "model_name", "model_version", "model_trained_for", "decided_for",
    ]  # fmt: skip
    assert (frame["pickup_datetime"] >= "2024-02-01").mean() > 0.99  # the month's own trips
    # RMSE recomputed with pandas from the file equals what the metadata says.
    rmse = float(np.sqrt(((frame["predicted_minutes"] - frame["actual_minutes"]) ** 2).mean()))
    assert rmse == pytest.approx(recorded["rmse"], rel=1e-9)
    assert recorded["worst_trips"] and len(recorded["worst_trips"].records) == 10
    # The Python API reads the same file, from another process.
    script = "import sys, taxi_assets; taxi_assets.predictions(sys.argv[1]).to_parquet(sys.argv[2])"
    out = monitored["root"] / "api.parquet"
    home = str(Path(instance.storage_directory()).resolve().parent)
    done = subprocess.run(
        [sys.executable, "-c", script, "2024-02", str(out)], env={**os.environ, "DAGSTER_HOME": home},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    pd.testing.assert_frame_equal(pd.read_parquet(out), frame)


def test_the_servers_minutes_equal_the_files(monitored):
    """20 random trips of the file get the same minutes from `taxi-assets serve` (which serves
    2024-01's decision now), through MLflow's protocol (unrounded)."""
    instance = monitored["instance"]
    frame = pd.read_parquet(latest_metadata(instance, "trip_predictions", "2024-02")["file"])
    servable = frame[frame["trip_distance"].between(0, 500)]  # what the API's schema accepts
    sample = servable.sample(20, random_state=0)
    home = Path(instance.storage_directory()).resolve().parent
    env = {**os.environ, "DAGSTER_HOME": str(home), "TAXI_API_TOKEN": TOKEN}
    with inference_server(env, monitored["root"], "--reload-interval", "0") as (_, port):

        def answer():
            try:
                return Client(port).request(
                    "POST",
                    "/invocations",
                    {"dataframe_records": sample[["PULocationID", "DOLocationID", "trip_distance"]].to_dict("records")},
                )
            except OSError:
                return None

        status, body = wait_for(answer, 300, "the server")
    assert status == 200, body
    assert body["predictions"] == sample["predicted_minutes"].tolist()


def test_the_cli_prints_a_months_realized_error(monitored):
    home = Path(monitored["instance"].storage_directory()).resolve().parent
    done = subprocess.run(
        [Path(sys.executable).parent / "taxi-assets", "performance", "--month", "2024-02"],
        env={**os.environ, "DAGSTER_HOME": str(home)}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.strip().splitlines()
    recorded = latest_metadata(monitored["instance"], "trip_predictions", "2024-02")
    assert header.split()[:3] == ["month", "model", "trained"]
    assert row.startswith("2024-02") and recorded["model"] in row and f"{recorded['rmse']:.3f}" in row
    missing = subprocess.run(
        [Path(sys.executable).parent / "taxi-assets", "performance", "--month", "2023-06"],
        env={**os.environ, "DAGSTER_HOME": str(home)}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert missing.returncode == 1 and "no batch predictions for 2023-06" in missing.stderr


def sensor_tick(instance, defs, alerts, cursor=None):
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"alerts": alerts}, definitions=defs
    ) as context:
        return model_decay_sensor(context)


def test_a_decayed_month_alerts_once_and_asks_for_one_retraining(monitored, tmp_path):
    instance, run, defs = monitored["instance"], monitored["run"], monitored["defs"]
    # 2024-02 retrained and decided: its decision serves when the (decayed) 2024-03 arrives.
    run("2024-02", ["trip_files", *CHAIN], RETRAIN)
    scored = run("2024-03", [*PREPARE, "trip_predictions"])
    [check] = [e for e in scored.get_asset_check_evaluations() if e.check_name == "serving_model_performs"]
    served = latest_metadata(instance, "trip_predictions", "2024-03")
    assert served["decided_for"] == "2024-02" and not check.passed
    assert check.severity == dg.AssetCheckSeverity.ERROR
    realized, expected = check.metadata["realized_rmse"].value, check.metadata["expected_rmse"].value
    assert realized > 1.1 * expected
    assert "2024-03" in check.description and served["model"] in check.description
    assert f"{realized:.3f}" in check.description and f"{expected:.3f}" in check.description

    # model_performance: one line per served model; the jump on 2024-03.
    performance = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("model_performance")]
    )
    assert performance.success
    rows = {
        row.data["model"]: row.data
        for row in latest_metadata(instance, "model_performance", None)["performance"].records
    }
    assert len(rows) == 2
    decayed = rows[served["model"]]
    assert decayed["chosen_for"] == "2024-02" and decayed["2024-03"] > 1.1 * decayed["validation_rmse"]

    # The decay sensor: one email naming the month, one retraining of the newest month tagged decay.
    with SmtpServer(tmp_path, user="alerts@taxi", password="pw") as smtp:
        alerts = EmailAlerts(
            host="127.0.0.1", port=smtp.port, user="alerts@taxi", password="pw", recipients="ml@taxi",
            ca_file=str(smtp.cert),
        )  # fmt: skip
        first = sensor_tick(instance, defs, alerts)
        [request] = first.run_requests
        assert request.partition_key == "2024-03" and request.tags[REASON_TAG] == "decay"
        assert request.tags[MONTH_TAG] == "2024-03" and request.tags[DECAY_OF_TAG] == f"2024-03:{served['model']}"
        [message] = smtp.messages
        assert "2024-03" in message["Subject"] and served["model"] in message["Subject"]
        body = message.get_payload()
        assert f"{realized:.3f}" in body and f"{expected:.3f}" in body and "What to do" in body
        # Once per month and model: the next tick asks for nothing and sends nothing.
        second = sensor_tick(instance, defs, alerts, first.cursor)
        assert second.run_requests == [] and len(smtp.messages) == 1

        # The retraining runs; if the decayed model still serves after it, a second email says so.
        # What the daemon does with the request: the retraining job for the month.
        retrained = defs.resolve_job_def("retraining").execute_in_process(
            instance=instance, partition_key=request.partition_key, asset_selection=request.asset_selection,
            run_config=RETRAIN, tags=request.tags, raise_on_error=False,
        )  # fmt: skip
        serving = latest_metadata(instance, "production_model", "2024-03")["serving_model_version"]
        third = sensor_tick(instance, defs, alerts, second.cursor)
        assert third.run_requests == [] and retrained.success
        helped = serving != served["model"]
        assert len(smtp.messages) == (1 if helped else 2), [m["Subject"] for m in smtp.messages]
        if not helped:
            assert "retraining did not help" in smtp.messages[1]["Subject"]
            assert "a person must look" in smtp.messages[1].get_payload()
        assert json.loads(third.cursor)["watching"] == {}


def test_automation_scores_a_month_after_its_retraining(monitored):
    """The monitoring assets' automation conditions: trip_predictions[M] is asked for once a run
    updated its inputs (cleaned_trips[M], production_model[M-1]) and has finished, not before."""
    instance, run, defs = monitored["instance"], monitored["run"], monitored["defs"]
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    # Re-decide 2024-01: the model that serves 2024-02 may change, so 2024-02 is scored again.
    run("2024-01", ["production_model"], RETRAIN)
    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert second.get_requested_partitions(dg.AssetKey("trip_predictions")) == {"2024-02"}
    assert second.get_num_requested(dg.AssetKey("model_performance")) == 0  # no new predictions yet
    run("2024-02", ["trip_predictions"])
    third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
    assert third.get_num_requested(dg.AssetKey("model_performance")) == 1
    assert third.get_requested_partitions(dg.AssetKey("trip_predictions")) == set()


@pytest.mark.production  # the long tier: dagster-webserver and Chromium
def test_the_ui_draws_realized_error_over_time(monitored, browser):
    """model_performance's chart, one click from its page in dagster-webserver (the screenshot in
    docs/monitoring.md comes from here, after the decayed month above)."""
    from taxi_assets_tests.integration.test_ui import SCREENSHOTS, running_webserver

    instance, defs = monitored["instance"], monitored["defs"]
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("model_performance")]).success
    with running_webserver(monitored["home"]) as url:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.goto(f"{url}/assets/model_performance")
        row = page.locator("tr", has=page.get_by_text("charts", exact=True))
        row.get_by_text("[Show Markdown]").first.click(timeout=120_000)
        image = page.get_by_role("dialog").locator('img[src^="data:image/png;base64,"]').first
        image.wait_for(timeout=120_000)
        # Decoded and laid out by the browser (an event), not merely present in the page.
        page.wait_for_function(
            """() => [...document.querySelectorAll('[role="dialog"] img')].some(
                 i => i.complete && i.naturalWidth === 800 && i.getBoundingClientRect().width > 300)""",
            timeout=120_000,
        )
        assert image.get_attribute("alt") == "realized rmse by month"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "monitoring.png"))
        context.close()


@pytest.mark.production  # a dozen retrainings: minutes, so with the long end-to-end runs
def test_a_backfill_scores_every_month_by_a_model_that_never_saw_it(tmp_path):
    """2023-03..2024-02 retrained month by month (what `taxi-assets materialize --partition-range`
    does), on small months made from the real ones: every month after the first is scored by the
    decision before it, and model_performance has one line per model that served."""
    from taxi_assets_tests.helpers import sampled_months

    months = [f"2023-{m:02d}" for m in range(2, 13)] + ["2024-01", "2024-02"]
    folder = sampled_months(tmp_path / "trips", months, rows=2_000)
    (tmp_path / "home").mkdir()
    defs = build_defs(trip_source=LocalTripSource(directory=str(folder)))
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        run = materializer(job, instance)

        run("2023-02", PREPARE)
        for month in months[1:]:
            run(month, ["trip_files", *CHAIN, "trip_predictions"], RETRAIN)
        run(None, ["model_performance"])
        scored = {m: latest_metadata(instance, "trip_predictions", m) for m in months[1:]}
        decisions = {m: latest_metadata(instance, "production_model", m) for m in months[1:]}
        performance = latest_metadata(instance, "model_performance", None)

    assert scored["2023-03"] is None  # no decision before the first month of the backfill: nothing served it
    for month in months[2:]:
        assert scored[month]["model_trained_for"] < month, (month, scored[month])  # never a model that saw it
        assert scored[month]["decided_for"] == months[months.index(month) - 1]
        assert scored[month]["model"] == decisions[scored[month]["decided_for"]]["serving_model_version"]
    rows = [row.data for row in performance["performance"].records]
    served = {scored[month]["model"] for month in months[2:]}
    # One line per model that served, and one per model scored as a shadow (dashed in the chart).
    assert sorted(row["model"] for row in rows if row["role"] == "served") == sorted(served)
    shadows = {scored[month]["shadow_model"] for month in months[2:] if "shadow_model" in scored[month]}
    assert sorted(row["model"] for row in rows if row["role"] == "shadow") == sorted(shadows)
    for row in rows:  # each figure is the month's realized RMSE of that model, served or shadow
        model, rmse = ("model", "rmse") if row["role"] == "served" else ("shadow_model", "shadow_rmse")
        for month in months[2:]:
            if row.get(month) is not None:
                assert scored[month][model] == row["model"], (row, month, scored[month])
                assert row[month] == pytest.approx(scored[month][rmse], abs=1e-4)
