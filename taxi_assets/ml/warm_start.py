"""Warm starts: a month's XGBoost search begins from what the previous month's search learned.

A search keeps a short record of its best trials (hyperparameters, validation RMSE, rounds,
seconds). The next month evaluates the best of them first, so a small budget starts where the
last search ended instead of from a fixed guess, and hyperopt's TPE is told the others' results
(as finished trials), so its first proposals are drawn near what worked rather than from the
prior alone. Trips change slowly from month to month, which is what makes last month's losses
a fair guide; they are only a guide: every trial of this month is evaluated on this month.
No Dagster here: the asset gathers the previous record and records what was decided.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from taxi_assets.ml.hyperparameters import INTEGER_XGBOOST_PARAMS, XGBOOST_SPACE

TOLERANCE = 0.02
KEPT_TRIALS = 20  # trials a search passes on to the next month (all of a default search)


def search_record(trials: list[dict[str, Any]], keep: int = KEPT_TRIALS) -> list[dict[str, Any]]:
    """The ``keep`` best trials of a search (best first) as plain JSON values: the searched
    hyperparameters, the validation RMSE, the best round and the seconds the trial took."""
    ranked = sorted(
        (trial for trial in trials if math.isfinite(trial["metrics"]["rmse"])), key=lambda t: t["metrics"]["rmse"]
    )
    return [
        {
            "params": {name: trial["params"][name] for name in XGBOOST_SPACE if name in trial["params"]},
            "rmse": round(float(trial["metrics"]["rmse"]), 6),
            "best_iteration": int(trial["metrics"].get("best_iteration", -1)),
            "seconds": round(float(trial.get("seconds", 0.0)), 2),
        }
        for trial in ranked[:keep]
    ]


@dataclass(frozen=True)
class WarmStart:
    """What a search starts from: trials to evaluate first, and past results TPE learns from."""

    first: list[dict[str, float]]  # evaluated first, in order
    past: list[tuple[dict[str, float], float]]  # (params, loss) told to TPE, not evaluated
    source: str  # why, for the run's log and the model's lineage


def _in_space(params: dict[str, Any], fixed: dict[str, float]) -> dict[str, float] | None:
    """``params`` as a point of the search space (fixed hyperparameters left out), or None when a
    value is missing or outside the space (the space changed since it was recorded). Values within
    2 % of a bound are moved onto it: the known-good configuration's rounded ``reg_alpha`` is one."""
    point: dict[str, float] = {}
    for name, (kind, low, high) in XGBOOST_SPACE.items():
        if name in fixed:
            continue
        value = params.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        lowest, highest = (math.exp(low), math.exp(high)) if kind == "loguniform" else (low, high)
        if not lowest * (1 - TOLERANCE) <= float(value) <= highest * (1 + TOLERANCE):
            return None
        value = min(max(float(value), lowest), highest)
        point[name] = float(round(value) if name in INTEGER_XGBOOST_PARAMS else value)
    return point


def plan_warm_start(
    previous: list[dict[str, Any]] | None,
    previous_month: str | None,
    fixed: dict[str, float],
    cold_start: dict[str, float] | None,
) -> WarmStart:
    """Decide where a search starts. With a previous month's record: its best trial first, the rest
    told to TPE. Without one (or none of it fits the current space): ``cold_start`` first (the
    known-good configuration), or nothing when that is switched off."""
    usable = [
        (point, float(entry["rmse"]))
        for entry in previous or []
        if (point := _in_space(entry.get("params", {}), fixed)) is not None and math.isfinite(float(entry["rmse"]))
    ]
    usable.sort(key=lambda pair: pair[1])
    if usable:
        (best, rmse), *others = usable
        return WarmStart(
            [best],
            others,
            f"warm start from {previous_month}'s search: its best trial (RMSE {rmse:.4f}) first, "
            f"{len(others)} more of its trials told to TPE",
        )
    if cold_start is not None:
        first = {name: value for name, value in cold_start.items() if name not in fixed}
        why = "no usable search record of an earlier month" if previous_month else "no earlier month trained"
        return WarmStart([first], [], f"cold start ({why}): the known-good configuration first")
    return WarmStart([], [], "cold start: TPE from its prior only")
