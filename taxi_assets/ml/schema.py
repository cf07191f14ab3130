"""The columns a monthly trip file must have, and checks that they are usable."""

from __future__ import annotations

import pandas as pd

PICKUP = "lpep_pickup_datetime"
DROPOFF = "lpep_dropoff_datetime"
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


def validate_trips(trips: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check the columns the pipeline needs and return the frame with normalized dtypes.

    ``source`` names the file (or URL) in error messages. Location ids stored as floats with only
    whole values (as some older TLC files have) are cast to integers; anything else that is not
    usable raises :class:`TripDataError`.
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in trips.columns]
    if missing:
        raise TripDataError(
            f"{source}: missing required column(s) {', '.join(missing)} (found: {', '.join(map(str, trips.columns))})"
        )
    if len(trips) == 0:
        raise TripDataError(f"{source}: the file has no rows (empty month)")

    normalized = {}
    for column, kind in REQUIRED_COLUMNS.items():
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
    return trips
