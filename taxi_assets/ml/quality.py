"""Data-quality figures: column profiles, fixed-bin histograms and drift between two months.

Histograms use fixed bin edges so two months' counts can be compared without re-reading either
month: ``cleaned_trips`` records its counts as metadata and the drift checks compare those.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

# Bin edges for the drift histograms. Duration is already bounded to [1, 60] minutes by cleaning.
# Distances: quarter-mile bins up to 10 miles, then wider, and one bin for everything beyond 50.
DURATION_EDGES = [float(edge) for edge in range(1, 61)]
DISTANCE_EDGES = [e / 4 for e in range(0, 41)] + [12.5, 15.0, 20.0, 30.0, 50.0, math.inf]
DRIFT_EDGES = {"duration": DURATION_EDGES, "trip_distance": DISTANCE_EDGES}

# Population stability index bands (the usual credit-risk convention): below 0.1 stable,
# 0.1-0.25 a moderate shift worth a look (WARN), above 0.25 a major shift (ERROR).
PSI_WARN = 0.10
PSI_ERROR = 0.25
# Share of raw rows that cleaning drops, compared with the previous month, in percentage points.
DROPPED_SHARE_WARN_POINTS = 2.0
DROPPED_SHARE_ERROR_POINTS = 5.0


def histogram(values: pd.Series, edges: Sequence[float]) -> list[int]:
    """Counts per bin; values below the first edge go to the first bin, above the last to the last."""
    finite = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    bins = len(edges) - 1
    index = np.clip(np.searchsorted(np.asarray(edges, dtype=float), finite, side="right") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    return [int(count) for count in counts]


def psi(reference: Sequence[int], current: Sequence[int], floor: float = 1e-4) -> float:
    """Population stability index between two histograms over the same bins.

    Empty bins get ``floor`` of probability so one new bin cannot make the index infinite.
    """
    if len(reference) != len(current):
        raise ValueError(f"histograms have {len(reference)} and {len(current)} bins")
    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    if ref.sum() == 0 or cur.sum() == 0:
        raise ValueError("cannot compare an empty histogram")
    p = np.maximum(ref / ref.sum(), floor)
    q = np.maximum(cur / cur.sum(), floor)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_statistic(reference: Sequence[int], current: Sequence[int]) -> float:
    """Largest gap between the two binned cumulative distributions (a binned KS statistic)."""
    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    if ref.sum() == 0 or cur.sum() == 0:
        raise ValueError("cannot compare an empty histogram")
    return float(np.max(np.abs(np.cumsum(ref) / ref.sum() - np.cumsum(cur) / cur.sum())))


def severity(value: float, warn: float, error: float) -> str:
    """ "ok", "warn" or "error" for a value against two thresholds."""
    if value > error:
        return "error"
    if value > warn:
        return "warn"
    return "ok"


def profile(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """count, nulls, unique, min, max, mean per column (datetimes as ISO text, mean of numbers only)."""
    rows = []
    for column in columns:
        values = frame[column] if column in frame else pd.Series(dtype=float)
        present = values.dropna()
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        datetime = pd.api.types.is_datetime64_any_dtype(values)

        def show(value, datetime=datetime):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return ""
            if datetime:
                return pd.Timestamp(value).isoformat(sep=" ")
            return f"{value:,.3f}" if isinstance(value, float | np.floating) else str(value)

        rows.append(
            {
                "column": column,
                "count": int(len(values)),
                "nulls": int(values.isna().sum()),
                "unique": int(present.nunique()),
                "min": show(present.min()) if len(present) and (numeric or datetime) else "",
                "max": show(present.max()) if len(present) and (numeric or datetime) else "",
                "mean": show(float(present.mean())) if len(present) and numeric else "",
            }
        )
    return pd.DataFrame(rows, columns=["column", "count", "nulls", "unique", "min", "max", "mean"])
