"""The models the course trains and their hyperopt search spaces (mlops/utils/hyperparameters)."""

from __future__ import annotations

import importlib
from typing import Any

# Short name -> sklearn module path. The course's six models.
SKLEARN_MODELS: dict[str, str] = {
    "LinearRegression": "sklearn.linear_model",
    "Lasso": "sklearn.linear_model",
    "LinearSVR": "sklearn.svm",
    "ExtraTreesRegressor": "sklearn.ensemble",
    "GradientBoostingRegressor": "sklearn.ensemble",
    "RandomForestRegressor": "sklearn.ensemble",
}
DEFAULT_SKLEARN_MODELS = ["linear_model.LinearRegression", "linear_model.Lasso"]


def valid_model_names() -> list[str]:
    return [f"{module.removeprefix('sklearn.')}.{name}" for name, module in SKLEARN_MODELS.items()]


def short_name(name: str) -> str:
    """``"linear_model.Lasso"`` or ``"Lasso"`` -> ``"Lasso"``; unknown names raise ``ValueError``."""
    short = name.strip().rsplit(".", 1)[-1]
    qualified = f"{SKLEARN_MODELS.get(short, '').removeprefix('sklearn.')}.{short}"
    if short not in SKLEARN_MODELS or ("." in name and name.strip() != qualified):
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(valid_model_names())}")
    return short


def model_class(name: str) -> type:
    short = short_name(name)
    return getattr(importlib.import_module(SKLEARN_MODELS[short]), short)


def sklearn_space(name: str, random_state: int) -> dict[str, Any]:
    """The course's search space for one scikit-learn model."""
    from hyperopt import hp
    from hyperopt.pyll import scope

    short = short_name(name)
    if short == "LinearRegression":
        return {"fit_intercept": hp.choice("fit_intercept", [True, False])}
    if short == "Lasso":
        return {
            "alpha": hp.uniform("alpha", 0.0001, 1.0),
            "max_iter": scope.int(hp.quniform("max_iter", 1000, 5000, 100)),
        }
    if short == "LinearSVR":
        return {
            "epsilon": hp.uniform("epsilon", 0.0, 1.0),
            "C": hp.loguniform("C", -7, 3),  # e^-7 .. e^3
            "max_iter": scope.int(hp.quniform("max_iter", 1000, 5000, 100)),
            "random_state": random_state,
        }
    trees = {
        "ExtraTreesRegressor": (5, 30, 10, 40),
        "RandomForestRegressor": (5, 45, 10, 60),
        "GradientBoostingRegressor": (5, 40, 10, 50),
    }
    depth_low, depth_high, trees_low, trees_high = trees[short]
    space = {
        "max_depth": scope.int(hp.quniform("max_depth", depth_low, depth_high, 1 if short == "GradientBoostingRegressor" else 5)),
        "min_samples_leaf": scope.int(hp.quniform("min_samples_leaf", 1, 10, 1)),
        "min_samples_split": scope.int(hp.quniform("min_samples_split", 2, 20, 2)),
        "n_estimators": scope.int(hp.quniform("n_estimators", trees_low, trees_high, 10)),
        "random_state": random_state,
    }
    if short == "GradientBoostingRegressor":
        space["learning_rate"] = hp.loguniform("learning_rate", -5, 0)  # e^-5 .. 1
    else:
        space["n_jobs"] = -1
    return space


def xgboost_space(random_state: int, max_depth: int | None = None) -> dict[str, Any]:
    """The course's Booster space; ``max_depth`` fixes the depth instead of searching it."""
    from hyperopt import hp
    from hyperopt.pyll import scope

    return {
        "colsample_bytree": hp.uniform("colsample_bytree", 0.5, 1.0),
        "gamma": hp.uniform("gamma", 0.1, 1.0),
        "learning_rate": hp.loguniform("learning_rate", -3, 0),  # 0.05 .. 1
        "max_depth": max_depth if max_depth is not None else scope.int(hp.quniform("max_depth", 4, 100, 1)),
        "min_child_weight": hp.loguniform("min_child_weight", -1, 3),
        "num_boost_round": scope.int(hp.quniform("num_boost_round", 500, 1000, 10)),
        "objective": "reg:squarederror",
        "random_state": random_state,
        "reg_alpha": hp.loguniform("reg_alpha", -5, -1),
        "reg_lambda": hp.loguniform("reg_lambda", -6, -1),
        "subsample": hp.uniform("subsample", 0.1, 1.0),
    }
