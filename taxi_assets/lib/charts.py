"""Charts as PNG bytes, with matplotlib's non-interactive Agg backend. No Dagster here.

The model and observability charts. The data-preparation charts are drawn with Pillow in
``plain_charts`` (matplotlib's import costs more than those steps' work) with this module's look:
its size, margins, title wrapping and bar colour, which it takes from here.

Every function copes with empty input by drawing the empty axes with a "no data" note, so an
empty month or a first run never fails a materialization over a picture. Dates go through
matplotlib's date converters (``mdates``) rather than strings, so axes stay readable.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

# 6.4 x 3.2 inches at 125 dpi: 800 x 400 px, sharp in the UI's dialog and readable in a README.
WIDTH, HEIGHT, DPI = 6.4, 3.2, 125
TITLE_CHARACTERS = 62  # a 12 pt title line across the figure's 6.4 inches
BLUE = "#4c78a8"  # bars and points in every chart, plain_charts' too


def _figure(height: float = HEIGHT):
    from matplotlib.figure import Figure

    # A bare Figure, not pyplot: no backend to switch, no global state, nothing to close, safe
    # in threads; savefig renders PNGs with Agg.
    figure = Figure(figsize=(WIDTH, height), dpi=DPI)
    return figure, figure.add_subplot()


def _png(figure, title: str, left: float = 0.12) -> bytes:
    """The figure as PNG bytes, its title across the whole figure (wrapped, never cut off)."""
    import textwrap

    lines = textwrap.wrap(title, TITLE_CHARACTERS) or [""]
    figure.suptitle("\n".join(lines), fontsize=12, y=0.99, va="top")
    buffer = io.BytesIO()
    # Fixed margins rather than tight_layout, which draws every text twice to measure it (it
    # would double the cost of each chart in the data-preparation steps).
    height = figure.get_figheight()  # margins in inches, whatever the figure's height
    top = 1 - (0.12 + 0.22 * len(lines)) / height
    figure.subplots_adjust(left=left, right=0.97, top=top, bottom=0.55 / height)
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _no_data(axes, message: str = "no data") -> None:
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes, color="grey")
    axes.set_xticks([])
    axes.set_yticks([])


def bars(
    values: Mapping[str, float],
    title: str,
    xlabel: str,
    highlight: str | None = None,
    fmt: str = "{:,.0f}",
    highlight_label: str = "highlighted",
) -> bytes:
    """Horizontal bars, largest at the top, values printed at the bar ends; the ``highlight``
    bar in red, named in a legend by ``highlight_label``."""
    figure, axes = _figure(max(HEIGHT, 0.35 * len(values) + 1.2))
    items = sorted(values.items(), key=lambda item: item[1])
    if not items:
        _no_data(axes)
    else:
        names = [name for name, _ in items]
        numbers = [value for _, value in items]
        colors = ["#e45756" if name == highlight else BLUE for name in names]
        drawn = axes.barh(names, numbers, color=colors)
        axes.bar_label(drawn, labels=[fmt.format(value) for value in numbers], padding=3, fontsize=8)
        axes.set_xlim(0, max(max(numbers), 1e-9) * 1.2)
        axes.set_xlabel(xlabel)
        if highlight in names:
            from matplotlib.patches import Patch

            # In the figure's free lower-left corner, clear of the bars and their labels.
            figure.legend(
                handles=[Patch(color="#e45756", label=highlight_label)], fontsize=8, loc="lower left", frameon=False
            )
    longest = max((len(str(name)) for name in values), default=0)
    return _png(figure, title, left=min(0.5, 0.04 + 0.0125 * longest))


def histogram(values: pd.Series, title: str, xlabel: str, bins: int = 60, clip_quantile: float | None = 0.995) -> bytes:
    """A histogram; with ``clip_quantile`` the long tail is cut off (and the cut noted)."""
    figure, axes = _figure()
    data = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    if data.empty:
        _no_data(axes)
    else:
        note = ""
        if clip_quantile is not None and len(data) > 100:
            limit = float(data.quantile(clip_quantile))
            beyond = int((data > limit).sum())
            if beyond:
                data = data[data <= limit]
                note = f" ({beyond:,} above {limit:,.1f} not shown)"
        axes.hist(data.to_numpy(), bins=bins, color=BLUE)
        axes.set_xlabel(xlabel + note)
        axes.set_ylabel("trips")
    return _png(figure, title)


def predicted_vs_actual(
    actual: np.ndarray, predicted: np.ndarray, title: str, sample: int = 5_000, seed: int = 0
) -> bytes:
    """A scatter of predictions against actual minutes (a random sample) with the diagonal."""
    figure, axes = _figure(4.0)
    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    if actual.size == 0:
        _no_data(axes)
    else:
        if actual.size > sample:
            pick = np.random.default_rng(seed).choice(actual.size, sample, replace=False)
            actual, predicted = actual[pick], predicted[pick]
        axes.scatter(actual, predicted, s=3, alpha=0.3, color=BLUE)
        high = float(max(actual.max(), predicted.max()))
        low = float(min(actual.min(), predicted.min(), 0))
        axes.plot([low, high], [low, high], color="#e45756", linewidth=1)
        axes.set_xlabel("actual minutes")
        axes.set_ylabel("predicted minutes")
    return _png(figure, title)


def series_over_months(series: Mapping[str, Mapping[str, float]], title: str, ylabel: str) -> bytes:
    """One line per name over months (``YYYY-MM`` keys), on a date axis."""
    import matplotlib.dates as mdates

    figure, axes = _figure(3.6)
    drawn = False
    for name, points in sorted(series.items()):
        if not points:
            continue
        months = sorted(points)
        axes.plot(
            mdates.date2num([pd.Timestamp(f"{month}-01").to_pydatetime() for month in months]),
            [points[month] for month in months],
            marker="o",
            label=name,
        )
        drawn = True
    if not drawn:
        _no_data(axes)
    else:
        locator = mdates.MonthLocator()
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        axes.set_ylabel(ylabel)
        axes.legend(fontsize=7, loc="best")
    return _png(figure, title)


def runs_per_day(runs: pd.DataFrame, title: str, start=None, end=None) -> bytes:
    """Stacked bars of runs per day: one colour per (job, status). ``runs``: day, job, status.
    ``start``/``end`` fix the date axis (so one day of runs still shows as one day)."""
    import matplotlib.dates as mdates

    figure, axes = _figure(3.8)
    if runs.empty:
        _no_data(axes, "no runs")
    else:
        # Names starting with "_" (Dagster's __ASSET_JOB) would be hidden from the legend.
        jobs = runs["job"].where(~runs["job"].str.startswith("__ASSET_JOB"), "ad hoc materialization")
        table = runs.assign(key=jobs + " " + runs["status"]).pivot_table(
            index="day", columns="key", values="job", aggfunc="count", fill_value=0
        )
        days = mdates.date2num([pd.Timestamp(day).to_pydatetime() for day in table.index])
        bottom = np.zeros(len(days))
        for key in table.columns:
            heights = table[key].to_numpy(dtype=float)
            hatch = "//" if key.endswith("FAILURE") else None
            axes.bar(days, heights, bottom=bottom, width=0.8, align="edge", label=key, hatch=hatch)
            bottom += heights
        if start is not None and end is not None:
            axes.set_xlim(
                float(mdates.date2num(pd.Timestamp(start).to_pydatetime())),
                float(mdates.date2num(pd.Timestamp(end).to_pydatetime())),
            )
        locator = mdates.AutoDateLocator(maxticks=8)
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        axes.set_ylabel("runs")
        axes.legend(fontsize=7, loc="upper left")
    return _png(figure, title)


def pie(values: Mapping[str, int], title: str) -> bytes:
    figure, axes = _figure(3.6)
    items = [(name, value) for name, value in sorted(values.items()) if value > 0]
    if not items:
        _no_data(axes)
    else:
        axes.pie(
            [value for _, value in items],
            labels=[f"{name} ({value})" for name, value in items],
            textprops={"fontsize": 8},
        )
        axes.axis("equal")
    return _png(figure, title)


def contributions(importance: Sequence[tuple[str, float]], title: str) -> bytes:
    """Features by mean absolute contribution to the prediction (the method is in the title)."""
    return bars(dict(importance), title, "mean |contribution| (minutes)", fmt="{:.3f}")


def model_performance(rows: Sequence[Mapping], months: Sequence[str], title: str) -> bytes:
    """One line per served model: its realized RMSE on each month it scored (months on the x
    axis), and a hollow marker for its validation RMSE at the month it was chosen. A model whose
    line climbs away from its marker is decaying."""
    import matplotlib.dates as mdates

    figure, axes = _figure(3.6)
    if not rows:
        _no_data(axes)
        return _png(figure, title)

    def at(month: str) -> float:
        return float(mdates.date2num(pd.Timestamp(f"{month}-01").to_pydatetime()))

    colours: dict[str, str] = {}
    for row in rows:
        colour = colours.setdefault(row["model"], f"C{len(colours) % 10}")
        scored = [month for month in months if row.get(month) is not None]
        shadow = row.get("role") == "shadow"  # dashed: scored in batch only, it did not serve those months
        axes.plot(
            [at(m) for m in scored],
            [row[m] for m in scored],
            marker="x" if shadow else "o",
            color=colour,
            linestyle="--" if shadow else "-",
            label=f"{row['model']} (shadow)" if shadow else row["model"],
        )
        if not shadow:
            axes.plot([at(row["chosen_for"])], [row["validation_rmse"]], marker="D", markerfacecolor="none",
                      markersize=8, color=colour, linestyle="none")  # fmt: skip
    locator = mdates.MonthLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes.set_ylabel("RMSE (minutes)")
    axes.legend(
        fontsize=7, loc="best", title="realized (dashed: shadow); hollow diamond: when chosen", title_fontsize=7
    )
    return _png(figure, title)
