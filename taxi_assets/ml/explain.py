"""Feature attributions for XGBoost models from XGBoost's own TreeSHAP (``pred_contribs``)."""

from __future__ import annotations

import numpy as np


def mean_abs_shap(booster, matrix, feature_names, best_iteration: int | None = None, top: int = 15) -> list[tuple[str, float]]:
    """The ``top`` features by mean absolute SHAP value over the rows of ``matrix``, largest first.

    ``pred_contribs`` returns one column per feature plus a bias column (dropped). Columns map
    back to the vectorizer's names (``PU_DO=74_75``, ``trip_distance``).
    """
    import xgboost as xgb

    if matrix.shape[0] == 0:
        return []
    rounds = (0, best_iteration + 1) if best_iteration is not None else (0, 0)
    contributions = booster.predict(xgb.DMatrix(matrix), pred_contribs=True, iteration_range=rounds)
    importance = np.abs(contributions[:, :-1]).mean(axis=0)
    order = np.argsort(importance)[::-1][:top]
    return [(str(feature_names[i]), float(importance[i])) for i in order if importance[i] > 0]
