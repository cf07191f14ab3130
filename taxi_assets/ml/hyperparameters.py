"""The models the course trains and their hyperopt search spaces (mlops/utils/hyperparameters)."""

from __future__ import annotations

import importlib
import math
from enum import Enum
from typing import Any

# The course's six scikit-learn models: class name -> module.
SKLEARN_MODELS: dict[str, str] = {
    "LinearRegression": "sklearn.linear_model",
    "Lasso": "sklearn.linear_model",
    "LinearSVR": "sklearn.svm",
    "ExtraTreesRegressor": "sklearn.ensemble",
    "GradientBoostingRegressor": "sklearn.ensemble",
    "RandomForestRegressor": "sklearn.ensemble",
}
# The same names as an Enum, for config that refuses other names at launch (the Launchpad lists them).
SklearnModel = Enum("SklearnModel", {name: name for name in SKLEARN_MODELS}, type=str)
DEFAULT_SKLEARN_MODELS = ["LinearRegression", "Lasso"]


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
        "max_depth": scope.int(
            hp.quniform("max_depth", depth_low, depth_high, 1 if short == "GradientBoostingRegressor" else 5)
        ),
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


# The course's Booster space: (low, high) of each searched hyperparameter, and how it is drawn.
XGBOOST_SPACE: dict[str, tuple[str, float, float]] = {
    "colsample_bytree": ("uniform", 0.5, 1.0),
    "gamma": ("uniform", 0.1, 1.0),
    "learning_rate": ("loguniform", -3, 0),  # e^-3 .. 1, about 0.05 .. 1
    "max_depth": ("int", 4, 100),
    "min_child_weight": ("loguniform", -1, 3),
    "num_boost_round": ("int10", 500, 1000),
    "reg_alpha": ("loguniform", -5, -1),
    "reg_lambda": ("loguniform", -6, -1),
    "subsample": ("uniform", 0.1, 1.0),
}
INTEGER_XGBOOST_PARAMS = {"max_depth", "num_boost_round"}

# The most expensive point of that space: the deepest trees, the most rounds at the smallest
# learning rate, the lightest leaves, no subsampling. A budget has to hold even here.
DEEPEST_XGBOOST = {
    "max_depth": 100,
    "num_boost_round": 1000,
    "learning_rate": math.exp(-3),
    "min_child_weight": math.exp(-1),
    "gamma": 0.1,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "reg_alpha": math.exp(-5),
    "reg_lambda": math.exp(-6),
}


def check_fixed_xgboost_params(fixed: dict[str, float]) -> dict[str, float | int]:
    """Fixed hyperparameters as XGBoost takes them; ``ValueError`` names an unknown one or a value
    outside the course's space."""
    checked: dict[str, float | int] = {}
    for name, value in fixed.items():
        if name not in XGBOOST_SPACE:
            raise ValueError(f"unknown XGBoost hyperparameter {name!r}; the space has: {', '.join(XGBOOST_SPACE)}")
        kind, low, high = XGBOOST_SPACE[name]
        lowest, highest = (math.exp(low), math.exp(high)) if kind == "loguniform" else (low, high)
        if not lowest - 1e-12 <= float(value) <= highest + 1e-12:
            raise ValueError(f"{name} = {float(value):g} is outside the course's space [{lowest:.4g}, {highest:.4g}]")
        checked[name] = int(value) if name in INTEGER_XGBOOST_PARAMS else float(value)
    return checked


def xgboost_space(random_state: int, fixed: dict[str, float] | None = None) -> dict[str, Any]:
    """The course's Booster space; ``fixed`` pins some hyperparameters instead of searching them."""
    from hyperopt import hp
    from hyperopt.pyll import scope

    pinned = check_fixed_xgboost_params(fixed or {})
    draws = {
        "uniform": lambda name, low, high: hp.uniform(name, low, high),
        "loguniform": lambda name, low, high: hp.loguniform(name, low, high),
        "int": lambda name, low, high: scope.int(hp.quniform(name, low, high, 1)),
        "int10": lambda name, low, high: scope.int(hp.quniform(name, low, high, 10)),
    }
    space: dict[str, Any] = {"objective": "reg:squarederror", "random_state": random_state}
    for name, (kind, low, high) in XGBOOST_SPACE.items():
        space[name] = pinned[name] if name in pinned else draws[kind](name, low, high)
    return space


def describe_space(space: dict[str, Any]) -> dict[str, Any]:
    """A search space as plain values, for the record a model keeps of how it was searched:
    constants as they are, each searched hyperparameter as its distribution and bounds
    (``"quniform(1000, 5000, 100), int"``, ``"choice(True, False)"``)."""
    from hyperopt.pyll import Apply

    def describe(node) -> str:
        if not isinstance(node, Apply) or node.name == "literal":
            return repr(getattr(node, "obj", node))
        if node.name == "hyperopt_param":
            distribution = node.pos_args[1]
            return f"{distribution.name}({', '.join(describe(arg) for arg in distribution.pos_args)})"
        if node.name == "switch":  # hp.choice
            return f"choice({', '.join(describe(arg) for arg in node.pos_args[1:])})"
        inner = [describe(arg) for arg in node.pos_args]
        return f"{inner[0]}, int" if node.name == "int" else inner[0] if inner else node.name

    return {key: value if not isinstance(value, Apply) else describe(value) for key, value in space.items()}


def search_points(space: dict[str, Any], max_evaluations: int) -> tuple[int, list[dict[str, int]]]:
    """How many trials a search of ``space`` runs, and the points it evaluates first.

    A space whose searched hyperparameters are all ``hp.choice`` of constants (LinearRegression's
    ``fit_intercept``) has few points: each is tried once, as hyperopt points (each choice's index),
    when they number no more than ``max_evaluations``; TPE would only draw them again (10 trials of
    two points cost 5x the search). Any other space: ``max_evaluations`` TPE trials, none seeded.
    """
    import itertools

    from hyperopt.pyll import Apply

    choices: dict[str, range] = {}
    for value in space.values():
        if not isinstance(value, Apply):
            continue
        options = value.pos_args[1:]
        if value.name != "switch" or any(isinstance(o, Apply) and o.name != "literal" for o in options):
            return max_evaluations, []
        label = value.pos_args[0].pos_args[0].obj  # switch(hyperopt_param(label, randint(n)), *options)
        choices[label] = range(len(options))
    points = [dict(zip(choices, combination, strict=True)) for combination in itertools.product(*choices.values())]
    if len(points) > max_evaluations:
        return max_evaluations, []
    return len(points), points
