"""What the registered MLflow model carries so that it loads outside this project's environment:
the part of taxi_assets its load and predict path imports (MLflow's ``code_paths``) and the
distributions those modules import, pinned to the versions installed here. ``uv sync --locked``
installed exactly uv.lock's versions, in a checkout and in the image alike; reading the installed
ones needs no uv.lock beside the package and names what the model was saved with.

The modules are found by reading their imports, from ``ml/mlflow_model.py`` on. Not MLflow's
``infer_code_paths``: it records what one load happens to import, as files under the working
directory (none when the package is installed elsewhere), and misses imports inside functions
that the load did not run (skops when an XGBoost model is logged, XGBoost for a scikit-learn one).
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
MODEL_CODE = PACKAGE / "ml" / "mlflow_model.py"
# The package's own __init__ offers load_model() and friends, which need the whole package; the
# model gets a package of its own with nothing but this docstring.
PACKAGE_SHIM = '''"""The part of taxi_assets that its registered MLflow models carry: taxi_assets.ml's trip schema,
predictor and model files, enough to load a model and predict; the asset graph is not here."""
'''


class ModelCodeError(RuntimeError):
    """The model's code imports something this environment cannot name a distribution for."""


def imported_names(source: str, module: str) -> set[str]:
    """Every module name ``source`` (the module ``module``) imports, at module level or inside
    functions, relative imports made absolute; ``from a import b`` gives both ``a`` and ``a.b``
    (``b`` may be a module)."""
    package = module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_file(name: str, root: Path) -> Path | None:
    """The file of module ``name`` of the package at ``root`` (``taxi_assets.ml`` is
    ``ml/__init__.py``), or None when it is not one of the package's modules."""
    parts = name.split(".")
    if parts[0] != root.name:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def model_modules(entry: Path = MODEL_CODE, root: Path = PACKAGE) -> tuple[list[Path], set[str]]:
    """The package's files that the model's code imports, directly or through each other, with
    the ``__init__.py`` of every subpackage on the way (the package's own is ``PACKAGE_SHIM``),
    and the top-level names of the other modules they import."""
    files: set[Path] = set()
    outside: set[str] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        for name in imported_names(path.read_text(), _module_name(path, root)):
            parts = name.split(".")
            if parts[0] != root.name:
                outside.add(parts[0])
                continue
            # The module itself and the subpackages it lives in (`a.b.c`: a.b, a.b.c).
            on_the_way = [_module_file(".".join(parts[:end]), root) for end in range(2, len(parts) + 1)]
            for file in on_the_way:
                if file is not None and file != entry and file not in files:
                    files.add(file)
                    todo.append(file)
    return sorted(files), outside


def distributions(modules: set[str], providers: Mapping[str, list[str]]) -> list[str]:
    """The distributions that provide ``modules`` (top-level import names), the standard library
    left out. ``providers`` is ``importlib.metadata.packages_distributions()``. A module several
    distributions provide (``mlflow``: mlflow, mlflow-skinny, mlflow-tracing) is the one of its
    own name."""
    found = set()
    for module in sorted(modules - set(sys.stdlib_module_names)):
        names = providers.get(module)
        if not names:
            raise ModelCodeError(f"the model's code imports {module!r}, which no installed distribution provides")
        same = [name for name in names if _normalized(name) == _normalized(module)]
        if len(set(names)) > 1 and not same:
            raise ModelCodeError(f"the model's code imports {module!r}, which {sorted(set(names))} all provide")
        found.add(same[0] if same else names[0])
    return sorted(found, key=_normalized)


def _normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def pinned(names: list[str]) -> list[str]:
    """``name==version`` of each distribution, as installed here."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def model_requirements() -> list[str]:
    """The model's pip requirements: what its code imports, pinned to the installed versions."""
    _, outside = model_modules()
    return pinned(distributions(outside, importlib.metadata.packages_distributions()))


@contextmanager
def model_code_paths() -> Iterator[list[str]]:
    """MLflow ``code_paths`` for the model: a ``taxi_assets`` folder in a temporary directory
    with the modules the model imports and a package ``__init__`` of its own (``PACKAGE_SHIM``)."""
    files, _ = model_modules()
    with tempfile.TemporaryDirectory(prefix="taxi-model-code-") as scratch:
        package = Path(scratch) / PACKAGE.name
        package.mkdir()
        (package / "__init__.py").write_text(PACKAGE_SHIM)
        for file in files:
            target = package / file.relative_to(PACKAGE)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
        yield [str(package)]


@contextmanager
def without_the_projects_lock() -> Iterator[None]:
    """MLflow copies the uv.lock and pyproject.toml of the working directory (the project's, in a
    checkout and in the image) into every model it logs, and ``--env-manager uv`` then restores
    the model's environment with ``uv sync`` of them: the whole project, Dagster included, instead
    of the model's requirements. MLFLOW_LOG_UV_FILES=false is MLflow's switch for that copy."""
    saved = os.environ.get("MLFLOW_LOG_UV_FILES")
    os.environ["MLFLOW_LOG_UV_FILES"] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_LOG_UV_FILES", None)
        else:
            os.environ["MLFLOW_LOG_UV_FILES"] = saved
