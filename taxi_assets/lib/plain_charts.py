"""The data-preparation charts as PNG bytes, drawn with Pillow. No Dagster, no matplotlib here.

raw_trips and cleaned_trips draw four simple charts per month. matplotlib's import alone (about
0.35 s) and its rendering cost more than those steps' real work, so these charts are drawn pixel by
pixel instead: Pillow imports in milliseconds. They keep the look of ``taxi_assets.lib.charts``
(which the model charts still use): its size, title wrapping, margins, bar colour and matplotlib's
own DejaVu Sans at the same point sizes, axes with outward ticks and labels, and a grey "no data"
in empty axes on empty input (an empty month, all NaN), never an exception.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import math
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from taxi_assets.lib.charts import BLUE, DPI, HEIGHT, TITLE_CHARACTERS, WIDTH

INK, GREY = (0, 0, 0), (128, 128, 128)
HALO = (0, 0, 0, 51)  # a fifth of black over what is there: the anti-aliased edge of a 0.8 pt line
# matplotlib's defaults, in points: 12 pt titles, 10 pt labels, 8 pt bar values, 3.5 pt ticks and pads.
TITLE_POINTS, LABEL_POINTS, VALUE_POINTS, TICK_POINTS = 12, 10, 8, 3.5
RIGHT = 0.97  # the axes' right edge, as a fraction of the width (charts._png's subplots_adjust)


def _pixels(points: float) -> float:
    return points * DPI / 72


@functools.cache
def _dejavu_sans() -> Path | None:
    """The DejaVu Sans file matplotlib ships, located without importing matplotlib (``find_spec``
    of a top-level package only finds it)."""
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return path
    return None


@functools.cache
def _font(points: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans at ``points`` (at the charts' DPI); Pillow's own font if the file is missing."""
    path = _dejavu_sans()
    if path is None:
        return ImageFont.load_default(_pixels(points))
    return ImageFont.truetype(str(path), _pixels(points))


@dataclass
class _Axes:
    """The plotting area of a chart: a pixel box on the figure and the data ranges mapped onto it."""

    image: Image.Image
    left: int
    top: int
    right: int
    bottom: int
    xlim: tuple[float, float] = (0.0, 1.0)
    ylim: tuple[float, float] = (0.0, 1.0)
    draw: ImageDraw.ImageDraw = field(init=False)

    def __post_init__(self) -> None:
        self.draw = ImageDraw.Draw(self.image, "RGBA")  # RGBA: translucent fills blend

    def x(self, value: float) -> float:
        low, high = self.xlim
        return self.left + (value - low) / (high - low) * (self.right - self.left)

    def y(self, value: float) -> float:
        low, high = self.ylim
        return self.bottom - (value - low) / (high - low) * (self.bottom - self.top)

    def bar(self, x0: float, x1: float, y0: float, y1: float) -> None:
        """A blue rectangle between data coordinates, clipped to the axes, edges rounded to whole
        pixels so that adjacent bars (histograms) meet without a gap or an overlap."""
        left, right = sorted((round(self.x(x0)), round(self.x(x1))))
        top, bottom = sorted((round(self.y(y1)), round(self.y(y0))))
        left, right = max(left, self.left + 1), min(right, self.right)
        top, bottom = max(top, self.top + 1), min(bottom, self.bottom)
        if right > left and bottom > top:
            self.draw.rectangle((left, top, right - 1, bottom - 1), fill=BLUE)


def _canvas(title: str, height: float = HEIGHT, left: float = 0.12) -> _Axes:
    """A white figure of WIDTH x ``height`` inches with its title across the top (wrapped as
    charts._png wraps it) and the axes' box placed with the same margins."""
    width_px, height_px = round(WIDTH * DPI), round(height * DPI)
    image = Image.new("RGB", (width_px, height_px), "white")
    draw = ImageDraw.Draw(image)
    lines = textwrap.wrap(title, TITLE_CHARACTERS) or [""]
    font = _font(TITLE_POINTS)
    for number, line in enumerate(lines):
        y = 0.01 * height_px + number * 1.2 * _pixels(TITLE_POINTS)
        draw.text((width_px / 2, y), line, font=font, fill=INK, anchor="mt")
    top = round((0.12 + 0.22 * len(lines)) * DPI)
    bottom = round(height_px - 0.55 * DPI)
    return _Axes(image, round(left * width_px), top, round(RIGHT * width_px), bottom)


def _line(axes: _Axes, start: tuple[int, int], end: tuple[int, int]) -> None:
    """A spine or tick: a black pixel line with a darkened one either side, as matplotlib's
    anti-aliased 0.8 pt lines look at this resolution."""
    axes.draw.line((start, end), fill=HALO, width=3)
    axes.draw.line((start, end), fill=INK, width=1)


def _frame(axes: _Axes) -> None:
    """The four spines, drawn last (over the bars' ends)."""
    corners = [(axes.left, axes.top), (axes.right, axes.top), (axes.right, axes.bottom), (axes.left, axes.bottom)]
    for start, end in zip(corners, corners[1:] + corners[:1], strict=True):
        _line(axes, start, end)


def _no_data(axes: _Axes, message: str = "no data") -> None:
    centre = ((axes.left + axes.right) / 2, (axes.top + axes.bottom) / 2)
    axes.draw.text(centre, message, font=_font(LABEL_POINTS), fill=GREY, anchor="mm")
    _frame(axes)


def _png(axes: _Axes) -> bytes:
    buffer = io.BytesIO()
    axes.image.save(buffer, format="PNG")
    return buffer.getvalue()


# Ticks -------------------------------------------------------------------------------------------


def nice_ticks(low: float, high: float, most: int) -> list[float]:
    """At least two round values (1, 2, 2.5 or 5 times a power of ten apart) within [low, high],
    at most ``most`` intervals apart: matplotlib's MaxNLocator, simplified."""
    if not high > low:
        return [low]
    scale = 10 ** math.floor(math.log10((high - low) / most))
    steps = [step * scale for step in (0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10)]
    widest = next(index for index, step in enumerate(steps) if (high - low) / step <= most)
    for step in reversed(steps[: widest + 1]):  # the widest step that fits, narrower ones if needed
        first, tolerance = math.ceil(low / step - 1e-9), 1e-9 * step
        ticks = [number * step for number in range(first, math.floor(high / step + 1e-9) + 1)]
        ticks = [tick for tick in ticks if low - tolerance <= tick <= high + tolerance]
        if len(ticks) >= 2:
            return ticks
    return [low, high]


def number_labels(ticks: list[float]) -> list[str]:
    """Tick values with the fewest decimals that show them all exactly ("0.0", "2.5", ...), no
    thousands separators, and a true minus sign: as matplotlib's ScalarFormatter writes them."""
    decimals = next(
        (places for places in range(7) if all(abs(round(tick, places) - tick) < 1e-9 for tick in ticks)), None
    )
    texts = [f"{tick:g}" if decimals is None else f"{tick:.{decimals}f}" for tick in ticks]
    return [text.replace("-", "\N{MINUS SIGN}") for text in texts]


def _numeric_ticks(low: float, high: float, length: int, horizontal: bool) -> list[tuple[float, str]]:
    """Round ticks for an axis ``length`` pixels long: as many as matplotlib puts there (an
    interval per three label sizes across, two up, at most nine), fewer if the labels would touch."""
    font, size = _font(LABEL_POINTS), _pixels(LABEL_POINTS)
    most = max(1, min(9, math.floor(length / (size * (3 if horizontal else 2)))))
    while True:
        ticks = nice_ticks(low, high, most)
        labels = number_labels(ticks)
        spacing = length * (ticks[1] - ticks[0]) / (high - low) if len(ticks) > 1 else length
        extent = max(font.getlength(label) for label in labels) if horizontal else size
        if most == 1 or extent + size < spacing:
            return list(zip(ticks, labels, strict=True))
        most -= 1


def _x_ticks(axes: _Axes, ticks: list[tuple[float, str]]) -> int:
    """Ticks below the axes with their labels; returns the pixel row under the labels' line
    (descenders included, as matplotlib measures text, so what goes below lines up alike)."""
    font, length = _font(LABEL_POINTS), round(_pixels(TICK_POINTS))
    top = axes.bottom + 2 * length + 1
    for value, label in ticks:
        x = round(axes.x(value))
        if axes.left <= x <= axes.right:
            _line(axes, (x, axes.bottom + 1), (x, axes.bottom + length))
            axes.draw.text((x, top), label, font=font, fill=INK, anchor="mt")
    return top + _line_height(font)


def _line_height(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    return round(font.getbbox("lp", anchor="mt")[3])


def _y_ticks(axes: _Axes, ticks: list[tuple[float, str]]) -> int:
    """Ticks left of the axes with their labels; returns the labels' leftmost pixel column."""
    font, length = _font(LABEL_POINTS), round(_pixels(TICK_POINTS))
    leftmost = axes.left - length
    for value, label in ticks:
        y = round(axes.y(value))
        if axes.top <= y <= axes.bottom:
            _line(axes, (axes.left - length, y), (axes.left - 1, y))
            axes.draw.text((axes.left - 2 * length, y), label, font=font, fill=INK, anchor="rm")
            leftmost = min(leftmost, axes.left - 2 * length - round(font.getlength(label)))
    return leftmost


def _x_label(axes: _Axes, text: str, below: int) -> None:
    """The x axis's label, centred under the tick labels."""
    top = below + round(_pixels(4))  # matplotlib's 4 pt label pad
    axes.draw.text(((axes.left + axes.right) / 2, top), text, font=_font(LABEL_POINTS), fill=INK, anchor="mt")


def _y_label(axes: _Axes, text: str, left_of: int) -> None:
    """The y axis's label, turned to read upwards, centred beside the tick labels."""
    font = _font(LABEL_POINTS)
    _, top, width, bottom = font.getbbox(text)
    label = Image.new("L", (math.ceil(width), math.ceil(bottom - top)), 0)
    ImageDraw.Draw(label).text((0, -top), text, font=font, fill=255)
    turned = label.rotate(90, expand=True)
    x = left_of - round(_pixels(4)) - turned.width
    y = round((axes.top + axes.bottom) / 2 - turned.height / 2)
    axes.image.paste(INK, (x, y, x + turned.width, y + turned.height), turned)


# Charts ------------------------------------------------------------------------------------------


def _day_ticks(start: pd.Timestamp, days: int) -> list[tuple[float, str]]:
    """The 1st, 8th, 15th and 22nd of each month (the 1st alone beyond 8 ticks), labelled "Feb",
    "08", "15", "22": matplotlib's AutoDateLocator and ConciseDateFormatter for a month of days."""
    dates = [start + pd.Timedelta(days=day) for day in range(days)]
    ticks = [(day, date) for day, date in enumerate(dates) if date.day in (1, 8, 15, 22)]
    if len(ticks) > 8:
        ticks = [(day, date) for day, date in ticks if date.day == 1]
    return [(float(day), f"{date:%b}" if date.day == 1 else f"{date:%d}") for day, date in ticks]


def pickups_per_day(pickups: pd.Series, title: str, start, end) -> bytes:
    """Trips per calendar day of pickup in [start, end), as bars on a date axis; pickups outside
    it (TLC files carry a few stray years) are counted in the title, not drawn."""
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    times = pd.Series(pickups)
    if not pd.api.types.is_datetime64_dtype(times):
        times = pd.to_datetime(times, errors="coerce")
    times = times.dropna()
    inside = (times >= start) & (times < end)
    if outside := int((~inside).sum()):
        title += f" ({outside:,} outside the month not shown)"
    axes = _canvas(title)
    days = math.ceil((end - start) / pd.Timedelta(days=1))
    offsets = ((times[inside] - start) // pd.Timedelta(days=1)).to_numpy(dtype=np.int64)
    per_day = np.bincount(offsets, minlength=days)
    if not per_day.sum():
        _no_data(axes, "no trips")
        return _png(axes)
    axes.xlim, axes.ylim = (-0.6, days - 0.4), (0.0, float(per_day.max()) * 1.05)
    for day, count in enumerate(per_day):
        axes.bar(day - 0.4, day + 0.4, 0, float(count))
    _y_label(axes, "trips", _y_ticks(axes, _numeric_ticks(*axes.ylim, axes.bottom - axes.top, horizontal=False)))
    below = _x_ticks(axes, _day_ticks(start, days))
    offset = f"{start:%Y-%b}"  # the year and month, once, at the axis's end
    axes.draw.text((axes.right, below + round(_pixels(3))), offset, font=_font(LABEL_POINTS), fill=INK, anchor="rt")
    _frame(axes)
    return _png(axes)


def bars(values: Mapping[str, float], title: str, xlabel: str) -> bytes:
    """Horizontal bars of counts, largest at the top, each count printed at its bar's end; the
    figure grows with the number of bars and its left margin with the longest name, as charts.bars
    does. Values that are not finite numbers are left out."""
    finite = ((str(name), float(value)) for name, value in values.items() if np.isfinite(value))
    items = sorted(finite, key=lambda item: item[1])
    longest = max((len(name) for name, _ in items), default=0)
    axes = _canvas(title, max(HEIGHT, 0.35 * len(items) + 1.2), left=min(0.5, 0.04 + 0.0125 * longest))
    if not items:
        _no_data(axes)
        return _png(axes)
    margin = 0.05 * (len(items) - 0.2)  # 5 % of the bars' extent, above and below
    axes.ylim = (-0.4 - margin, len(items) - 0.6 + margin)
    axes.xlim = (0.0, max(max(value for _, value in items), 1.0) * 1.2)  # all zero: still an axis
    font = _font(VALUE_POINTS)
    for position, (_, value) in enumerate(items):
        axes.bar(0, value, position - 0.4, position + 0.4)
        end = (axes.x(max(value, 0.0)) + _pixels(3), axes.y(position))
        axes.draw.text(end, f"{value:,.0f}", font=font, fill=INK, anchor="lm")
    _y_ticks(axes, [(float(position), name) for position, (name, _) in enumerate(items)])
    below = _x_ticks(axes, _numeric_ticks(*axes.xlim, axes.right - axes.left, horizontal=True))
    _x_label(axes, xlabel, below)
    _frame(axes)
    return _png(axes)


def histogram(values: pd.Series, title: str, xlabel: str, bins: int = 60, clip_quantile: float | None = 0.995) -> bytes:
    """A histogram of the finite values; with ``clip_quantile`` the long tail is cut off and the
    cut noted under the axis."""
    data = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    data = data[np.isfinite(data)]
    axes = _canvas(title)
    if not data.size:
        _no_data(axes)
        return _png(axes)
    note = ""
    if clip_quantile is not None and data.size > 100:
        limit = float(np.quantile(data, clip_quantile))
        if beyond := int((data > limit).sum()):
            data = data[data <= limit]
            note = f" ({beyond:,} above {limit:,.1f} not shown)"
    counts, edges = np.histogram(data, bins=bins)
    margin = 0.05 * float(edges[-1] - edges[0])
    axes.xlim, axes.ylim = (float(edges[0]) - margin, float(edges[-1]) + margin), (0.0, float(counts.max()) * 1.05)
    for count, left, right in zip(counts, edges[:-1], edges[1:], strict=True):
        axes.bar(float(left), float(right), 0, float(count))
    _y_label(axes, "trips", _y_ticks(axes, _numeric_ticks(*axes.ylim, axes.bottom - axes.top, horizontal=False)))
    below = _x_ticks(axes, _numeric_ticks(*axes.xlim, axes.right - axes.left, horizontal=True))
    _x_label(axes, xlabel + note, below)
    _frame(axes)
    return _png(axes)
