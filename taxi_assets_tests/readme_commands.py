"""The README's set-up commands, read from its "Set-up" block: ``python3 -m taxi_assets_tests.readme_commands 2``
prints command 2 as one line. Used by ``under_load.sh`` and by the test that keeps the README's commands
equal to what ``.ci/run`` runs. Standard library only: it runs before anything is installed."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def setup_commands(text: str | None = None) -> dict[int, str]:
    """``{number: command}`` from the first ```bash block after "Set-up": each command follows a
    ``# N.`` comment; lines ending in a backslash continue it."""
    text = README.read_text() if text is None else text
    block = text.split("Set-up", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands: dict[int, str] = {}
    number, parts = None, []
    for line in block.splitlines():
        heading = re.match(r"#\s*(\d+)\.", line.strip())
        if heading:
            number, parts = int(heading.group(1)), []
            continue
        if number is None or line.strip().startswith("#") or not line.strip():
            continue
        parts.append(line.strip().removesuffix("\\").strip())
        if not line.rstrip().endswith("\\"):
            commands[number] = " ".join(parts)
            number, parts = None, []
    return commands


if __name__ == "__main__":
    print(setup_commands()[int(sys.argv[1])])
