"""Data-quality figures and charts, on small synthetic inputs."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from taxi_assets.lib import charts
from taxi_assets.ml import quality

PNG = b"\x89PNG\r\n\x1a\n"


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header, after checking it decodes as an image."""
    import matplotlib.image

    assert png.startswith(PNG)
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    return image.shape[1], image.shape[0]


# Plain functions ---------------------------------------------------------------------------------


def test_histogram_bins_and_overflow():
    counts = quality.histogram(
        pd.Series([0.0, 0.1, 0.25, 9.99, 10.0, 49.0, 50.0, 1e6, np.nan, -3]), quality.DISTANCE_EDGES
    )
    assert len(counts) == len(quality.DISTANCE_EDGES) - 1 and sum(counts) == 9  # the NaN is not counted
    assert counts[0] == 3  # -3 (clipped), 0.0 and 0.1
    assert counts[-1] == 2  # 50 and 1e6 land in [50, inf)
    duration = quality.histogram(pd.Series([1.0, 1.5, 59.99, 60.0]), quality.DURATION_EDGES)
    assert (duration[0], duration[-1], sum(duration)) == (2, 2, 4)  # 60 belongs to the last bin


def test_psi_and_ks():
    rng = np.random.default_rng(0)
    base = quality.histogram(pd.Series(rng.gamma(2, 5, 50_000)), quality.DURATION_EDGES)
    same = quality.histogram(pd.Series(rng.gamma(2, 5, 50_000)), quality.DURATION_EDGES)
    shifted = quality.histogram(pd.Series(rng.gamma(2, 5, 50_000) + 8), quality.DURATION_EDGES)
    assert quality.psi(base, base) == 0.0 and quality.ks_statistic(base, base) == 0.0
    assert quality.psi(base, same) < 0.01
    assert quality.psi(base, shifted) > quality.PSI_ERROR and quality.ks_statistic(base, shifted) > 0.3
    assert [quality.severity(v, 0.1, 0.25) for v in (0.05, 0.1, 0.2, 0.3)] == ["ok", "ok", "warn", "error"]
    with pytest.raises(ValueError, match="bins"):
        quality.psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="empty"):
        quality.psi([0, 0], [1, 2])


def test_profile_handles_datetimes_and_empty_frames():
    frame = pd.DataFrame(
        {
            "when": pd.to_datetime(["2024-02-01 10:00", None, "2024-02-03 12:30"]),
            "distance": [1.5, np.nan, 3.5],
            "zone": [1, 1, 2],
        }
    )
    table = quality.profile(frame, ["when", "distance", "zone", "absent"]).set_index("column")
    assert table.loc["when", ["count", "nulls", "unique", "min", "max", "mean"]].tolist() == [
        3,
        1,
        2,
        "2024-02-01 10:00:00",
        "2024-02-03 12:30:00",
        "",
    ]
    assert table.loc["distance", ["nulls", "min", "max", "mean"]].tolist() == [1, "1.500", "3.500", "2.500"]
    assert table.loc["absent", "count"] == 0
    empty = quality.profile(frame.iloc[:0], ["when", "distance"])
    assert empty["count"].tolist() == [0, 0] and empty["min"].tolist() == ["", ""]


@pytest.mark.parametrize(
    "make",
    [
        lambda empty: charts.pickups_per_day(
            pd.Series(
                pd.to_datetime(
                    [] if empty else ["2024-02-01 08:00", "2024-02-01 09:00", "2024-02-03 10:00", "2009-01-01 00:00"]
                )
            ),
            "pickups",
            pd.Timestamp("2024-02-01"),
            pd.Timestamp("2024-03-01"),
        ),
        lambda empty: charts.bars({} if empty else {"a": 1.0, "b": 2.0}, "bars", "x"),
        lambda empty: charts.histogram(pd.Series([] if empty else [1.0, 2.0, 3.0]), "hist", "x"),
        lambda empty: charts.predicted_vs_actual(
            np.array([] if empty else [1.0, 2.0]), np.array([] if empty else [1.5, 2.5]), "pva"
        ),
        lambda empty: charts.series_over_months(
            {} if empty else {"m": {"2024-01": 5.0, "2024-02": 5.2}}, "series", "rmse"
        ),
        lambda empty: charts.runs_per_day(
            pd.DataFrame(columns=["day", "job", "status"])
            if empty
            else pd.DataFrame(
                {
                    "day": pd.to_datetime(["2024-02-01", "2024-02-01"]),
                    "job": ["__ASSET_JOB", "retraining"],
                    "status": ["SUCCESS", "FAILURE"],
                }
            ),
            "runs",
            pd.Timestamp("2024-01-25"),
            pd.Timestamp("2024-02-05"),
        ),
        lambda empty: charts.pie({} if empty else {"xgboost": 2, "Lasso": 1}, "pie"),
    ],
    ids=["pickups", "bars", "histogram", "predicted_vs_actual", "series", "runs_per_day", "pie"],
)
@pytest.mark.parametrize("empty", [False, True], ids=["data", "empty"])
def test_charts_render_with_data_and_when_empty(make, empty):
    width, height = png_size(make(empty))
    assert width >= 400 and height >= 200
