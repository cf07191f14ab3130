"""Keeping the assets' code versions honest.

Each asset's *logic* is the code that decides what it computes: its function and the functions,
classes and modules of ``taxi_assets.ml`` it calls (listed in ``LOGIC``). The logic's fingerprint is
a hash of its syntax tree without docstrings, comments and log calls, so rewording a docstring or
a log line changes nothing, while a cleaning bound, a feature or the search space does.
``code_versions.json`` records, per asset, the code version and the fingerprints it was checked
with; ``unit/test_code_versions.py`` fails when a fingerprint changed and the code version in
``taxi_assets/lib/catalog.py`` did not.

    python -m taxi_assets_tests.code_versions --update   # after bumping a code version
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "taxi_assets"
LOCK = Path(__file__).resolve().parent / "code_versions.json"

TRAINING = [
    "taxi_assets.ml.training:_tune",
    "taxi_assets.ml.training:_seeded_trials",
    "taxi_assets.ml.training:regression_metrics",
    "taxi_assets.ml.hyperparameters",
    "taxi_assets.ml.predictor:TripDurationPredictor",
    "taxi_assets.defs.training.assets:post_search_reserve",
    "taxi_assets.defs.training.assets:_train_tracked",
    "taxi_assets.defs.training.assets:_score",
]
LOGIC: dict[str, list[str]] = {
    "raw_trips": [
        "taxi_assets.defs.data.assets:raw_trips",
        "taxi_assets.ml.schema",
        "taxi_assets.ml.trip_files:read_trip_file",
    ],
    "cleaned_trips": [
        "taxi_assets.defs.data.assets:cleaned_trips",
        "taxi_assets.ml.cleaning",
        "taxi_assets.ml.features:combine_features",
    ],
    "training_set": [
        "taxi_assets.defs.data.assets:training_set",
        "taxi_assets.ml.dataset",
        "taxi_assets.ml.vectorizing",
        "taxi_assets.ml.splitting",
        "taxi_assets.ml.features",
    ],
    "sklearn_models": [
        *TRAINING,
        "taxi_assets.defs.training.assets:SklearnModelsConfig",
        "taxi_assets.defs.training.assets:load_models",
        "taxi_assets.defs.training.assets:tune_and_train",
        "taxi_assets.ml.training:TREE_BATCH",
        "taxi_assets.ml.training:fit_sklearn",
        "taxi_assets.ml.training:tune_sklearn",
    ],
    "xgboost_model": [
        *TRAINING,
        "taxi_assets.defs.training.assets:XGBoostConfig",
        "taxi_assets.defs.training.assets:xgboost_model",
        "taxi_assets.ml.training:XGBOOST_FIRST_TRIAL",
        "taxi_assets.ml.training:train_booster",
        "taxi_assets.ml.training:tune_xgboost",
        "taxi_assets.ml.training:SEARCH_ROWS",
        "taxi_assets.ml.training:ALL_ROWS_SHARE",
        "taxi_assets.ml.training:search_matrices",
        "taxi_assets.ml.training:boost_on_all_rows",
        "taxi_assets.defs.training.assets:_warm_start",
        "taxi_assets.ml.warm_start",
    ],
    "production_model": [
        "taxi_assets.defs.serving.assets",
        "taxi_assets.ml.champion",
        "taxi_assets.ml.predictor:DistanceLookup",
        "taxi_assets.ml.predictor:distance_thresholds",
        "taxi_assets.ml.predictor:compile_lookup",
        "taxi_assets.ml.steering",
    ],
    "serving_decision": ["taxi_assets.defs.serving.steering:serving_decision", "taxi_assets.ml.steering"],
    "trip_predictions": [
        "taxi_assets.defs.monitoring.assets:trip_predictions",
        "taxi_assets.defs.monitoring.assets:_shadow",
        "taxi_assets.ml.monitoring",
        "taxi_assets.ml.steering",
    ],
    "model_performance": ["taxi_assets.defs.monitoring.assets:model_performance", "taxi_assets.ml.monitoring"],
    "pipeline_health": ["taxi_assets.defs.observability.assets"],
}


def _path(module: str) -> Path:
    relative = Path(*module.split(".")[1:])
    package = PACKAGE / relative / "__init__.py"
    return package if package.exists() else PACKAGE / relative.with_suffix(".py")


def _named(tree: ast.Module, name: str) -> ast.AST:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return node
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(target, ast.Name) and target.id == name for target in targets):
                return node
    raise LookupError(f"no top-level {name!r}")


def _is_log_call(node: ast.AST) -> bool:
    """``context.log.info(...)``, ``logger.warning(...)``, ``log(...)``: statements that only say."""
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
        return False
    text = ast.unparse(node.value.func)
    return ".log." in f".{text}." or text.startswith(("logger.", "log.", "print"))


class _Strip(ast.NodeTransformer):
    """Drops docstrings and log statements (keeping at least a ``pass`` in each body)."""

    def generic_visit(self, node):
        super().generic_visit(node)
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
            kept = [
                statement
                for index, statement in enumerate(body)
                if not _is_log_call(statement)
                and not (
                    index == 0
                    and isinstance(statement, ast.Expr)
                    and isinstance(statement.value, ast.Constant)
                    and isinstance(statement.value.value, str)
                )
            ]
            node.body = kept or [ast.Pass()]
        return node


def fingerprint_source(source: str, name: str | None = None) -> str:
    """The fingerprint of ``source`` (or of its top-level ``name``): docstrings, comments and log
    statements do not count."""
    tree = ast.parse(source)
    node = _named(tree, name) if name else tree
    stripped = _Strip().visit(ast.parse(ast.unparse(node)))
    return hashlib.sha256(ast.dump(stripped, annotate_fields=False).encode()).hexdigest()[:16]


def fingerprint(target: str) -> str:
    module, _, name = target.partition(":")
    return fingerprint_source(_path(module).read_text(), name or None)


def fingerprints() -> dict[str, dict[str, str]]:
    return {asset: {target: fingerprint(target) for target in targets} for asset, targets in LOGIC.items()}


def update() -> None:
    spec = importlib.util.spec_from_file_location("catalog", PACKAGE / "lib" / "catalog.py")
    assert spec and spec.loader
    catalog = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(catalog)
    lock = {
        asset: {"code_version": catalog.CODE_VERSIONS[asset], "logic": logic} for asset, logic in fingerprints().items()
    }
    LOCK.write_text(json.dumps(lock, indent=1, sort_keys=True) + "\n")
    print(f"recorded the logic of {len(lock)} assets in {LOCK}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        raise SystemExit(__doc__)
    update()
