"""Month keys, file names and reading of monthly trip files (no Dagster, no network)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd

from taxi_assets.ml.schema import TripDataError, validate_trips


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


def previous_month(month: str) -> str:
    year, month_number = parse_month(month)
    return f"{year - 1}-12" if month_number == 1 else f"{year}-{month_number - 1:02d}"


def next_month(month: str) -> str:
    year, month_number = parse_month(month)
    return f"{year + 1}-01" if month_number == 12 else f"{year}-{month_number + 1:02d}"


def month_start(month: str) -> pd.Timestamp:
    """The first instant of the month: where the training set splits train from validation."""
    year, month_number = parse_month(month)
    return pd.Timestamp(year=year, month=month_number, day=1)


def format_template(template: str, month: str) -> str:
    """Fill ``{year}`` and ``{month}`` (an int, so ``{month:02d}`` works) in a file template."""
    year, month_number = parse_month(month)
    return template.format(year=year, month=month_number)


def template_pattern(template: str):
    """A regex matching the names a file template produces, with groups ``year`` and ``month``."""
    import re

    parts = re.split(r"(\{year\}|\{month(?::02d)?\})", template)
    pattern = "".join(
        "(?P<year>[0-9]{4})" if part == "{year}" else "(?P<month>[0-9]{1,2})" if part.startswith("{month") else re.escape(part)
        for part in parts
    )
    return re.compile(pattern)


# The two layouts a local folder may use: the course's mirror and the TLC's own file names.
LOCAL_LAYOUTS = ("{year}/{month:02d}.parquet", "green_tripdata_{year}-{month:02d}.parquet")


def _use_system_allocator(pa) -> None:
    """Arrow's default mimalloc pool keeps ~30 MB of arenas after a one-off 10 MB read, which is
    most of the headroom of a data-preparation step. The system allocator returns it. A user's
    own ARROW_DEFAULT_MEMORY_POOL setting wins."""
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL") and pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())


def read_trip_file(data: bytes | Path, source: str) -> pd.DataFrame:
    """Read one Parquet trip file and validate the columns the pipeline needs.

    ``source`` names the file or URL in errors. A corrupt or truncated file, a missing column, a
    wrong dtype or an empty file raises :class:`TripDataError`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    _use_system_allocator(pa)
    try:
        handle = io.BytesIO(data) if isinstance(data, bytes) else data
        table = pq.read_table(handle)
    except (pa.ArrowException, OSError) as error:
        raise TripDataError(
            f"{source} is not a readable Parquet file (corrupt or truncated?): {error}"
        ) from error
    return validate_trips(table.to_pandas(), source)
