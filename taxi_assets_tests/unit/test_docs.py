"""The docs say what the code does: the lists, versions, paths, defaults and commands in README.md
and docs/ are read from the pages and compared with the code location and the package's sources,
so a test fails when either drifts. Nothing runs: no materialization, no trip data."""

from __future__ import annotations

import ast
import inspect
import json
import re
import shlex
from pathlib import Path

import pytest

from taxi_assets_tests.helpers import REPO_ROOT
from taxi_assets_tests.unit.test_readme import PAGES
from taxi_assets_tests.unit.test_structure import GRAPH, MODULES, PACKAGE, layer

README = REPO_ROOT / "README.md"
LAYOUT = REPO_ROOT / "docs" / "layout.md"
SERVING = REPO_ROOT / "docs" / "retraining-and-serving.md"
TESTING = REPO_ROOT / "docs" / "testing-and-benchmarks.md"
FRAMEWORKS = {"starlette", "fastapi", "flask", "django", "quart", "sanic", "litestar", "aiohttp", "falcon", "bottle"}


def code_blocks(page: Path, language: str | None = None) -> list[str]:
    """The fenced blocks of ``page`` (only those marked ``language``, if given)."""
    return [
        body for lang, body in re.findall(r"```(\w*)\n(.*?)```", page.read_text(), re.S) if language in (None, lang)
    ]


def prose(page: Path) -> str:
    """``page`` without its fenced blocks, lines joined: sentences wrap freely."""
    return " ".join(re.sub(r"```.*?```", "", page.read_text(), flags=re.S).split())


def module_of(path: str) -> str:
    """``lib/catalog.py`` or ``taxi_assets/lib/catalog.py`` -> ``taxi_assets.lib.catalog``."""
    return "taxi_assets." + path.removeprefix("taxi_assets/").removesuffix(".py").replace("/", ".")


# --- The README's graph: which assets are not partitioned ------------------------------------------


def test_the_readme_names_every_unpartitioned_asset():
    from taxi_assets.definitions import build_defs  # what `defs` returns, without the code server's patch
    from taxi_assets.lib.months import FIRST_MONTH

    specs = build_defs().resolve_all_asset_specs()
    unpartitioned = {spec.key.to_user_string() for spec in specs if spec.partitions_def is None}
    sentence = re.search(r"Every asset but (.+?) is partitioned by month \(`([\d-]+)` onwards\)", prose(README))
    assert sentence, "README.md: no 'Every asset but ... is partitioned by month' sentence"
    assert set(re.findall(r"`(\w+)`", sentence.group(1))) == unpartitioned
    assert sentence.group(2) == FIRST_MONTH


# --- The lineage samples: what `taxi-assets lineage` prints today ----------------------------------


def lineage_samples() -> list:
    return [
        pytest.param(page.name, block, id=page.name)
        for page in PAGES
        for block in code_blocks(page)
        if "taxi-assets lineage" in block and "  code versions: " in block
    ]


@pytest.mark.parametrize(("page", "sample"), lineage_samples())
def test_lineage_samples_show_the_current_code_versions(page, sample):
    """The sample's header and code versions are what ``ModelLineage.text()`` prints for a model
    trained now (tags from ``lib/lineage.model_lineage``, the code versions of lib/catalog.py),
    and its lines come in the order and with the labels it prints."""
    import dagster as dg

    from taxi_assets.apps.lineage import ModelLineage
    from taxi_assets.lib.lineage import model_lineage

    lines = sample.split("\n", 1)[1].splitlines()  # after the `$ taxi-assets lineage ...` prompt
    header = re.match(r"(\S+) v(\d+): (\w+), trained for (\d{4}-\d\d)$", lines[0])
    assert header, f"{page}: the sample's first line is not a lineage header: {lines[0]!r}"
    registered, version, asset, month = header.groups()
    with dg.instance_for_test() as instance:
        tags = model_lineage(instance, month, asset, config={}, fit={})
    printed = ModelLineage(registered, version, tags, run_id="run").text().splitlines()
    assert lines[0] == printed[0]
    [shown] = [line for line in lines if line.startswith("  code versions: ")]
    [now] = [line for line in printed if line.startswith("  code versions: ")]
    assert shown == now, f"{page}: the sample's code versions are not the code's"

    def labels(text_lines):
        return [line.split(":", 1)[0] for line in text_lines[1:] if re.match(r"  \w", line)]

    assert labels(lines) == labels(printed), page


# --- docs/layout.md: the tree names every module, each where it is ----------------------------------

ENTRY_INDENT_AT_MOST = 8  # entries sit at 0, 2, 4; a deeper line continues the description above it


def layout_tree() -> tuple[set[str], set[str], str]:
    """From layout.md's tree: the paths of its entries (files and folders), the paths of every
    ``*.py`` it names (beside the entry's file, or inside the entry's folder), and the text of
    the ``ml/`` entry (its modules are named without ``.py``)."""
    [tree] = [block for block in code_blocks(LAYOUT) if block.startswith("taxi_assets/")]
    entries, modules, ml_text = set(), set(), ""
    folders: list[tuple[int, str]] = []  # (indent, path) of the folders above the line
    where = ""
    for line in tree.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= ENTRY_INDENT_AT_MOST:
            while folders and folders[-1][0] >= indent:
                folders.pop()
            parent = folders[-1][1] if folders else ""
            first = line.split()[0].rstrip(",")
            entries.add(parent + first)
            if first.endswith("/"):
                folders.append((indent, parent + first))
                where = parent + first
            else:
                where = parent
        if where == "taxi_assets/ml/":
            ml_text += " " + line.strip()
        modules |= {where + name for name in re.findall(r"\b\w+\.py\b", line)}
    return entries, modules, ml_text


def package_modules() -> set[str]:
    """Every module file of the package, as a path from the checkout (no ``__init__.py``)."""
    return {path.relative_to(REPO_ROOT).as_posix() for path in PACKAGE.rglob("*.py") if path.name != "__init__.py"}


def test_every_path_layout_md_names_exists():
    entries, modules, _ = layout_tree()
    missing = sorted(path for path in entries | modules if not (REPO_ROOT / path).exists())
    assert not missing, f"docs/layout.md names what is not there: {missing}"
    # Paths named in the prose, e.g. `lib/catalog.py` or `taxi_assets_tests/unit/test_structure.py`.
    for path in re.findall(r"`([\w/]+\.py)`", prose(LAYOUT)):
        assert (REPO_ROOT / path).exists() or (PACKAGE / path).exists(), f"docs/layout.md: {path} does not exist"


def test_layout_md_names_every_module_of_the_package():
    _, modules, ml_text = layout_tree()
    ml = {path for path in package_modules() if path.startswith("taxi_assets/ml/")}
    unnamed = sorted(package_modules() - ml - modules)
    assert not unnamed, f"docs/layout.md's tree leaves out {unnamed}"
    assert {path for path in modules if path.startswith("taxi_assets/lib/")} == {
        path for path in package_modules() if path.startswith("taxi_assets/lib/")
    }
    # ml/ lists its modules by name: "plain Python, no Dagster: trip_record (...), schema, ...".
    listed = re.sub(r"\([^)]*\)", "", ml_text.split("no Dagster:", 1)[1])
    named = {item.strip() for item in re.split(r"[,;]|\band\b", listed) if item.strip()}
    assert named == {Path(path).stem for path in ml}, "docs/layout.md's ml/ entry and taxi_assets/ml/ differ"


def test_layout_md_names_who_imports_and_who_loads_the_code_location():
    text = prose(LAYOUT)
    code_location = {name for name in MODULES if name == "taxi_assets.definitions" or layer(name) == "defs"}
    importers = {name for name, targets in GRAPH.items() if name not in code_location and targets & code_location}
    said = re.search(r"Only (.+?) imports the code location", text)
    assert said, "docs/layout.md: no 'Only ... imports the code location' sentence"
    assert {module_of(path) for path in re.findall(r"`([\w/]+\.py)`", said.group(1))} == importers

    # Loaded by name, not imported: the modules that use CODE_LOCATION_MODULE (catalog.py defines it).
    loaders = {
        name
        for name, path in MODULES.items()
        if name != "taxi_assets.lib.catalog"
        and any(
            isinstance(node, ast.Name) and node.id == "CODE_LOCATION_MODULE"
            for node in ast.walk(ast.parse(path.read_text()))
        )
    }
    said = re.search(r"\(([^()]*)\) load the code location by module name", text)
    assert said, "docs/layout.md: no '(...) load the code location by module name' sentence"
    assert {module_of(path) for path in re.findall(r"`([\w/]+\.py)`", said.group(1))} == loaders


# --- The inference server: what runs it, where it binds, its flags ---------------------------------


def serve_options() -> dict[str, object]:
    """``taxi-assets serve``'s options and their defaults, as its parser gives them."""
    from taxi_assets.apps.cli import build_parser

    parsed = vars(build_parser().parse_args(["serve"]))
    parsed.pop("command")
    return parsed


def test_the_server_is_described_as_the_code_makes_it():
    from taxi_assets.apps import server

    paragraph = re.search(r"\*\*Inference server\.\*\* `taxi-assets serve` \((.+?)\) serves", prose(SERVING))
    assert paragraph, "docs/retraining-and-serving.md: no '**Inference server.** `taxi-assets serve` (...)'"
    described = paragraph.group(1)
    source = Path(inspect.getfile(server)).read_text()
    imported = {
        name.split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for name in ([node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names])
    }
    # Plain ASGI: no web framework anywhere in the module, and the docs name none.
    assert not imported & FRAMEWORKS, sorted(imported & FRAMEWORKS)
    assert "plain ASGI" in described and "plain ASGI" in (server.__doc__ or "")
    assert not any(framework in described.lower() for framework in FRAMEWORKS), described
    # What runs it: the ASGI server serve() starts.
    runner = {name for name in imported if name in ("uvicorn", "hypercorn", "granian", "daphne")}
    assert runner == {"uvicorn"} and "uvicorn.Server" in inspect.getsource(server.serve)
    assert "run by uvicorn" in described
    # Where it binds by default: serve()'s defaults, which the CLI's must equal.
    bound = re.search(r"bound to ([\d.]+):(\d+) by default", described)
    assert bound, described
    defaults = inspect.signature(server.serve).parameters
    options = serve_options()
    assert (bound.group(1), int(bound.group(2))) == (defaults["host"].default, defaults["port"].default)
    assert (options["host"], options["port"]) == (defaults["host"].default, defaults["port"].default)
    # Its flags: every option of `taxi-assets serve`, no other.
    flags = {flag.removeprefix("--").replace("-", "_") for flag in re.findall(r"`(--[\w-]+)`", described)}
    assert flags == set(options)
    # The README's "on http://HOST:PORT" after `taxi-assets serve &`.
    [readme] = re.findall(r"taxi-assets serve &.*?on (http://[\d.:]+)", README.read_text())
    assert readme == f"http://{defaults['host'].default}:{defaults['port'].default}"


# --- The lookup table, as the docs describe its size ------------------------------------------------


def test_the_lookup_table_has_the_shape_the_docs_give():
    """One row per zone pair the trees split on plus the row the others share with unseen pairs, by
    the distance thresholds plus one; the docs give that, and no fixed size that would go stale."""
    import numpy as np
    import pandas as pd
    import xgboost as xgb

    from taxi_assets.ml import vectorizing
    from taxi_assets.ml.predictor import TripDurationPredictor, compile_lookup, distance_thresholds, split_columns

    text = prose(SERVING)
    assert "one row per zone pair the trees split on" in text and "the distance thresholds plus one" in text
    assert not re.search(r"\d[\d,]* pairs x \d+ intervals", text), "a table size figure: it changes with each booster"
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "PU_DO": [f"{a}_{b}" for a, b in rng.integers(1, 12, size=(2_000, 2))],
            "trip_distance": rng.gamma(2, 1.5, 2_000),
        }
    )
    matrix, vectorizer = vectorizing.fit_transform(frame)
    minutes = 3 + 2.5 * frame["trip_distance"].to_numpy() + (frame["PU_DO"] == "1_1") * 9 + rng.normal(0, 1, 2_000)
    booster = xgb.train({"max_depth": 3, "nthread": 1}, xgb.DMatrix(matrix, label=minutes), num_boost_round=4)
    predictor = TripDurationPredictor("xgboost", "xgboost", booster, vectorizer)
    lookup, message = compile_lookup(predictor, frame)
    assert lookup is not None, message
    trees = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    pairs = {
        name.removeprefix("PU_DO=")
        for name, column in vectorizer.vocabulary_.items()
        if name.startswith("PU_DO=") and column in split_columns(trees)
    }
    assert 0 < len(pairs) < frame["PU_DO"].nunique()  # the case the docs describe: some pairs get no row
    assert set(lookup.rows) == pairs
    assert lookup.table.dtype == np.float32
    assert lookup.table.shape == (len(pairs) + 1, len(distance_thresholds(predictor)) + 1)


# --- The testing page's deadlines are the tests' -----------------------------------------------------


def test_the_deadlines_the_testing_page_gives_are_the_tests():
    """The time-bound promises the long tier asserts (read from the tests' syntax trees, not run):
    the budgets and their slack in integration/test_models.py, the interrupt deadlines in
    integration/test_lifecycle.py, all as the testing page gives them."""
    text = prose(TESTING)
    models = ast.parse((REPO_ROOT / "taxi_assets_tests" / "integration" / "test_models.py").read_text())
    [slack] = [
        node.value.value
        for node in models.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and any(isinstance(target, ast.Name) and target.id == "BUDGET_SLACK_SECONDS" for target in node.targets)
    ]
    assert f"within the budget plus {slack} s" in text and f"plus the {slack} s slack (`BUDGET_SLACK_SECONDS`" in text
    budgets = {
        node.left.value
        for node in ast.walk(models)
        if isinstance(node, ast.BinOp)
        and isinstance(node.right, ast.Name)
        and node.right.id == "BUDGET_SLACK_SECONDS"
        and isinstance(node.left, ast.Constant)
    }
    assert budgets, "test_models.py asserts no budget plus BUDGET_SLACK_SECONDS"
    for budget in budgets:
        assert re.search(rf"\b{budget:g} s\b", text), f"the testing page does not give the {budget:g} s budget"
    lifecycle = ast.parse((REPO_ROOT / "taxi_assets_tests" / "integration" / "test_lifecycle.py").read_text())
    deadlines = {
        compare.comparators[0].value
        for node in ast.walk(lifecycle)
        if isinstance(node, ast.Assert)
        for compare in ast.walk(node.test)
        if isinstance(compare, ast.Compare)
        and isinstance(compare.ops[0], (ast.Lt, ast.LtE))
        and isinstance(compare.comparators[0], ast.Constant)
        and isinstance(compare.left, ast.BinOp)
        and isinstance(compare.left.op, ast.Sub)  # a time between two instants: `ended - asked < 10`
    }
    assert deadlines, "test_lifecycle.py asserts no deadline"
    for deadline in deadlines:
        assert f"within {deadline:g} s" in text, f"the testing page does not give the {deadline:g} s deadline"


# --- Every `taxi-assets ...` command in a bash block parses -----------------------------------------

OPERATORS = {"&", "&&", "|", "||", ";", ">", ">>", "<", "(", ")"}


def cli_commands() -> list[tuple[str, list[str]]]:
    """``(page, arguments)`` of every ``taxi-assets`` call in the pages' bash blocks."""
    found = []
    for page in PAGES:
        for block in code_blocks(page, "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                if "taxi-assets" not in line:
                    continue  # other commands' quotes may span lines
                lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
                lexer.whitespace_split = True
                words = list(lexer)
                for at, word in enumerate(words):
                    if Path(word).name == "taxi-assets":
                        rest = words[at + 1 :]
                        end = next((i for i, w in enumerate(rest) if w in OPERATORS), len(rest))
                        found.append((page.name, rest[:end]))
    return found


def test_the_pages_have_cli_commands_to_check():
    pages = {page for page, _ in cli_commands()}
    assert len(cli_commands()) >= 10 and {"README.md", "retraining-and-serving.md", "running.md"} <= pages


@pytest.mark.parametrize(
    ("page", "arguments"), cli_commands(), ids=lambda value: " ".join(value) if isinstance(value, list) else value
)
def test_every_cli_command_in_the_docs_parses(page, arguments):
    """The CLI's parser accepts it (parsing only: nothing runs)."""
    from taxi_assets.apps.cli import build_parser

    try:
        build_parser().parse_args(arguments)
    except SystemExit:
        pytest.fail(f"{page}: taxi-assets {shlex.join(arguments)} does not parse")
