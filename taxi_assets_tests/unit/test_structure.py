"""The package's shape: who may import whom, and that importing does no work."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "taxi_assets"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every taxi_assets module a file imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "taxi_assets" or name.startswith("taxi_assets.")}


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}
GRAPH = {
    name: {target for target in imports_of(path) if target in MODULES and target != name}
    for name, path in MODULES.items()
}


def test_no_import_cycles():
    visiting, done, cycles = set(), set(), []

    def visit(node, trail):
        if node in done:
            return
        if node in visiting:
            cycles.append(trail[trail.index(node) :] + [node])
            return
        visiting.add(node)
        for target in GRAPH[node]:
            # A package's __init__ importing nothing but itself is not a cycle.
            visit(target, trail + [node])
        visiting.discard(node)
        done.add(node)

    for name in GRAPH:
        visit(name, [])
    assert not cycles, cycles


LAYERS = ("ml", "lib", "defs", "apps")  # upwards: each may import only the ones before it
# The package's entry points: the package, the code location, and what the training jobs'
# forkserver imports (the code location, built once for every step process it forks).
TOP_LEVEL = {"taxi_assets", "taxi_assets.definitions", "taxi_assets.step_server"}


def layer(name: str) -> str:
    for prefix in (f"taxi_assets.{name}" for name in LAYERS):
        if name == prefix or name.startswith(prefix + "."):
            return prefix.rsplit(".", 1)[1]
    return name


def test_every_module_is_in_a_layer():
    """Nothing lives outside the four layers but the package's entry points."""
    assert {name for name in MODULES if layer(name) not in LAYERS} == TOP_LEVEL


def test_dagsters_private_api_is_used_in_one_module():
    """`dagster._...` breaks first on an upgrade: only lib/dagster_private.py may name it, and it
    imports none of it when it loads (each use resolves it inside a guard)."""
    users = {name for name, path in MODULES.items() if "dagster._" in path.read_text()}
    assert users == {"taxi_assets.lib.dagster_private"}
    guarded = ast.parse(MODULES["taxi_assets.lib.dagster_private"].read_text())
    assert not [
        node
        for node in guarded.body
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any("dagster._" in part for part in _imported(node))
    ]


INSTANCE_FILES = ("dagster.yaml", "deploy/dagster.yaml", "deploy/dagster-ecs.yaml")


def _modules_named(document) -> list[str]:
    if isinstance(document, dict):
        named = [document["module"]] if isinstance(document.get("module"), str) else []
        return named + [name for value in document.values() for name in _modules_named(value)]
    if isinstance(document, list):
        return [name for value in document for name in _modules_named(value)]
    return []


@pytest.mark.parametrize("path", INSTANCE_FILES)
def test_instance_files_name_public_modules_only(path):
    """No instance file names a private (`dagster._...`) or legacy (`dagster.core...`) module, and
    every class it names can be imported from the module it names."""
    import importlib

    import yaml

    document = yaml.safe_load((PACKAGE.parent / path).read_text())
    named = _modules_named(document)
    assert "dagster" in named  # the run coordinator, at least
    for module in named:
        assert not any(part.startswith("_") for part in module.split(".")), (path, module)
        assert not module.startswith("dagster.core"), (path, module)
    for section in document.values():
        if isinstance(section, dict) and "module" in section and "class" in section:
            assert hasattr(importlib.import_module(section["module"]), section["class"]), (path, section)


def _imported(node) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return [alias.name for alias in node.names]


def test_build_defs_keeps_every_field_of_the_loaded_definitions():
    import inspect

    import dagster as dg

    from taxi_assets.definitions import build_defs
    from taxi_assets.lib.sources import LocalTripSource

    source = LocalTripSource(directory="/nowhere")
    plain, replaced = build_defs(), build_defs(trip_source=source)
    fields = [name for name in inspect.signature(dg.Definitions.__new__).parameters if name != "cls"]
    for name in fields:
        if name == "resources":
            assert replaced.resources["trip_source"] is source
            assert set(replaced.resources) == set(plain.resources)
        elif name not in ("assets", "asset_checks", "jobs", "sensors", "schedules"):
            assert getattr(replaced, name) == getattr(plain, name), name
        else:
            assert len(list(getattr(replaced, name) or [])) == len(list(getattr(plain, name) or [])), name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_layers_import_only_downwards(name):
    targets = GRAPH[name]
    code_location = {t for t in targets if t == "taxi_assets.definitions" or layer(t) == "defs"}
    if name not in ("taxi_assets.definitions", "taxi_assets.step_server"):
        # Nobody imports the code location but the code location itself (and the step processes'
        # server, which builds it): defs modules import no other defs module (asset modules are
        # not libraries), clients none at all.
        assert not code_location, f"{name} imports {sorted(code_location)}"
    if layer(name) == "ml":
        assert {layer(t) for t in targets} <= {"ml"}, f"{name}: ml/ is plain Python, it imports {sorted(targets)}"
        source = MODULES[name].read_text()
        assert "import dagster" not in source and "from dagster" not in source
    if layer(name) == "lib":
        assert not {t for t in targets if layer(t) in ("defs", "apps")}, f"{name} imports {sorted(targets)}"
    if layer(name) == "apps":
        assert not {t for t in targets if t == "taxi_assets.definitions"}, f"{name} imports the code location"


def test_clients_never_build_the_code_location():
    script = (
        "import sys\n"
        "import taxi_assets, taxi_assets.apps.server, taxi_assets.apps.api, taxi_assets.apps.cli, taxi_assets.lib.model_store, taxi_assets.apps.lineage\n"
        "loaded = sorted(m for m in sys.modules if m == 'taxi_assets.definitions' or m.startswith('taxi_assets.defs'))\n"
        "print(loaded)\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    usage = subprocess.run(
        [Path(sys.executable).parent / "taxi-assets", "--help"], capture_output=True, text=True, timeout=600
    )
    assert usage.returncode == 0 and "materialize" in usage.stdout


def test_importing_does_no_work():
    """Importing every module starts no thread, installs no warnings filter, switches no
    allocator or plotting backend; the sensor's interval is read when the definitions load."""
    names = sorted(MODULES)
    script = f"""
import importlib, os, sys, threading, warnings
import pyarrow as pa
# The libraries our modules import at module level install their own filters: import them first.
import dagster, mlflow.pyfunc, numpy, pandas, pydantic, scipy.sparse, sklearn.feature_extraction, starlette  # noqa
before = (threading.active_count(), list(warnings.filters), pa.default_memory_pool().backend_name)
for name in {names!r}:
    importlib.import_module(name)
after = (threading.active_count(), list(warnings.filters), pa.default_memory_pool().backend_name)
assert before == after, (before, after)
assert "matplotlib" not in sys.modules, "matplotlib was imported"
os.environ["TAXI_SENSOR_INTERVAL_SECONDS"] = "17"
from taxi_assets.definitions import build_defs
assert build_defs().get_sensor_def("new_trip_data_sensor").minimum_interval_seconds == 17
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in __import__("os").environ.items() if k != "TAXI_SENSOR_INTERVAL_SECONDS"},
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr[-3000:]


def test_resource_descriptions_read_as_plain_text():
    """The UI shows a resource's docstring as its description, verbatim: no reST markup."""
    from taxi_assets.definitions import build_defs

    for name, resource in build_defs().resources.items():
        description = getattr(resource, "description", None) or type(resource).__doc__ or ""
        assert "`" not in description, (name, description)


def test_the_step_processes_server_preloads_quietly():
    """What the training jobs' forkserver preloads imports, builds the code location and warns of
    nothing: a warning there is printed once per run in the run worker's log (dg dev shows it)."""
    from taxi_assets.defs.automation import STEP_PRELOAD

    script = "import importlib\n" + "".join(f"importlib.import_module({name!r})\n" for name in STEP_PRELOAD)
    done = subprocess.run([sys.executable, "-W", "default", "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr[-3000:]
