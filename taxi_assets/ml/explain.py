"""Feature attributions for XGBoost models, bounded in cost whatever the trees' depth.

Exact tree SHAP (``pred_contribs=True``) costs depth squared times leaves per tree and row: on a
depth-95 booster 20 rows took over a minute. The Saabas approximation (``approx_contribs=True``)
walks each row's path once, linear in depth, and ranks features much like SHAP does on these
models (one active one-hot column and the distance per row). It runs in chunks, so a deadline
can end it between two chunks with the rows done so far.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from taxi_assets.ml.budget import UNLIMITED, Budget

METHOD = "Saabas approximation (XGBoost approx_contribs)"
CHUNK_ROWS = 250


@dataclass(frozen=True)
class Attribution:
    top: list[tuple[str, float]]  # (feature, mean |contribution| in minutes), largest first
    rows: int  # rows explained (fewer than asked if the budget ended first)
    method: str = METHOD


def mean_abs_contributions(
    booster,
    matrix,
    feature_names,
    best_iteration: int | None = None,
    top: int = 15,
    budget: Budget = UNLIMITED,
) -> Attribution:
    """The ``top`` features by mean absolute contribution over the rows of ``matrix``.

    Contributions have one column per feature plus a bias column (dropped); columns map back to
    the vectorizer's names (``PU_DO=74_75``, ``trip_distance``). The first chunk always runs;
    later ones only while the budget lasts.
    """
    import xgboost as xgb

    rounds = (0, best_iteration + 1) if best_iteration is not None else (0, 0)
    total = np.zeros(matrix.shape[1], dtype=np.float64)
    done = 0
    for start in range(0, matrix.shape[0], CHUNK_ROWS):
        if done and budget.expired():
            break
        budget.check()
        chunk = matrix[start : start + CHUNK_ROWS]
        contributions = booster.predict(
            xgb.DMatrix(chunk), pred_contribs=True, approx_contribs=True, iteration_range=rounds
        )
        total += np.abs(contributions[:, :-1]).sum(axis=0)
        done += chunk.shape[0]
    if not done:
        return Attribution([], 0)
    importance = total / done
    order = np.argsort(importance)[::-1][:top]
    return Attribution([(str(feature_names[i]), float(importance[i])) for i in order if importance[i] > 0], done)
