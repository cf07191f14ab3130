"""What the registered MLflow model carries: the modules its code imports and pinned requirements."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from taxi_assets.lib.model_code import (
    PACKAGE,
    ModelCodeError,
    distributions,
    imported_names,
    model_code_paths,
    model_modules,
    model_requirements,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_imports_are_read_at_module_level_inside_functions_and_relative():
    source = """
import numpy as np
from collections.abc import Mapping
from . import sibling
from ..other import thing

def load():
    import skops.io
    from taxi_assets.ml.predictor import TripDurationPredictor
"""
    names = imported_names(source, "taxi_assets.ml.model_files")
    assert {"numpy", "collections.abc", "taxi_assets.ml", "taxi_assets.ml.sibling", "taxi_assets.other"} <= names
    assert {"taxi_assets.other.thing", "skops.io", "taxi_assets.ml.predictor.TripDurationPredictor"} <= names


def test_the_model_carries_the_ml_modules_it_imports_and_nothing_of_the_asset_graph():
    files, outside = model_modules()
    names = {str(path.relative_to(PACKAGE)) for path in files}
    assert {"ml/__init__.py", "ml/trip_record.py", "ml/model_files.py", "ml/predictor.py", "ml/vectorizing.py"} <= names
    assert all(name.startswith("ml/") for name in names), names  # not the package's __init__, lib/, defs/, apps/
    assert "ml/training.py" not in names and "ml/mlflow_model.py" not in names
    assert {"mlflow", "xgboost", "sklearn", "skops", "pydantic"} <= outside and "dagster" not in outside


def test_requirements_are_what_the_code_imports_pinned_to_uv_lock():
    locked = {p["name"]: p["version"] for p in tomllib.loads((REPO_ROOT / "uv.lock").read_text())["package"]}
    pins = dict(requirement.split("==") for requirement in model_requirements())
    assert pins == {name: locked[name] for name in pins}
    assert set(pins) == {"mlflow", "numpy", "pandas", "pydantic", "scikit-learn", "scipy", "skops", "xgboost"}


def test_a_module_is_named_by_its_own_distribution_or_refused():
    providers = {
        "mlflow": ["mlflow-skinny", "mlflow", "mlflow-tracing"],
        "sklearn": ["scikit-learn"],
        "yaml": ["a", "b"],
    }
    assert distributions({"mlflow", "sklearn", "json", "__future__"}, providers) == ["mlflow", "scikit-learn"]
    with pytest.raises(ModelCodeError, match="'yaml', which \\['a', 'b'\\] all provide"):
        distributions({"yaml"}, providers)
    with pytest.raises(ModelCodeError, match="imports 'nowhere', which no installed distribution provides"):
        distributions({"nowhere"}, providers)


def test_the_carried_code_loads_a_predictor_on_its_own_without_dagster(tmp_path):
    """The copy alone (the package itself out of reach) imports what a model's load and predict
    run, and nothing of Dagster's."""
    script = """
import json, sys
sys.path.insert(0, sys.argv[1])
import taxi_assets.ml.model_files, taxi_assets.ml.predictor, taxi_assets.ml.trip_record, taxi_assets.ml.vectorizing
ours = sorted(name for name in sys.modules if name.startswith("taxi_assets"))
print(json.dumps({"files": [sys.modules[name].__file__ for name in ours],
                  "dagster": any(name.split(".")[0] == "dagster" for name in sys.modules)}))
"""
    with model_code_paths() as [package]:
        # -I: neither the working directory nor the environment's settings put the checkout on sys.path.
        done = subprocess.run(
            [sys.executable, "-I", "-c", script, str(Path(package).parent)],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        loaded = json.loads(done.stdout)
        assert loaded["files"] and all(file.startswith(package) for file in loaded["files"]), loaded["files"]
        assert not loaded["dagster"]
