"""Trip sources: where the monthly trip files come from.

Trip sources share one interface, :class:`TripSource`: ``read("2024-02")`` returns the validated
month and the version of the bytes it read (``data_version`` gives the current file's version
without reading it, ``data_versions`` every month's, where the source can be listed), or raises

* :class:`~taxi_assets.ml.schema.TripDataError` (and its :class:`MonthNotAvailableError`) for
  problems that retrying will not fix: bad file, missing month;
* :class:`TransientSourceError` for those it may fix (HTTP 5xx/429, timeouts, connection resets),
  which the assets' ``RetryPolicy`` retries with backoff.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from taxi_assets.ml.schema import DEFAULT_TRIP_TYPE, TripType
from taxi_assets.ml.trip_files import (
    LOCAL_LAYOUTS,
    TLC_FILE_TEMPLATE,
    MonthNotAvailableError,
    content_version,
    etag_version,
    file_content_version,
    format_template,
    http_version,
    parse_month,
    read_trip_file,
    template_pattern,
)

if TYPE_CHECKING:
    import pandas as pd

TLC_BASE_URL = "https://d37ci6vzurychx.cloudfront.net/trip-data"


class TransientSourceError(RuntimeError):
    """A failure worth retrying (the server or network, not the data)."""


@dataclass(frozen=True)
class TripFile:
    """A month's validated trips and the version of the bytes they were read from."""

    trips: pd.DataFrame
    version: str


class TripSource(dg.ConfigurableResource):
    """Where the monthly trip files come from, and which kind of trips they hold."""

    trip_type: TripType = Field(
        default=DEFAULT_TRIP_TYPE,
        description="The TLC's trip type: green (lpep_* columns, green_tripdata_* files) or yellow "
        "(tpep_* columns, yellow_tripdata_* files). Environment: TAXI_TRIP_TYPE.",
    )

    def describe(self, month: str) -> str:
        """Where the file for ``month`` is (for messages and metadata)."""
        raise NotImplementedError

    def read(self, month: str) -> TripFile:
        """The validated trips of ``month`` (``YYYY-MM``) and the version of what was read."""
        raise NotImplementedError

    def read_month(self, month: str) -> pd.DataFrame:
        """The validated trips of ``month``."""
        return self.read(month).trips

    def data_version(self, month: str) -> str | None:
        """The version of ``month``'s file as it is now (see ``taxi_assets.ml.trip_files``);
        None if the source has no file for it."""
        raise NotImplementedError

    def data_versions(self) -> dict[str, str] | None:
        """``{month: version}`` for every month the source has, or None when the source cannot be
        listed cheaply (then the hourly retraining schedule asks for the newest month)."""
        return None


# Content hashes of local files by (device, inode, size, modification time): a sensor that asks
# every few seconds rehashes only files that were written (or touched) since it last asked.
_HASHES: dict[tuple[str, int, int, int, int], str] = {}


def _local_version(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_content_version(path)
    return _HASHES[key]


class LocalTripSource(TripSource):
    """A local folder with YYYY/MM.parquet or <trip type>_tripdata_YYYY-MM.parquet files."""

    directory: str = Field(
        description="Folder holding the monthly files, in either the course's layout "
        "(2024/02.parquet) or the TLC's (green_tripdata_2024-02.parquet, yellow_tripdata_...)."
    )

    def _candidates(self, month: str) -> list[Path]:
        return [Path(self.directory) / format_template(layout, month, self.trip_type) for layout in LOCAL_LAYOUTS]

    def describe(self, month: str) -> str:
        existing = [path for path in self._candidates(month) if path.is_file()]
        return str(existing[0] if existing else self._candidates(month)[0])

    def read(self, month: str) -> TripFile:
        for path in self._candidates(month):
            if path.is_file():
                data = path.read_bytes()
                return TripFile(read_trip_file(data, str(path), self.trip_type), content_version(data))
        if not Path(self.directory).is_dir():
            raise MonthNotAvailableError(f"trip folder {self.directory} does not exist")
        looked_for = " or ".join(format_template(layout, month, self.trip_type) for layout in LOCAL_LAYOUTS)
        raise MonthNotAvailableError(f"no trip file for {month} in {self.directory} (looked for {looked_for})")

    def data_version(self, month: str) -> str | None:
        for path in self._candidates(month):
            if path.is_file():
                return _local_version(path)
        return None

    def data_versions(self) -> dict[str, str]:
        root = Path(self.directory)
        months = set()
        for path in root.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9].parquet"):
            months.add(f"{path.parent.name}-{path.stem}")
        prefix = f"{self.trip_type}_tripdata_"
        for path in root.glob(f"{prefix}[0-9][0-9][0-9][0-9]-[0-9][0-9].parquet"):
            months.add(path.stem.removeprefix(prefix))
        found = {month: self.data_version(month) for month in sorted(months) if _is_month(month)}
        return {month: value for month, value in found.items() if value}


class HttpTripSource(TripSource):
    """Files downloaded over HTTP(S); by default the TLC's public trip-record site."""

    base_url: str = Field(default=TLC_BASE_URL, description="URL of the folder with the files.")
    file_template: str = Field(
        default=TLC_FILE_TEMPLATE,
        description="File path under base_url; {trip_type}, {year} and {month} (an int) are filled "
        "in, e.g. '{year}/{month:02d}.parquet' for the course's mirror.",
    )
    timeout_seconds: float = Field(default=60.0, description="Timeout of one download.")

    def describe(self, month: str) -> str:
        return f"{self.base_url.rstrip('/')}/{format_template(self.file_template, month, self.trip_type)}"

    def read(self, month: str) -> TripFile:
        url = self.describe(month)
        request = urllib.request.Request(url, headers={"User-Agent": "taxi-assets"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                data = response.read()
                headers = response.headers
        except urllib.error.HTTPError as error:
            # The TLC's CDN answers 403 for a file that does not exist, others 404.
            if error.code in (403, 404, 410):
                raise MonthNotAvailableError(f"no trip file for {month} at {url} (HTTP {error.code})") from error
            if error.code == 429 or error.code >= 500:
                raise TransientSourceError(f"HTTP {error.code} from {url}") from error
            raise MonthNotAvailableError(f"HTTP {error.code} from {url}") from error
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            raise TransientSourceError(f"could not download {url}: {error}") from error
        return TripFile(read_trip_file(data, url, self.trip_type), _header_version(headers))

    def data_version(self, month: str) -> str | None:
        url = self.describe(month)
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "taxi-assets"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                return _header_version(response.headers)
        except urllib.error.HTTPError as error:
            if error.code in (403, 404, 410):
                return None
            if error.code in (405, 501):
                return http_version(None, None, None)  # no HEAD: the file exists, its version is unknown
            raise TransientSourceError(f"HTTP {error.code} from {url}") from error
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            raise TransientSourceError(f"could not reach {url}: {error}") from error


def _header_version(headers) -> str:
    return http_version(headers.get("ETag"), headers.get("Last-Modified"), headers.get("Content-Length"))


class S3TripSource(TripSource):
    """Files in an S3 bucket (or any S3-compatible store), read through dagster-aws."""

    bucket: str = Field(description="Bucket name.")
    prefix: str = Field(
        default="taxi/{trip_type}", description="Key prefix of the monthly files; {trip_type} is filled in."
    )
    key_template: str = Field(
        default="{year}/{month:02d}.parquet",
        description="Key under the prefix; {year} and {month} (an int) are filled in.",
    )
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, moto); None for AWS.")
    region_name: str | None = Field(default=None, description="AWS region.")

    def _key(self, month: str) -> str:
        parts = (self._prefix(), format_template(self.key_template, month, self.trip_type))
        return "/".join(part for part in parts if part)

    def _prefix(self) -> str:
        return self.prefix.replace("{trip_type}", self.trip_type).strip("/")

    def describe(self, month: str) -> str:
        return f"s3://{self.bucket}/{self._key(month)}"

    def read(self, month: str) -> TripFile:
        # dagster-aws (and boto3) load only in the step that reads from S3.
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._client()
        url = self.describe(month)
        try:
            response = client.get_object(Bucket=self.bucket, Key=self._key(month))
            data = response["Body"].read()
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NoSuchBucket"):
                raise MonthNotAvailableError(f"no trip file for {month} at {url} ({code})") from error
            raise TransientSourceError(f"could not read {url}: {error}") from error
        except BotoCoreError as error:
            raise TransientSourceError(f"could not read {url}: {error}") from error
        return TripFile(read_trip_file(data, url, self.trip_type), etag_version(response["ETag"]))

    def _client(self):
        from dagster_aws.s3 import S3Resource

        return S3Resource(endpoint_url=self.endpoint_url, region_name=self.region_name).get_client()

    def data_version(self, month: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            head = self._client().head_object(Bucket=self.bucket, Key=self._key(month))
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code", "")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise TransientSourceError(f"could not reach {self.describe(month)}: {error}") from error
        return etag_version(head["ETag"])

    def data_versions(self) -> dict[str, str]:
        prefix = self._prefix()
        pattern = template_pattern(f"{prefix}/{self.key_template}" if prefix else self.key_template, self.trip_type)
        found = {}
        for page in self._client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                match = pattern.fullmatch(item["Key"])
                if match:
                    month = f"{match['year']}-{int(match['month']):02d}"
                    if _is_month(month):
                        found[month] = etag_version(item["ETag"])
        return dict(sorted(found.items()))


def _is_month(text: str) -> bool:
    try:
        parse_month(text)
    except ValueError:
        return False
    return True


def trip_source_from_env(resolved: bool = False) -> TripSource:
    """The source the environment selects.

    ``TAXI_DATA_DIR`` -> that local folder; else ``TAXI_DATA_S3_BUCKET`` (with optional
    ``TAXI_DATA_S3_PREFIX``, ``AWS_ENDPOINT_URL``) -> S3; else the TLC's public download.
    ``TAXI_TRIP_TYPE`` (green, the default, or yellow) says which TLC files they are. Values stay
    ``EnvVar``s, so the UI shows where they come from; ``resolved`` gives their values instead,
    for clients that use the source outside Dagster (``taxi-assets rebuild``).
    """
    from taxi_assets.lib.settings import is_production, trip_type

    def env(name: str):
        return os.environ[name] if resolved else dg.EnvVar(name)

    kind = trip_type()
    if os.getenv("TAXI_DATA_DIR") and not is_production():
        return LocalTripSource(directory=env("TAXI_DATA_DIR"), trip_type=kind)
    if os.getenv("TAXI_DATA_S3_BUCKET"):
        return S3TripSource(
            bucket=env("TAXI_DATA_S3_BUCKET"),
            prefix=os.getenv("TAXI_DATA_S3_PREFIX", "taxi/{trip_type}"),
            endpoint_url=os.getenv("AWS_ENDPOINT_URL"),
            trip_type=kind,
        )
    return HttpTripSource(trip_type=kind)
