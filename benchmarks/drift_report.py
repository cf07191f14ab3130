"""Month-over-month data-quality figures for the real trip files: dropped share and the PSI /
binned KS of duration and trip_distance that the drift checks compute (README table).

    TAXI_DATA_DIR=../shared/data/taxi/green python benchmarks/drift_report.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from taxi_assets.lib.sources import LocalTripSource  # noqa: E402
from taxi_assets.ml.cleaning import clean  # noqa: E402
from taxi_assets.ml.quality import DRIFT_EDGES, histogram, ks_statistic, psi  # noqa: E402


def main() -> None:
    source = LocalTripSource(directory=os.environ.get("TAXI_DATA_DIR", "../shared/data/taxi/green"))
    months = sorted(source.data_versions())
    print("| month | dropped share (change, points) | duration PSI / KS | trip_distance PSI / KS |")
    print("|---|---|---|---|")
    previous = None
    for month in months:
        raw = source.read_month(month)
        share = 1 - len(clean(raw)) / len(raw)
        cleaned = clean(raw)
        counts = {column: histogram(cleaned[column], edges) for column, edges in DRIFT_EDGES.items()}
        if previous is None:
            print(f"| {month} | {100 * share:.2f}% (first) | - | - |")
        else:
            drift = [
                f"{psi(previous[1][c], counts[c]):.4f} / {ks_statistic(previous[1][c], counts[c]):.4f}" for c in counts
            ]
            print(f"| {month} | {100 * share:.2f}% ({100 * (share - previous[0]):+.2f}) | {drift[0]} | {drift[1]} |")
        previous = (share, counts)


if __name__ == "__main__":
    main()
