"""Where a model came from, and fitting it again from that (no Dagster, no MLflow here).

A registered model version carries its lineage as MLflow tags (``lineage.*``): the versions of the
trip files it was trained and validated on, the training set's data version, the code version of
each asset on its path, the package version and git commit, the config it ran with, and the
*fit*: what is needed to fit the same model again (the hyperparameters it was fitted with, the
seed, for XGBoost the rounds it boosted). :func:`refit` does that on a rebuilt training set;
:func:`rebuild_problems` says why a rebuild would not reproduce the model (a file or code changed).
"""

from __future__ import annotations

import json
from typing import Any

PREFIX = "lineage."
FILE_PREFIX = PREFIX + "trip_file."
CODE_PREFIX = PREFIX + "code_version."
PATH_ASSETS = ("raw_trips", "cleaned_trips", "training_set")  # before the model's own asset


def fit_record(
    kind: str,
    model: Any,
    best_params: dict,
    best_iteration: int | None,
    early_stopping_rounds: int | None,
    sample: dict | None = None,
):
    """What :func:`refit` needs to fit ``model`` again: the hyperparameters it was fitted with
    (trees actually grown where a budget stopped a forest or gradient boosting early), and for
    XGBoost the rounds it boosted, its early stopping, and the sample it began on, if any."""
    params = dict(best_params)
    if kind == "xgboost":
        record = {
            "kind": kind,
            "params": params,
            "rounds": int(model.num_boosted_rounds()),
            "best_iteration": best_iteration,
            "early_stopping_rounds": early_stopping_rounds,
        }
        return record | ({"sample": dict(sample)} if sample else {})
    if hasattr(model, "n_estimators_"):  # gradient boosting: the stages it kept
        params["n_estimators"] = int(model.n_estimators_)
    elif hasattr(model, "estimators_") and "n_estimators" in params:  # a forest: the trees it grew
        params["n_estimators"] = len(model.estimators_)
    return {"kind": kind, "params": params}


def refit(name: str, fit: dict, X_train, y_train, X_val, y_val):
    """The model fitted again from its fit record, on the same rows: an XGBoost booster boosted
    the same rounds (on the same seeded sample first, if it began on one) with early stopping on
    the validation rows, a scikit-learn model fitted with the same hyperparameters and seed."""
    import numpy as np

    from taxi_assets.ml.training import fit_sklearn, search_matrices, train_booster

    if fit["kind"] != "xgboost":
        return fit_sklearn(name, fit["params"], X_train, y_train)
    import xgboost as xgb

    sample, rounds = fit.get("sample"), int(fit["rounds"])
    if not sample:
        dtrain, dvalid, _ = search_matrices(X_train, y_train, X_val, y_val, None, 0)
        params = {**fit["params"], "num_boost_round": rounds}
        return train_booster(params, dtrain, dvalid, int(fit["early_stopping_rounds"] or rounds))
    dtrain, dvalid, _ = search_matrices(X_train, y_train, X_val, y_val, sample["rows"], sample["seed"])
    # Exactly the recorded rounds on the sample, then exactly the rest on all rows.
    booster = train_booster({**fit["params"], "num_boost_round": sample["rounds"]}, dtrain, dvalid, rounds + 1)
    if rounds == sample["rounds"]:
        return booster
    dall = xgb.DMatrix(X_train, label=np.asarray(y_train))
    more = {**fit["params"], "num_boost_round": rounds - sample["rounds"]}
    return train_booster(more, dall, dvalid, rounds + 1, start_from=booster)


def as_tags(lineage: dict[str, Any]) -> dict[str, str]:
    """Lineage values as MLflow tag strings (JSON for anything that is not a string)."""
    return {
        key: value if isinstance(value, str) else json.dumps(value, sort_keys=True) for key, value in lineage.items()
    }


def recorded_files(tags: dict[str, str]) -> dict[str, str]:
    """``{month: version}`` of the trip files a model was trained and validated on."""
    return {key.removeprefix(FILE_PREFIX): value for key, value in tags.items() if key.startswith(FILE_PREFIX)}


def recorded_code(tags: dict[str, str]) -> dict[str, str]:
    """``{asset: code version}`` of the assets on the model's path."""
    return {key.removeprefix(CODE_PREFIX): value for key, value in tags.items() if key.startswith(CODE_PREFIX)}


def rebuild_problems(
    tags: dict[str, str], files_now: dict[str, str | None], code_now: dict[str, str], where: dict[str, str]
) -> list[str]:
    """Why fitting again would not reproduce the model: a trip file whose bytes changed (naming
    it), or an asset on its path whose code changed. Empty when nothing did."""
    problems = []
    for month, version in sorted(recorded_files(tags).items()):
        now = files_now.get(month)
        if now != version:
            state = "is gone" if now is None else f"is now {now}"
            problems.append(f"trip file {month} ({where.get(month, '?')}) {state}; the model was trained on {version}")
    for asset, version in sorted(recorded_code(tags).items()):
        if code_now.get(asset) != version:
            problems.append(f"{asset}'s code version is {code_now.get(asset)} now; the model was built with {version}")
    return problems
