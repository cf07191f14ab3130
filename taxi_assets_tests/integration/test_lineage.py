"""Every model knows where it came from (MLflow tags that round-trip to what Dagster recorded), the
CLI prints the chain, and a registered version can be fitted again from it, bit for bit."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from taxi_assets.lib.catalog import CODE_VERSIONS
from taxi_assets.lib.history import latest_metadata, observed_version, recorded_version
from taxi_assets_tests.helpers import DATA_DIR, mlflow_client
from taxi_assets_tests.stack import run_command

BIN = Path(sys.executable).parent


def cli(instance, *args, data_dir=DATA_DIR):
    home = Path(instance.storage_directory()).resolve().parent
    env = {**os.environ, "DAGSTER_HOME": str(home), "TAXI_DATA_DIR": str(data_dir)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return run_command([BIN / "taxi-assets", *args], 1200, env=env)


@pytest.mark.parametrize(("registered", "asset"), [("taxi-duration-xgboost", "xgboost_model"),
                                                   ("taxi-duration-LinearRegression", "sklearn_models")])  # fmt: skip
def test_mlflow_tags_round_trip_to_the_versions_dagster_recorded(trained_instance, registered, asset):
    instance = trained_instance
    tags = mlflow_client(instance).get_model_version(registered, "1").tags
    for month in ("2024-01", "2024-02"):
        on_disk = "sha256:" + hashlib.sha256((DATA_DIR / month[:4] / f"{month[5:]}.parquet").read_bytes()).hexdigest()
        # The file's version as Dagster observed it, as raw_trips read it, and as the model records it.
        assert tags[f"lineage.trip_file.{month}"] == observed_version(instance, month) == on_disk
        assert recorded_version(instance, "raw_trips", month).startswith(on_disk + "|raw_trips@")
    assert tags["lineage.training_set"] == recorded_version(instance, "training_set", "2024-02")
    for name in ("raw_trips", "cleaned_trips", "training_set", asset):
        assert tags[f"lineage.code_version.{name}"] == CODE_VERSIONS[name]
    assert (
        tags["lineage.trained_for"] == "2024-02" and tags["dagster.run_id"] == trained_instance.training_result.run_id
    )
    assert tags["lineage.package_version"] and tags["lineage.git_commit"]
    config, fit = json.loads(tags["lineage.config"]), json.loads(tags["lineage.fit"])
    assert config["max_evaluations"] == 2 and "search_space" in config
    assert fit["kind"] == ("xgboost" if asset == "xgboost_model" else "sklearn") and fit["params"]
    if asset == "xgboost_model":
        assert config["search_space"]["max_depth"] == 10 and config["search_space"]["gamma"] == "uniform(0.1, 1.0)"
        assert fit["rounds"] > fit["best_iteration"] >= 0 and fit["params"]["random_state"] == 42


def test_the_decision_records_the_lineage_of_what_it_compared(served_instance):
    decision = latest_metadata(served_instance, "production_model", "2024-02")
    challenger = decision["challenger_lineage"]
    assert challenger["model"] == decision["serving_model_version"]
    assert challenger["lineage.trained_for"] == "2024-02" and "lineage.trip_file.2024-01" in challenger
    assert decision["champion_lineage"] == {}  # no champion before 2024-02 here


def test_lineage_prints_the_chain_from_files_to_decisions(served_instance):
    done = cli(served_instance, "lineage", "xgboost")
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    tags = mlflow_client(served_instance).get_model_version("taxi-duration-xgboost", "1").tags
    assert text.startswith("taxi-duration-xgboost v1: xgboost_model, trained for 2024-02")
    assert f"2024-01  {tags['lineage.trip_file.2024-01']}  (unchanged)" in text
    assert f"training set: data version {tags['lineage.training_set']}" in text
    assert (
        f"code versions: raw_trips 1, cleaned_trips 1, training_set 1, xgboost_model {CODE_VERSIONS['xgboost_model']}"
        in text
    )
    assert f"run: dagster {tags['dagster.run_id']}" in text and "trials: 2; best #" in text
    assert "served: 2024-02 (promoted)" in text
    assert cli(served_instance, "lineage", "catboost").returncode == 1
    # Kept beside the UI screenshots: the README's lineage section shows this output.
    from taxi_assets_tests.integration.test_ui import SCREENSHOTS

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "lineage.txt").write_text(text)


# XGBoost's refit is a deep search's best trial again (minutes): with the long runs.
@pytest.mark.parametrize("model", [pytest.param("xgboost", marks=pytest.mark.production), "LinearRegression"])
def test_rebuild_fits_the_same_model_from_its_lineage(trained_instance, model):
    done = cli(trained_instance, "rebuild", model, "1")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "predictions on 51,492 validation trips equal to the registered model's" in done.stdout


def test_rebuild_refuses_when_a_trip_file_changed_and_names_it(trained_instance, data_copy):
    january = data_copy / "2024" / "01.parquet"
    data = bytearray(january.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte
    january.write_bytes(bytes(data))
    done = cli(trained_instance, "rebuild", "xgboost", "1", data_dir=data_copy)
    assert done.returncode == 1
    assert f"refusing to rebuild taxi-duration-xgboost v1: trip file 2024-01 ({january}) is now sha256:" in done.stderr
    assert "2024-02" not in done.stderr.split("refusing")[1]  # only the changed file is named
