"""Data-quality figures and charts, on small synthetic inputs."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from taxi_assets.lib import charts, plain_charts
from taxi_assets.ml import quality

PNG = b"\x89PNG\r\n\x1a\n"
BLUE = (0x4C, 0x78, 0xA8)


def pixels(png: bytes) -> np.ndarray:
    """The PNG decoded to height x width x RGB, after checking it is one."""
    assert png.startswith(PNG)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def png_size(png: bytes) -> tuple[int, int]:
    image = pixels(png)
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
    ids=["bars", "histogram", "predicted_vs_actual", "series", "runs_per_day", "pie"],
)
@pytest.mark.parametrize("empty", [False, True], ids=["data", "empty"])
def test_charts_render_with_data_and_when_empty(make, empty):
    width, height = png_size(make(empty))
    assert width >= 400 and height >= 200


# The data-preparation charts, drawn with Pillow --------------------------------------------------

FEBRUARY = pd.Timestamp("2024-02-01"), pd.Timestamp("2024-03-01")


def pickups(*times: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(times)), dtype="datetime64[ns]")


def frame(image: np.ndarray) -> tuple[int, int, int, int]:
    """The axes' spines (top, bottom, left, right): the rows and columns mostly black."""
    black = image.sum(axis=2) < 30
    rows = np.flatnonzero(black.sum(axis=1) > 0.4 * image.shape[1])
    columns = np.flatnonzero(black.sum(axis=0) > 0.4 * image.shape[0])
    assert len(rows) == 2 and len(columns) == 2, (rows, columns)
    return rows[0], rows[1], columns[0], columns[1]


def blue(image: np.ndarray) -> np.ndarray:
    return (image == BLUE).all(axis=2)


def no_data_drawn(image: np.ndarray) -> bool:
    """Empty axes: no bar anywhere, grey text at the centre of the frame."""
    top, bottom, left, right = frame(image)
    centre = image[
        (top + bottom) // 2 - 10 : (top + bottom) // 2 + 10, (left + right) // 2 - 40 : (left + right) // 2 + 40
    ]
    grey = (np.abs(centre - 128) < 40).all(axis=2)
    return not blue(image).any() and grey.sum() > 20


MISSING = {"ehail_fee": 53_577, "trip_type": 2_933, "RatecodeID": 2_928, "payment_type": 2_928}


@pytest.mark.parametrize("title", ["Trip duration, 2024-02", "A title too long for one line, wrapped " * 3])
@pytest.mark.parametrize("kind", ["histogram", "bars"])
def test_pillow_charts_look_like_the_matplotlib_ones(kind, title):
    """Same data and title: the same size, the same axes box (margins, wrapped title) to a pixel,
    the same bars in the same blue. The data-preparation and model charts are one family."""
    draw = {
        "histogram": lambda module: module.histogram(pd.Series(np.arange(500) % 37 * 1.5), title, "minutes"),
        "bars": lambda module: module.bars(MISSING, title, "missing cells"),
    }[kind]
    drawn_by_matplotlib, drawn_by_pillow = pixels(draw(charts)), pixels(draw(plain_charts))
    assert drawn_by_pillow.shape == drawn_by_matplotlib.shape and drawn_by_pillow.shape[1] == 800
    assert np.abs(np.subtract(frame(drawn_by_pillow), frame(drawn_by_matplotlib))).max() <= 1
    # The same bars: as many blue pixels, give or take their anti-aliased edges.
    assert blue(drawn_by_pillow).sum() == pytest.approx(blue(drawn_by_matplotlib).sum(), rel=0.03)


def test_pickups_per_day_draws_a_bar_per_day_and_counts_the_strays():
    february = pickups("2024-02-01 08:00", "2024-02-01 09:00", "2024-02-03 10:00")
    image = pixels(plain_charts.pickups_per_day(february, "Pickups per day, 2024-02", *FEBRUARY))
    top, bottom, left, right = frame(image)
    columns = np.flatnonzero(blue(image).any(axis=0))
    runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
    assert len(runs) == 2  # the 1st and the 3rd; nothing on the 2nd
    day = (right - left) / 29.2  # 29 days and 0.6 + 0.4 of margins
    assert abs((runs[1].mean() - runs[0].mean()) - 2 * day) <= 1
    heights = [blue(image)[:, run].sum(axis=0).max() for run in runs]
    assert heights[0] == pytest.approx(2 * heights[1], abs=2)  # two trips, one trip
    # A stray pickup (2009) is not drawn but named in the title, which grows.
    with_stray = pixels(
        plain_charts.pickups_per_day(pd.concat([february, pickups("2009-01-01")]), "Pickups", *FEBRUARY)
    )
    without = pixels(plain_charts.pickups_per_day(february, "Pickups", *FEBRUARY))
    assert (blue(with_stray) == blue(without)).all()
    title_width = [np.ptp(np.flatnonzero((chart[: top - 5] < 128).any(axis=(0, 2)))) for chart in (with_stray, without)]
    assert title_width[0] > title_width[1] + 100


@pytest.mark.parametrize(
    "draw",
    [
        lambda: plain_charts.pickups_per_day(pickups(), "no pickups", *FEBRUARY),
        lambda: plain_charts.pickups_per_day(pd.Series([pd.NaT, "not a time", None]), "unreadable", *FEBRUARY),
        lambda: plain_charts.pickups_per_day(pickups("2009-01-01", "2024-03-01"), "all outside", *FEBRUARY),
        lambda: plain_charts.bars({}, "no missing values", "missing cells"),
        lambda: plain_charts.bars({"a": float("nan")}, "NaN counts", "missing cells"),
        lambda: plain_charts.histogram(pd.Series([], dtype=float), "empty", "minutes"),
        lambda: plain_charts.histogram(pd.Series([np.nan, np.inf, -np.inf, "x"]), "nothing finite", "minutes"),
    ],
    ids=["pickups-empty", "pickups-unreadable", "pickups-outside", "bars-empty", "bars-nan", "hist-empty", "hist-nan"],
)
def test_pillow_charts_draw_no_data_on_empty_or_bad_input(draw):
    image = pixels(draw())
    assert image.shape == (400, 800, 3)
    assert no_data_drawn(image)


def test_histogram_ignores_values_that_are_not_finite():
    values = pd.Series(np.arange(1, 200, dtype=float))
    clean = pixels(plain_charts.histogram(values, "t", "minutes"))
    dirty = pixels(plain_charts.histogram(pd.concat([values, pd.Series([np.nan, np.inf, "x"])]), "t", "minutes"))
    assert (clean == dirty).all()


@pytest.mark.parametrize(
    "low, high, most",
    [(-1.95, 62.95, 9), (-0.85, 17.85, 9), (0, 64_292, 9), (0, 2_520, 8), (0, 1, 9), (0.2, 0.31, 8), (0, 7, 2)]
    + [(-3.3, 41.7, 8), (0, 1_950_000, 9), (-120, -3, 5), (1e-3, 1.7e-3, 4)],
)
def test_ticks_are_the_ones_matplotlib_chooses(low, high, most):
    from matplotlib.ticker import MaxNLocator

    expected = MaxNLocator(nbins=most, steps=[1, 2, 2.5, 5, 10]).tick_values(low, high)
    expected = [tick for tick in expected if low <= tick <= high]
    assert plain_charts.nice_ticks(low, high, most) == pytest.approx(expected)


def test_tick_labels_are_written_as_matplotlib_writes_them():
    assert plain_charts.number_labels([0.0, 2.5, 5.0]) == ["0.0", "2.5", "5.0"]
    assert plain_charts.number_labels([0, 10_000, 20_000]) == ["0", "10000", "20000"]
    assert plain_charts.number_labels([-0.5, 0.0, 0.5]) == ["\N{MINUS SIGN}0.5", "0.0", "0.5"]
    assert plain_charts.number_labels([0.2, 0.6000000000000001]) == ["0.2", "0.6"]


def test_pillow_charts_use_matplotlibs_font_without_importing_matplotlib():
    script = (
        "import sys\n"
        "import pandas as pd\n"
        "from taxi_assets.lib import plain_charts\n"
        "font = plain_charts._dejavu_sans()\n"
        "assert font is not None and font.name == 'DejaVuSans.ttf' and 'mpl-data' in font.parts, font\n"
        "plain_charts.histogram(pd.Series([1.0, 2.0, 2.0]), 'title', 'minutes')\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr[-2000:]


def test_pillow_charts_fall_back_to_pillows_font(monkeypatch):
    """Without matplotlib's font file the charts still draw (in Pillow's own font)."""
    monkeypatch.setattr(plain_charts, "_dejavu_sans", lambda: None)
    plain_charts._font.cache_clear()
    try:
        image = pixels(plain_charts.bars(MISSING, "Missing values", "missing cells"))
    finally:
        plain_charts._font.cache_clear()
    assert image.shape[1] == 800 and blue(image).any()
