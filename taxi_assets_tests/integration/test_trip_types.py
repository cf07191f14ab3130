"""Yellow trip files: the same graph through the trip-type setting, on yellow-shaped files built
from the real green ones (the TLC's yellow files name the datetimes ``tpep_*``, have no
``ehail_fee`` or ``trip_type``, and add ``Airport_fee``)."""

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from taxi_assets.lib.model_store import read_value
from taxi_assets.lib.sources import HttpTripSource, LocalTripSource, S3TripSource, trip_source_from_env
from taxi_assets_tests.helpers import COURSE_SHAPES, DATA_DIR, REPO_ROOT, failure_messages, run_months
from taxi_assets_tests.stack import run_command


def yellow_shaped(green: pd.DataFrame) -> pd.DataFrame:
    yellow = green.rename(columns=lambda name: name.replace("lpep_", "tpep_"))
    yellow = yellow.drop(columns=["ehail_fee", "trip_type"])
    return yellow.assign(Airport_fee=np.where(yellow["PULocationID"].isin([132, 138]), 1.75, 0.0))


@pytest.fixture
def yellow_folder(tmp_path):
    """2024-01 and 2024-02 as the TLC names yellow files: yellow_tripdata_YYYY-MM.parquet."""
    folder = tmp_path / "yellow"
    folder.mkdir()
    for month in ("2024-01", "2024-02"):
        green = pd.read_parquet(DATA_DIR / month[:4] / f"{month[5:]}.parquet")
        yellow_shaped(green).to_parquet(folder / f"yellow_tripdata_{month}.parquet")
    return folder


def test_yellow_files_give_the_same_training_set(instance, yellow_folder, prepared_instance):
    source = LocalTripSource(directory=str(yellow_folder), trip_type="yellow")
    assert source.data_versions().keys() == {"2024-01", "2024-02"}
    [january] = run_months(instance, ["2024-01"], ["raw_trips", "cleaned_trips"], trip_source=source)
    [february] = run_months(instance, ["2024-02"], trip_source=source)
    assert january.success and february.success, failure_messages(february)
    raw = read_value(instance, "raw_trips", "2024-02")
    assert {"pickup_datetime", "dropoff_datetime", "Airport_fee"} <= set(raw.columns)
    yellow = read_value(instance, "training_set", "2024-02")
    green = read_value(prepared_instance, "training_set", "2024-02")
    assert yellow.shapes() == COURSE_SHAPES
    for ours, theirs in zip((yellow.X, yellow.X_train, yellow.X_val), (green.X, green.X_train, green.X_val)):
        assert (ours != theirs).nnz == 0
    assert yellow.dv.feature_names_ == green.dv.feature_names_
    pd.testing.assert_series_equal(yellow.y_val, green.y_val)


def test_a_green_file_under_the_yellow_setting_fails_naming_file_and_setting(instance, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    # A green file under the yellow name: its columns give it away.
    (folder / "yellow_tripdata_2024-02.parquet").write_bytes((DATA_DIR / "2024" / "02.parquet").read_bytes())
    source = LocalTripSource(directory=str(folder), trip_type="yellow")
    [result] = run_months(instance, ["2024-02"], ["raw_trips"], trip_source=source)
    assert not result.success
    message = failure_messages(result)
    assert "raw_trips partition 2024-02" in message
    assert "yellow_tripdata_2024-02.parquet" in message
    assert "missing required column(s) tpep_pickup_datetime, tpep_dropoff_datetime for yellow trips" in message
    assert "this is a green file, but the trip type is yellow (set TAXI_TRIP_TYPE=green)" in message


def test_the_environment_picks_the_trip_type_for_every_source(monkeypatch):
    for variable in ("TAXI_DATA_DIR", "TAXI_DATA_S3_BUCKET", "TAXI_DATA_S3_PREFIX", "TAXI_ENV"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("TAXI_TRIP_TYPE", "yellow")
    http = trip_source_from_env()
    assert isinstance(http, HttpTripSource) and http.trip_type == "yellow"
    assert http.describe("2023-03").endswith("/trip-data/yellow_tripdata_2023-03.parquet")
    monkeypatch.setenv("TAXI_DATA_S3_BUCKET", "trips")
    s3 = trip_source_from_env()
    # (the bucket stays an EnvVar until run time)
    assert isinstance(s3, S3TripSource) and s3._key("2023-03") == "taxi/yellow/2023/03.parquet"
    monkeypatch.delenv("TAXI_TRIP_TYPE")
    green = trip_source_from_env()
    assert isinstance(green, S3TripSource) and green._key("2023-03") == "taxi/green/2023/03.parquet"
    monkeypatch.setenv("TAXI_TRIP_TYPE", "blue")
    with pytest.raises(ValueError, match="TAXI_TRIP_TYPE must be one of green, yellow, got 'blue'"):
        trip_source_from_env()


@pytest.mark.production  # the long tier: a chain of CLI processes
def test_taxi_assets_materialize_runs_on_yellow_files(yellow_folder, tmp_path):
    """As a user would: the CLI with TAXI_TRIP_TYPE=yellow and the folder of yellow files."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "TAXI_DATA_DIR": str(yellow_folder), "TAXI_TRIP_TYPE": "yellow"}
    command = [str(Path(sys.executable).parent / "taxi-assets"), "materialize", "--partition", "2024-02"]
    done = run_command(command, 1800, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "for 2024-02: SUCCESS" in done.stdout
    assert "training_set             materialized" in done.stdout
