"""The one schema of a trip to predict: what every surface that takes trips accepts.

The server's ``/predict`` and ``/invocations``, ``load_model().predict``, the predict job and the
registered MLflow model all validate with :class:`TripRecord`, so one input gets the same answer,
or the same error, everywhere.

Rules: location ids are positive integers, given as numbers or as strings of digits (the
course's own request sends ``"236"``); a whole float (``236.0``, what a pandas column with gaps
holds) counts as an integer, booleans and fractions do not. The distance is a finite number of
miles from 0 to 500 (the TLC's longest plausible trips are far shorter). No other fields.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

FIELDS = ("PULocationID", "DOLocationID", "trip_distance")
MIN_LOCATION_ID = 1
MAX_TRIP_DISTANCE_MILES = 500.0
_DIGITS = re.compile(r"[0-9]{1,18}")


def _scalar(value: Any) -> Any:
    """NumPy scalars (from DataFrames) as Python values."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes, list, dict)):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def _location_id(value: Any) -> Any:
    value = _scalar(value)
    if isinstance(value, bool):
        raise ValueError("must be a location id (a positive integer), not a boolean")
    if isinstance(value, str):
        text = value.strip()
        if not _DIGITS.fullmatch(text):
            raise ValueError(f"must be a location id (a positive integer or a string of digits), got {value[:40]!r}")
        return int(text)
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"must be a location id (a positive integer), got {value!r}")
        return int(value)
    if not isinstance(value, int):
        raise ValueError(f"must be a location id (a positive integer), got a {type(value).__name__}")
    if value < MIN_LOCATION_ID:
        raise ValueError(f"must be a location id (a positive integer), got {value}")
    return value


def _miles(value: Any) -> Any:
    value = _scalar(value)
    if isinstance(value, bool):
        raise ValueError("must be a number of miles, not a boolean")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"must be a number of miles, got {value[:40]!r}") from None
    if not isinstance(value, (int, float)):
        raise ValueError(f"must be a number of miles, got a {type(value).__name__}")
    try:
        miles = float(value)
    except OverflowError:  # an integer with hundreds of digits (JSON allows them)
        raise ValueError(f"must be between 0 and {MAX_TRIP_DISTANCE_MILES:g} miles, got a huge integer") from None
    if not (math.isfinite(miles) and 0 <= miles <= MAX_TRIP_DISTANCE_MILES):
        raise ValueError(f"must be between 0 and {MAX_TRIP_DISTANCE_MILES:g} miles, got {miles!r}")
    return miles


LocationId = Annotated[int, BeforeValidator(_location_id), Field(ge=MIN_LOCATION_ID)]
Miles = Annotated[float, BeforeValidator(_miles), Field(ge=0, le=MAX_TRIP_DISTANCE_MILES, allow_inf_nan=False)]


class TripRecord(BaseModel):
    """One trip: pickup and drop-off TLC zones and the distance in miles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    PULocationID: LocationId = Field(
        description="Pickup TLC zone id (a positive integer; digits in a string are fine)."
    )
    DOLocationID: LocationId = Field(
        description="Drop-off TLC zone id (a positive integer; digits in a string are fine)."
    )
    trip_distance: Miles = Field(description=f"Trip distance in miles, 0 to {MAX_TRIP_DISTANCE_MILES:g}.")

    @property
    def pu_do(self) -> str:
        """The model's categorical feature, ``"<PU>_<DO>"``."""
        return f"{self.PULocationID}_{self.DOLocationID}"


class TripError(ValueError):
    """Trips that do not match :class:`TripRecord`; the message names the record and field."""


_RECORDS = TypeAdapter(list[TripRecord])


def _where(location: Sequence[str | int], prefix: str) -> str:
    text = prefix
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def describe(error: ValidationError, prefix: str = "", limit: int = 3) -> str:
    """A ValidationError as ``where: what`` lines (never echoing the input back)."""
    problems = []
    for item in error.errors(include_url=False, include_input=False)[:limit]:
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "missing":
            message = "missing field"
        elif item["type"] in ("model_type", "dict_type"):
            message = "must be an object with " + ", ".join(FIELDS)
        problems.append(f"{_where(item['loc'], prefix)}: {message}")
    more = error.error_count() - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def validate_records(records: Iterable[Any], prefix: str = "record") -> list[TripRecord]:
    """Trips from mappings (or TripRecords); raises :class:`TripError` naming the problem."""
    items = list(records)
    try:
        return _RECORDS.validate_python(items)
    except ValidationError as error:
        raise TripError(describe(error, prefix)) from None


def records_from_columns(columns: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """``{"PULocationID": [...], ...}`` (equal-length columns) as a list of records."""
    lengths = {len(values) for values in columns.values()}
    if len(lengths) > 1:
        raise TripError(f"columns have different lengths: {sorted(lengths)}")
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*(columns[name] for name in names), strict=True)]


def _plain_location_id(value: Any) -> int | None:
    if type(value) is int:
        return value if value >= MIN_LOCATION_ID else None
    if type(value) is str and _DIGITS.fullmatch(value):
        number = int(value)
        return number if number >= MIN_LOCATION_ID else None
    return None


def plain_pairs(records: list) -> tuple[list[str], list[float]] | None:
    """The ``"<PU>_<DO>"`` pairs and miles of records in the plain form, checked in one pass of
    plain Python (about five times faster than building TripRecords, which a one-trip request
    feels): dicts with exactly the three fields, ids as positive integers or strings of digits,
    miles as numbers from 0 to 500. None for anything else (a boolean, a float id, a missing or
    extra field, ...): :func:`validate_records` then accepts it or names the problem. Accepts
    nothing TripRecord refuses, with the same values (held by a property test)."""
    pairs: list[str] = []
    miles: list[float] = []
    for record in records:
        if type(record) is not dict or len(record) != 3:
            return None
        pickup = _plain_location_id(record.get("PULocationID"))
        dropoff = _plain_location_id(record.get("DOLocationID"))
        distance = record.get("trip_distance")
        if pickup is None or dropoff is None or not isinstance(distance, (int, float)) or isinstance(distance, bool):
            return None
        if not 0 <= distance <= MAX_TRIP_DISTANCE_MILES:  # also false for NaN
            return None
        pairs.append(f"{pickup}_{dropoff}")
        miles.append(float(distance))
    return pairs, miles
