"""What the README and command 1's summary tell a newcomer to run next is installed by command 1.

Command 1 installs the project without extras (`uv sync --locked` from uv.lock): every
`.venv/bin/<tool>` those next steps name must come from a package in that install, or the first
next step fails with "No such file or directory" (it did: `dg` came only with the dev extra).
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "taxi-assets"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_by_command_1() -> set[str]:
    """The packages `uv sync --locked` (no extras) installs: the project's dependencies in
    uv.lock, followed through each package's own (and the extras its dependents ask of it)."""
    packages = {_normal(p["name"]): p for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]}
    wanted: list[tuple[str, tuple[str, ...]]] = [(PROJECT, ())]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while wanted:
        name, extras = wanted.pop()
        if (name, extras) in seen or name not in packages:
            continue
        seen.add((name, extras))
        package = packages[name]
        entries = list(package.get("dependencies", []))
        for extra in extras:
            entries += package.get("optional-dependencies", {}).get(extra, [])
        wanted += [(_normal(entry["name"]), tuple(entry.get("extra", []))) for entry in entries]
    return {name for name, _ in seen}


def next_step_tools() -> set[str]:
    """Each `.venv/bin/<tool>` in the README's "What to do next" block and the summary's NEXT_STEPS."""
    from taxi_assets.apps.cli import NEXT_STEPS

    readme = (ROOT / "README.md").read_text().split("## What to do next", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"\.venv/bin/([\w.-]+)", readme + NEXT_STEPS))


def provider(tool: str) -> str:
    """The distribution whose console script ``tool`` is (in this environment)."""
    for entry in metadata.entry_points(group="console_scripts"):
        if entry.name == tool and entry.dist is not None:
            return _normal(entry.dist.metadata["Name"])
    pytest.fail(f"no installed package provides {tool!r}")


def test_the_next_steps_name_the_ui_and_the_cli():
    assert {"dg", "taxi-assets"} <= next_step_tools()


@pytest.mark.parametrize("tool", sorted(next_step_tools()))
def test_each_next_step_tool_comes_with_command_1(tool):
    main = installed_by_command_1()
    assert provider(tool) in main, f"{tool} comes from {provider(tool)}, which command 1 does not install"


def test_the_dev_tools_are_not_in_command_1():
    """The closure is computed, not everything in the lock: pytest is a dev tool only."""
    main = installed_by_command_1()
    assert "dagster" in main and "pytest" not in main and "ruff" not in main
