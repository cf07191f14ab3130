"""The front door: the README stays short, its commands are what .ci/run runs and what the CLI
accepts, and every link in it and in docs/ leads somewhere."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from taxi_assets_tests.helpers import REPO_ROOT
from taxi_assets_tests.readme_commands import setup_commands

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_the_readme_is_read_in_ten_minutes():
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= 150


def test_command_2_is_what_ci_runs_and_command_1_is_a_valid_cli_call():
    commands = setup_commands()
    assert commands[2] in (REPO_ROOT / ".ci" / "run").read_text()
    words = shlex.split(commands[1].split("&&")[-1])
    start = words.index(".venv/bin/taxi-assets") + 1
    assert words[start] == "materialize"
    # The CLI accepts these arguments (its parser only: nothing runs).
    from taxi_assets.apps.cli import build_parser

    parsed = build_parser().parse_args(words[start:])
    assert parsed.select == "all" and parsed.partition == ["2024-02"]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_leads_somewhere(page: Path):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"https?://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in anchors(linked), f"{page.name}: {target}: no heading with that anchor"
