"""Trip sources against real servers on 127.0.0.1 and local folders in both layouts."""

import hashlib
import shutil

import boto3
import dagster as dg
import pandas as pd
import pytest

from taxi_assets.lib.model_store import read_value
from taxi_assets.lib.sources import (
    HttpTripSource,
    LocalTripSource,
    S3TripSource,
    TransientSourceError,
    trip_source_from_env,
)
from taxi_assets.ml.schema import validate_trips
from taxi_assets.ml.trip_files import MonthNotAvailableError
from taxi_assets_tests.helpers import DATA_DIR, failure_messages, run_months
from taxi_assets_tests.servers import FileServer, moto_s3_server

COURSE_LAYOUT = "{year}/{month:02d}.parquet"


def reference_month():
    """The real file as validation hands it on: the one schema's datetime names."""
    return validate_trips(pd.read_parquet(DATA_DIR / "2024" / "02.parquet"), "02.parquet")


def test_local_source_reads_both_layouts(tmp_path):
    shutil.copy(DATA_DIR / "2024" / "02.parquet", tmp_path / "green_tripdata_2024-02.parquet")
    tlc = LocalTripSource(directory=str(tmp_path))
    assert tlc.describe("2024-02").endswith("green_tripdata_2024-02.parquet")
    pd.testing.assert_frame_equal(tlc.read_month("2024-02"), reference_month())
    course = LocalTripSource(directory=str(DATA_DIR))
    pd.testing.assert_frame_equal(course.read_month("2024-02"), reference_month())
    with pytest.raises(MonthNotAvailableError, match="no trip file for 2024-03"):
        tlc.read_month("2024-03")
    with pytest.raises(MonthNotAvailableError, match="does not exist"):
        LocalTripSource(directory=str(tmp_path / "nope")).read_month("2024-02")


def test_http_source_retries_503_with_backoff_then_succeeds(instance):
    with FileServer(DATA_DIR) as server:
        server.fail_first["2024/02.parquet"] = 3
        # A timeout no busy machine reaches: only the scripted 503s may cause retries here.
        source = HttpTripSource(base_url=server.url, file_template=COURSE_LAYOUT, timeout_seconds=300)
        [result] = run_months(instance, ["2024-02"], ["raw_trips"], trip_source=source)

    assert result.success, failure_messages(result)
    # The observation's HEAD met a 503 (the run went on without it); two downloads met a 503;
    # the third downloaded the file.
    assert server.requests == {"HEAD 2024/02.parquet": 1, "GET 2024/02.parquet": 3}
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 2
    logged = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(message.startswith("trip_files partition 2024-02: not observed (HTTP 503") for message in logged)
    pd.testing.assert_frame_equal(read_value(instance, "raw_trips", "2024-02"), reference_month())
    [record] = instance.fetch_materializations(dg.AssetKey("raw_trips"), limit=1).records
    assert record.asset_materialization.metadata["source"].value == f"{server.url}/2024/02.parquet"


def test_http_source_missing_month_fails_without_retry(instance):
    with FileServer(DATA_DIR) as server:
        source = HttpTripSource(base_url=server.url, file_template=COURSE_LAYOUT)
        [result] = run_months(instance, ["2024-03"], ["raw_trips"], trip_source=source)
    assert not result.success
    message = failure_messages(result)
    assert "raw_trips partition 2024-03: no trip file for 2024-03" in message
    assert f"{server.url}/2024/03.parquet (HTTP 404)" in message
    # The observation asked once (404: no version) and the download once; no retries.
    assert server.requests == {"HEAD 2024/03.parquet": 1, "GET 2024/03.parquet": 1}
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]


def test_http_source_classifies_errors():
    with FileServer(DATA_DIR) as server:
        server.fail_first["2024/01.parquet"] = 1
        source = HttpTripSource(base_url=server.url, file_template=COURSE_LAYOUT)
        with pytest.raises(TransientSourceError, match="HTTP 503"):
            source.read_month("2024-01")
        assert len(source.read_month("2024-01")) == 56_551
        # A file's version over HTTP is what the server offers (its ETag here); a missing month has none,
        # and reading the file gives the same version as asking for it.
        etag = (DATA_DIR / "2024" / "01.parquet").stat().st_mtime_ns
        assert source.data_version("2024-01") == f"etag:{etag}" == source.read("2024-01").version
        assert source.data_version("2024-03") is None
        assert source.data_versions() is None  # HTTP cannot be listed: the schedule covers it
    # A port we hold bound without listening: connections are refused, and no other process can
    # start listening there meanwhile. A refused connection is transient too.
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}"
        with pytest.raises(TransientSourceError, match="could not download"):
            HttpTripSource(base_url=url, file_template=COURSE_LAYOUT, timeout_seconds=60).read_month("2024-01")


def test_default_http_source_is_the_tlc_download():
    assert HttpTripSource().describe("2024-02") == (
        "https://d37ci6vzurychx.cloudfront.net/trip-data/green_tripdata_2024-02.parquet"
    )


def test_s3_source_through_a_real_s3_endpoint(instance, monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with moto_s3_server() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="trips")
        s3.upload_file(str(DATA_DIR / "2024" / "02.parquet"), "trips", "taxi/green/2024/02.parquet")
        source = S3TripSource(bucket="trips", endpoint_url=endpoint)
        [result] = run_months(instance, ["2024-02"], ["raw_trips"], trip_source=source)
        assert result.success, failure_messages(result)
        with pytest.raises(
            MonthNotAvailableError, match="no trip file for 2024-03 at s3://trips/taxi/green/2024/03.parquet"
        ):
            source.read_month("2024-03")
        # Listing for the sensor: months by key, versioned by their ETag (a single-part upload's is
        # the MD5 of its bytes); noise is ignored; reading gives the same version as listing.
        s3.put_object(Bucket="trips", Key="taxi/green/README.txt", Body=b"not a month")
        md5 = hashlib.md5((DATA_DIR / "2024" / "02.parquet").read_bytes()).hexdigest()
        listed = source.data_versions()
        assert listed == {"2024-02": f"etag:{md5}"}
        assert source.data_version("2024-02") == listed["2024-02"] == source.read("2024-02").version
        assert source.data_version("2024-03") is None
        # The same bytes uploaded again (a copy): the same version.
        s3.copy_object(
            Bucket="trips",
            Key="taxi/green/2024/02.parquet",
            CopySource="trips/taxi/green/2024/02.parquet",
            MetadataDirective="REPLACE",
        )
        assert source.data_version("2024-02") == listed["2024-02"]
    pd.testing.assert_frame_equal(read_value(instance, "raw_trips", "2024-02"), reference_month())


def test_environment_selects_the_source(monkeypatch):
    monkeypatch.delenv("TAXI_DATA_DIR", raising=False)
    monkeypatch.delenv("TAXI_DATA_S3_BUCKET", raising=False)
    assert isinstance(trip_source_from_env(), HttpTripSource)
    monkeypatch.setenv("TAXI_DATA_S3_BUCKET", "bucket")
    assert isinstance(trip_source_from_env(), S3TripSource)
    monkeypatch.setenv("TAXI_DATA_DIR", str(DATA_DIR))
    source = trip_source_from_env()
    assert isinstance(source, LocalTripSource)
    # The folder stays an EnvVar (shown as such in the UI) and resolves at run time.
    with dg.build_resources({"trip_source": source}) as resources:
        assert len(resources.trip_source.read_month("2024-01")) == 56_551


def test_local_versions_follow_the_bytes_not_the_file(tmp_path):
    """A content hash: touching or copying a file keeps its version, one changed byte gives a new
    one, and reading a month reports the version of the bytes it read."""
    folder = tmp_path / "trips"
    (folder / "2024").mkdir(parents=True)
    february = folder / "2024" / "02.parquet"
    shutil.copy(DATA_DIR / "2024" / "02.parquet", february)
    source = LocalTripSource(directory=str(folder))
    original = source.data_version("2024-02")
    assert original == "sha256:" + hashlib.sha256(february.read_bytes()).hexdigest() == source.read("2024-02").version
    stat = february.stat()
    import os

    os.utime(february, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000_000))  # touched
    assert source.data_version("2024-02") == original
    copy = tmp_path / "elsewhere" / "green_tripdata_2024-02.parquet"  # copied, in the TLC's names
    copy.parent.mkdir()
    shutil.copy(february, copy)
    assert LocalTripSource(directory=str(copy.parent)).data_versions() == {"2024-02": original}
    data = bytearray(february.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte
    february.write_bytes(bytes(data))
    changed = source.data_version("2024-02")
    assert changed != original and changed.startswith("sha256:")
    assert source.data_versions() == {"2024-02": changed}
