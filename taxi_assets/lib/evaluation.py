"""Charts and metadata of trained models, shared by the training and serving assets."""

from __future__ import annotations

from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from taxi_assets.lib import charts
from taxi_assets.ml.budget import Budget

EXPLAINED_ROWS = 2_000
EXPLAIN_SECONDS = 10.0


def evaluation_charts(name: str, month: str, actual, predicted) -> dict[str, bytes]:
    """Predicted vs actual minutes and the residual histogram on the validation month."""
    residuals = np.asarray(predicted, dtype=float) - np.asarray(actual, dtype=float)
    return {
        "predicted_vs_actual": charts.predicted_vs_actual(actual, predicted, f"{name}, validation {month}"),
        "residuals": charts.histogram(
            pd.Series(residuals),
            f"{name} residuals (predicted - actual), {month}",
            "minutes",
            bins=80,
            clip_quantile=None,
        ),
    }


def contributions_chart(predictor, X_val, month: str, budget: Budget) -> bytes:
    """Mean |contribution| of the top features on a seeded sample of validation rows, by the
    Saabas approximation (linear in depth), in at most ``EXPLAIN_SECONDS`` of the budget."""
    from taxi_assets.ml.explain import mean_abs_contributions

    rows = X_val
    if X_val.shape[0] > EXPLAINED_ROWS:
        rows = X_val[np.sort(np.random.default_rng(0).choice(X_val.shape[0], EXPLAINED_ROWS, replace=False))]
    explained = mean_abs_contributions(
        predictor.model,
        rows,
        predictor.vectorizer.get_feature_names_out(),
        predictor.best_iteration,
        budget=budget.share(EXPLAIN_SECONDS),
    )
    return charts.contributions(
        explained.top,
        f"XGBoost: top features by mean |contribution|, {month}\n"
        f"{explained.method}, {explained.rows:,} validation rows",
    )


def model_metadata(trained, prefix: str = "") -> dict[str, Any]:
    """What a trained model's materialization shows: scores, search, budget, MLflow ids."""
    return {
        f"{prefix}rmse": trained.rmse,
        f"{prefix}mse": trained.mse,
        f"{prefix}trials": trained.n_trials,
        f"{prefix}train_seconds": round(trained.train_seconds, 2),
        f"{prefix}budget_seconds": trained.budget_seconds or 0.0,
        f"{prefix}search_seconds": trained.search_seconds or 0.0,
        f"{prefix}search_ended_by": trained.stopped_by,
        f"{prefix}best_params": dg.MetadataValue.json(trained.best_params),
        f"{prefix}mlflow_run_id": trained.mlflow_run_id,
        f"{prefix}model_version": f"{trained.registered_model} v{trained.model_version}",
    }
