"""File names of monthly trip files, their versions, and reading them (no Dagster, no network).
Month arithmetic lives with the partitions, in ``taxi_assets.lib.months``.

A file's *version* identifies its bytes, so a file that is only copied or touched keeps its
version and a changed byte gives a new one: a content hash where reading the file is cheap (a
local folder), the ETag where the store keeps one (S3, HTTP servers), and what an HTTP server
offers otherwise. Dagster records it as the data version of ``trip_files``.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pandas as pd

from taxi_assets.ml.schema import DEFAULT_TRIP_TYPE, TripDataError, validate_trips


class MonthNotAvailableError(TripDataError):
    """The source has no file for that month (yet)."""


def parse_month(month: str) -> tuple[int, int]:
    """``"2024-02"`` -> ``(2024, 2)``; raises ``ValueError`` for anything else."""
    try:
        year_text, month_text = month.split("-")
        year, month_number = int(year_text), int(month_text)
    except ValueError:
        raise ValueError(f"month must look like YYYY-MM, got {month!r}") from None
    if len(year_text) != 4 or not 1 <= month_number <= 12:
        raise ValueError(f"month must look like YYYY-MM, got {month!r}")
    return year, month_number


def format_template(template: str, month: str, trip_type: str = DEFAULT_TRIP_TYPE) -> str:
    """Fill ``{year}``, ``{month}`` (an int, so ``{month:02d}`` works) and ``{trip_type}``
    (``green``, ``yellow``) in a file template."""
    year, month_number = parse_month(month)
    return template.format(year=year, month=month_number, trip_type=trip_type)


def template_pattern(template: str, trip_type: str = DEFAULT_TRIP_TYPE):
    """A regex matching the names a file template produces, with groups ``year`` and ``month``."""
    import re

    parts = re.split(r"(\{year\}|\{month(?::02d)?\})", template.replace("{trip_type}", trip_type))
    pattern = "".join(
        "(?P<year>[0-9]{4})"
        if part == "{year}"
        else "(?P<month>[0-9]{1,2})"
        if part.startswith("{month")
        else re.escape(part)
        for part in parts
    )
    return re.compile(pattern)


# The two layouts a local folder may use: the course's mirror and the TLC's own file names.
LOCAL_LAYOUTS = ("{year}/{month:02d}.parquet", "{trip_type}_tripdata_{year}-{month:02d}.parquet")
# The TLC's own name of a month's file (its download site and its bucket).
TLC_FILE_TEMPLATE = "{trip_type}_tripdata_{year}-{month:02d}.parquet"


def read_trip_file(data: bytes | Path, source: str, trip_type: str = DEFAULT_TRIP_TYPE) -> pd.DataFrame:
    """Read one Parquet trip file of ``trip_type`` and validate the columns the pipeline needs.

    ``source`` names the file or URL in errors. A corrupt or truncated file, a missing column, a
    wrong dtype or an empty file raises :class:`TripDataError`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = io.BytesIO(data) if isinstance(data, bytes) else data
        # ParquetFile, not read_table: read_table goes through pyarrow.dataset, whose import
        # alone costs more than reading a month.
        table = pq.ParquetFile(handle).read()
    except (pa.ArrowException, OSError) as error:
        raise TripDataError(f"{source} is not a readable Parquet file (corrupt or truncated?): {error}") from error
    frame = table.to_pandas()
    del table
    # Arrow's pool keeps its arenas after a one-off read (~30 MB for a 10 MB file, most of a
    # data-preparation step's headroom); ask it to hand back what it no longer uses.
    pa.default_memory_pool().release_unused()
    return validate_trips(frame, source, trip_type)


HASH_CHUNK_BYTES = 1 << 20


def content_version(data: bytes) -> str:
    """The version of a file's bytes: their SHA-256."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_content_version(path: Path) -> str:
    """:func:`content_version` of a file, read in chunks (a yellow month is hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def etag_version(etag: str) -> str:
    """The version an object store's ETag gives. For S3, a single-part upload's ETag is the MD5 of
    its bytes; a multipart one's (``...-N``) is the MD5 of its parts' MD5s, so the same bytes
    uploaded again with other part sizes get a new one: at worst a retraining that was not needed,
    never a change missed."""
    return "etag:" + etag.strip().strip('"')


def http_version(etag: str | None, last_modified: str | None, length: str | None) -> str:
    """The version an HTTP server offers: its ETag, else Last-Modified and Content-Length, else the
    length alone (a server that offers none of them: the month is trained once, and a change is
    seen only if the file's length changes)."""
    if etag:
        return etag_version(etag)
    return f"http:{last_modified or ''}|{length or ''}"
