"""Watching what serves: realized error on a month's trips, whether the serving model decayed, and
what to do about it. Pure functions over plain data (no Dagster); the monitoring assets, check and
sensor gather the inputs and record the results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BAD_TRIP_MINUTES = 15.0  # a trip predicted this far off is one a rider would complain about
# The default tolerance of realized RMSE over the RMSE the model was chosen with; why 10 %: see
# DECAY_TOLERANCE_REASON (benchmarks/bench_monitoring.py prints the healthy month's figure).
DECAY_TOLERANCE = 0.10
DECAY_TOLERANCE_REASON = (
    "A healthy model moves little from the month it was chosen on to the next: the model chosen for "
    "2024-01 does 5.267 on 2024-02's trips against 5.252 at selection (+0.3 %). 10 % is far beyond "
    "such month-to-month noise while still catching a model that got worse by half a minute on a "
    "five-minute RMSE."
)
SHARE_FACTOR = 2.0  # the share of trips off by more than 15 minutes doubling is decay too


def score_trips(cleaned_trips, decision, decided_for: str):
    """The month's trips scored by the decision's predictor (its lookup table where it has one, as
    the server answers): when, where, how far, predicted and actual minutes, and which model."""
    import pandas as pd

    from taxi_assets.ml.features import TARGET
    from taxi_assets.ml.schema import DO_LOCATION, PICKUP, PU_LOCATION, TRIP_DISTANCE, in_schema

    trips = in_schema(cleaned_trips)
    predicted = decision.predictor.predict_features(trips[["PU_DO", TRIP_DISTANCE]]) if len(trips) else []
    version = f"{decision.registered_model or decision.name} v{decision.model_version}"
    return pd.DataFrame(
        {
            PICKUP: trips[PICKUP].to_numpy(),
            PU_LOCATION: trips[PU_LOCATION].astype("int64").to_numpy(),
            DO_LOCATION: trips[DO_LOCATION].astype("int64").to_numpy(),
            TRIP_DISTANCE: trips[TRIP_DISTANCE].to_numpy(dtype=float),
            "predicted_minutes": np.asarray(predicted, dtype=float),
            "actual_minutes": trips[TARGET].to_numpy(dtype=float),
            "model": version,
            "model_name": decision.name,
            "model_version": str(decision.model_version),
            "model_trained_for": decision.model_partition,
            "decided_for": decided_for,
        }
    )


def worst_trips(scored, count: int = 10):
    """The trips the model got most wrong: which trips, and how far off."""
    columns = [
        "pickup_datetime",
        "PULocationID",
        "DOLocationID",
        "trip_distance",
        "predicted_minutes",
        "actual_minutes",
    ]
    error = (scored["predicted_minutes"] - scored["actual_minutes"]).abs()
    worst = scored.loc[error.nlargest(count).index, columns].assign(abs_error_minutes=error)
    return worst.assign(pickup_datetime=worst["pickup_datetime"].astype(str)).round(3).reset_index(drop=True)


def realized_error(actual, predicted) -> dict[str, float]:
    """RMSE, MAE, the 90th percentile of absolute error, and the share of trips off by more than
    ``BAD_TRIP_MINUTES``, of predictions against what the trips took."""
    from sklearn.metrics import mean_absolute_error, root_mean_squared_error

    actual = np.asarray(actual, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    if actual.size == 0:
        nan = float("nan")
        return {"rows": 0, "rmse": nan, "mae": nan, "p90_abs_error": nan, "share_over_15_minutes": nan}
    errors = np.abs(predicted - actual)
    return {
        "rows": int(actual.size),
        "rmse": float(root_mean_squared_error(actual, predicted)),
        "mae": float(mean_absolute_error(actual, predicted)),
        "p90_abs_error": float(np.percentile(errors, 90)),
        "share_over_15_minutes": float(np.mean(errors > BAD_TRIP_MINUTES)),
    }


@dataclass(frozen=True)
class Verdict:
    """Whether the serving model decayed on a month, and the figures that say so."""

    decayed: bool
    month: str
    model: str
    realized_rmse: float
    expected_rmse: float
    tolerance: float
    realized_share: float
    expected_share: float | None
    reasons: tuple[str, ...]

    def describe(self) -> str:
        worse = self.realized_rmse / self.expected_rmse - 1 if self.expected_rmse else float("nan")
        text = (
            f"{self.month}: {self.model} has RMSE {self.realized_rmse:.3f} on the month's trips against "
            f"{self.expected_rmse:.3f} when it was chosen ({worse:+.0%}, tolerance {self.tolerance:.0%})"
        )
        if self.expected_share is not None:
            text += (
                f"; {self.realized_share:.1%} of trips off by more than {BAD_TRIP_MINUTES:g} minutes against "
                f"{self.expected_share:.1%}"
            )
        return text + (": decayed (" + "; ".join(self.reasons) + ")" if self.decayed else ": performing")


def judge(
    month: str,
    model: str,
    realized: dict[str, float],
    expected_rmse: float,
    expected_share: float | None,
    tolerance: float = DECAY_TOLERANCE,
    share_factor: float = SHARE_FACTOR,
) -> Verdict:
    """Decayed when the realized RMSE exceeds the RMSE at selection by more than ``tolerance``, or
    when the share of trips off by more than 15 minutes reached ``share_factor`` times its share
    at selection (when the decision recorded it)."""
    reasons = []
    if realized["rmse"] > expected_rmse * (1 + tolerance):
        reasons.append(f"RMSE over {expected_rmse * (1 + tolerance):.3f}")
    share = realized["share_over_15_minutes"]
    if expected_share is not None and share > 0 and share >= share_factor * expected_share:
        reasons.append(f"share of trips off by over {BAD_TRIP_MINUTES:g} min x{share / max(expected_share, 1e-12):.1f}")
    return Verdict(
        bool(reasons), month, model, realized["rmse"], expected_rmse, tolerance, share, expected_share, tuple(reasons)
    )


@dataclass(frozen=True)
class Served:
    """One month's batch predictions: which model scored them and how it did."""

    month: str  # the month scored
    model: str  # e.g. "xgboost v3"
    trained_for: str  # the month the model was trained for
    chosen_for: str  # the month whose decision chose it
    validation_rmse: float  # its RMSE when it was chosen
    realized_rmse: float
    role: str = "served"  # or "shadow": the model the serving one replaced, scored in batch only


def performance_table(scored: list[Served]) -> tuple[list[str], list[dict]]:
    """One row per served model (and per model scored as a shadow): its validation RMSE when
    chosen and its realized RMSE on every month it scored (months as columns, oldest first)."""
    months = sorted({entry.month for entry in scored})
    rows: dict[tuple[str, str], dict] = {}
    for entry in sorted(scored, key=lambda e: (e.role != "served", e.chosen_for, e.month)):
        row = rows.setdefault(
            (entry.model, entry.role),
            {
                "model": entry.model,
                "role": entry.role,
                "trained_for": entry.trained_for,
                "chosen_for": entry.chosen_for,
                "validation_rmse": round(entry.validation_rmse, 4),
            },
        )
        row[entry.month] = round(entry.realized_rmse, 4)
    return months, list(rows.values())


@dataclass(frozen=True)
class DecayResponse:
    """What a failed decay check leads to: an alert, and maybe a retraining of the newest month."""

    alert: str  # "decayed" or "retraining did not help"
    retrain: bool
    why: str


def respond_to_decay(
    verdict: Verdict,
    checked_at: float,
    newest_month: str,
    retraining_running: bool,
    retraining_succeeded_at: float | None,
) -> DecayResponse:
    """A decayed model gets a retraining of the newest month, unless one is running or one
    succeeded after the check failed (it already had the chance to replace the model)."""
    if retraining_running:
        return DecayResponse("decayed", False, f"a retraining of {newest_month} is running")
    if retraining_succeeded_at is not None and retraining_succeeded_at > checked_at:
        return DecayResponse("decayed", False, f"{newest_month} was retrained after the check failed")
    return DecayResponse("decayed", True, f"retraining {newest_month} (reason: decay)")


def retraining_helped(decayed_model: str, serving_model: str) -> bool:
    """After a retraining, the decayed model no longer serves: a challenger beat it."""
    return decayed_model != serving_model
