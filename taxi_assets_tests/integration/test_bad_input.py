"""Bad input fails its partition with a message naming the partition, file and problem, and
never replaces the last good materialization."""

import dagster as dg
import pandas as pd
import pytest

from taxi_assets.lib.model_store import read_value
from taxi_assets.lib.sources import LocalTripSource
from taxi_assets_tests.helpers import failure_messages, run_months

MONTH = "2024-02"


def corrupt(path):
    path.write_bytes(b"this is not parquet at all" * 100)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def drop_column(path):
    pd.read_parquet(path).drop(columns=["DOLocationID"]).to_parquet(path)


def wrong_dtype(path):
    frame = pd.read_parquet(path)
    frame["lpep_dropoff_datetime"] = frame["lpep_dropoff_datetime"].astype(str)
    frame.to_parquet(path)


def empty_month(path):
    pd.read_parquet(path).iloc[:0].to_parquet(path)


def remove(path):
    path.unlink()


CASES = {
    "corrupt": (corrupt, ["02.parquet", "not a readable Parquet file"]),
    "truncated": (truncate, ["02.parquet", "not a readable Parquet file"]),
    "missing column": (drop_column, ["02.parquet", "missing required column(s) DOLocationID"]),
    "wrong dtype": (wrong_dtype, ["02.parquet", "column lpep_dropoff_datetime has dtype object, expected a datetime"]),
    "empty month": (empty_month, ["02.parquet", "no rows (empty month)"]),
    "month not in source": (remove, ["no trip file for 2024-02", "green_tripdata_2024-02.parquet"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_file_fails_partition_and_keeps_last_good_value(instance, data_copy, case):
    breaker, expected = CASES[case]
    source = LocalTripSource(directory=str(data_copy))
    good = run_months(instance, ["2024-01", MONTH], ["raw_trips", "cleaned_trips"], trip_source=source)
    assert all(result.success for result in good)
    good_raw = read_value(instance, "raw_trips", MONTH)
    good_cleaned = read_value(instance, "cleaned_trips", MONTH)

    breaker(data_copy / "2024" / "02.parquet")
    [result] = run_months(instance, [MONTH], ["raw_trips", "cleaned_trips"], trip_source=source)

    assert not result.success
    message = failure_messages(result)
    assert f"raw_trips partition {MONTH}" in message
    for fragment in expected:
        assert fragment in message
    # No retries for errors that retrying cannot fix.
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    # The last good values still load, and the latest materialization is the good run's.
    pd.testing.assert_frame_equal(read_value(instance, "raw_trips", MONTH), good_raw)
    pd.testing.assert_frame_equal(read_value(instance, "cleaned_trips", MONTH), good_cleaned)
    for asset in ("raw_trips", "cleaned_trips"):
        [record] = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[MONTH]), limit=1
        ).records
        assert record.run_id == good[1].run_id
    # Other partitions are untouched.
    assert instance.get_materialized_partitions(dg.AssetKey("raw_trips")) == {"2024-01", MONTH}
