"""The columns a monthly trip file must have, and checks that they are usable.

The TLC publishes green and yellow files whose columns differ by name (``lpep_pickup_datetime``
against ``tpep_pickup_datetime``) and by a few extra columns. Validation maps the trip type's
names onto one schema (``pickup_datetime``, ``dropoff_datetime``), so everything after it reads
the same columns whatever the file was.
"""

from __future__ import annotations

from typing import Literal, get_args

import pandas as pd

TripType = Literal["green", "yellow"]
TRIP_TYPES: tuple[str, ...] = get_args(TripType)
DEFAULT_TRIP_TYPE: TripType = "green"
# The TLC's column prefix per trip type (LPEP: livery passenger enhancement programme, the green
# cabs; TPEP: taxicab passenger enhancement programme, the yellow ones).
_DATETIME_PREFIX = {"green": "lpep", "yellow": "tpep"}

PICKUP = "pickup_datetime"
DROPOFF = "dropoff_datetime"
PU_LOCATION = "PULocationID"
DO_LOCATION = "DOLocationID"
TRIP_DISTANCE = "trip_distance"

# Column -> the kind of dtype it must have ("datetime", "integer", "numeric").
REQUIRED_COLUMNS: dict[str, str] = {
    PICKUP: "datetime",
    DROPOFF: "datetime",
    PU_LOCATION: "integer",
    DO_LOCATION: "integer",
    TRIP_DISTANCE: "numeric",
}


class TripDataError(ValueError):
    """A trip file or frame that cannot be used; the message names what and where."""


def file_columns(trip_type: str) -> dict[str, str]:
    """The trip type's names of the datetime columns -> the schema's names."""
    if trip_type not in _DATETIME_PREFIX:
        raise ValueError(f"trip type must be one of {', '.join(TRIP_TYPES)}, got {trip_type!r}")
    prefix = _DATETIME_PREFIX[trip_type]
    return {f"{prefix}_{PICKUP}": PICKUP, f"{prefix}_{DROPOFF}": DROPOFF}


def in_schema(trips: pd.DataFrame) -> pd.DataFrame:
    """A frame stored before the one schema (with the file's ``lpep_``/``tpep_`` datetime names,
    as cleaned_trips values written by earlier versions are) in today's names."""
    legacy = {old: new for kind in TRIP_TYPES for old, new in file_columns(kind).items() if old in trips.columns}
    return trips.rename(columns=legacy, copy=False) if legacy else trips


def validate_trips(trips: pd.DataFrame, source: str, trip_type: str = DEFAULT_TRIP_TYPE) -> pd.DataFrame:
    """Check the columns the pipeline needs and return the frame in the one schema.

    ``source`` names the file (or URL) in error messages; ``trip_type`` says which TLC columns to
    expect (green: ``lpep_*``, yellow: ``tpep_*``), which become ``pickup_datetime`` and
    ``dropoff_datetime``. Location ids stored as floats with only whole values (as some older TLC
    files have) are cast to integers; anything else that is not usable raises
    :class:`TripDataError`.
    """
    renames = file_columns(trip_type)
    expected = [*renames, *[column for column in REQUIRED_COLUMNS if column not in renames.values()]]
    missing = [column for column in expected if column not in trips.columns]
    if missing:
        hint = ""
        for other in TRIP_TYPES:
            if other != trip_type and all(column in trips.columns for column in file_columns(other)):
                hint = f"; this is a {other} file, but the trip type is {trip_type} (set TAXI_TRIP_TYPE={other})"
        raise TripDataError(
            f"{source}: missing required column(s) {', '.join(missing)} for {trip_type} trips"
            f"{hint} (found: {', '.join(map(str, trips.columns))})"
        )
    if len(trips) == 0:
        raise TripDataError(f"{source}: the file has no rows (empty month)")

    # Errors name the file's own columns; the checks are the schema's.
    named_in_file = {schema_name: file_name for file_name, schema_name in renames.items()}
    normalized = {}
    for schema_column, kind in REQUIRED_COLUMNS.items():
        column = named_in_file.get(schema_column, schema_column)
        series = trips[column]
        dtype = series.dtype
        if kind == "datetime":
            if not pd.api.types.is_datetime64_any_dtype(dtype):
                raise TripDataError(f"{source}: column {column} has dtype {dtype}, expected a datetime")
        elif kind == "integer":
            if pd.api.types.is_integer_dtype(dtype):
                continue
            whole_floats = pd.api.types.is_float_dtype(dtype) and series.notna().all() and bool((series % 1 == 0).all())
            if not whole_floats:
                raise TripDataError(f"{source}: column {column} has dtype {dtype}, expected integer location ids")
            normalized[column] = series.astype("int64")
        elif kind == "numeric" and (not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
            raise TripDataError(f"{source}: column {column} has dtype {dtype}, expected numbers")
    if normalized:
        trips = trips.assign(**normalized)
    # A shallow rename: the columns' data is shared, not copied.
    return trips.rename(columns=renames, copy=False)
