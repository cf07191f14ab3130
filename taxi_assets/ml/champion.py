"""Champion/challenger: does a newly trained model replace the one that serves?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ChampionDecision:
    promote: bool
    challenger_rmse: float
    champion_rmse: float | None
    reason: str


def decide(challenger_rmse: float, champion_rmse: float | None, tolerance: float = 0.0) -> ChampionDecision:
    """Promote unless the challenger is worse than the champion by more than ``tolerance`` minutes,
    both measured on the same (newest) validation month."""
    if champion_rmse is None:
        return ChampionDecision(True, challenger_rmse, None, "no champion yet")
    if challenger_rmse <= champion_rmse + tolerance:
        return ChampionDecision(
            True,
            challenger_rmse,
            champion_rmse,
            f"challenger RMSE {challenger_rmse:.4f} <= champion {champion_rmse:.4f} + tolerance {tolerance}",
        )
    return ChampionDecision(
        False,
        challenger_rmse,
        champion_rmse,
        f"challenger RMSE {challenger_rmse:.4f} > champion {champion_rmse:.4f} + tolerance {tolerance}: champion stays",
    )


@dataclass(frozen=True)
class Comparison:
    """What one month's decision compared and chose, on the month's validation trips."""

    scores: dict[str, float]  # each new model's RMSE
    challenger: str  # the best new model
    decision: ChampionDecision
    serving_predicted: np.ndarray  # the minutes of the model that serves after the decision
    at_selection: dict[str, float]  # its realized error (RMSE, MAE, p90, share over 15 minutes)


def compare(
    actual: np.ndarray,
    predicted: dict[str, np.ndarray],
    champion_predicted: np.ndarray | None,
    tolerance: float = 0.0,
) -> Comparison:
    """The best of the new models (by RMSE) against the champion's predictions on the same trips;
    ``champion_predicted`` None when nothing served before."""
    from taxi_assets.ml.monitoring import realized_error
    from taxi_assets.ml.training import regression_metrics

    scores = {name: regression_metrics(actual, values)["rmse"] for name, values in predicted.items()}
    challenger = min(scores, key=scores.__getitem__)
    champion_rmse = regression_metrics(actual, champion_predicted)["rmse"] if champion_predicted is not None else None
    decision = decide(scores[challenger], champion_rmse, tolerance)
    serving = predicted[challenger] if decision.promote else champion_predicted
    assert serving is not None
    return Comparison(scores, challenger, decision, serving, realized_error(actual, serving))


@dataclass
class ProductionModel:
    """The serving model and why it serves: the value of one month's production decision."""

    predictor: Any
    name: str
    model_partition: str  # the month the model was trained for
    model_version: str | None
    registered_model: str | None
    rmse: float  # on the newest validation month (the partition this decision was made for)
    decided_for: str
    reason: str
    # The share of that month's validation trips it predicted more than 15 minutes off (None in
    # decisions made before it was recorded): what the decay check compares later months with.
    share_over_15_minutes: float | None = None
