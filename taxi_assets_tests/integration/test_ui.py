"""The Dagster UI in a real browser: dagster-webserver on 127.0.0.1, headless Debian Chromium
driven by Playwright, against an instance with 2024-02 prepared and trained."""

from __future__ import annotations

import os
import shutil
import sys
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from taxi_assets_tests.helpers import DATA_DIR, REPO_ROOT
from taxi_assets_tests.stack import Processes

# dagster-webserver driven by Chromium: the long tier (`pytest -m production`).
pytestmark = pytest.mark.production

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying Google's hosts, which this
# machine's closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(os.environ.get("TAXI_SCREENSHOT_DIR") or REPO_ROOT / ".screenshots")


def pytest_configure_chromium():
    if not Path(CHROMIUM).exists():
        raise pytest.UsageError(f"Chromium not found at {CHROMIUM}: install Debian's chromium (.ci/run does)")


@contextmanager
def running_webserver(home: Path):
    """dagster-webserver on the instance in ``home`` (its log: ``home/webserver.log``); yields its URL."""
    processes = Processes(home, {**os.environ, "DAGSTER_HOME": str(home), "TAXI_DATA_DIR": str(DATA_DIR)})

    def answers(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=10) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        port = processes.start_on_a_free_port(
            "webserver",
            lambda port: [sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml", "-h", "127.0.0.1",
                          "-p", str(port)],
            answers,
            timeout=240,
        )  # fmt: skip
        yield f"http://127.0.0.1:{port}"
    finally:
        processes.stop_all()


@pytest.fixture(scope="module")
def webserver(served_instance):
    pytest_configure_chromium()
    with running_webserver(Path(served_instance.storage_directory()).parent) as url:
        yield url


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    yield context.new_page()
    context.close()


# Asset node boxes and edge end points, read from the graph's SVG: an edge starts at the right
# side of its source box and ends (arrow head) just left of its target box.
GRAPH_JS = """() => {
  const nodes = [...document.querySelectorAll('foreignObject')]
    .filter(fo => fo.querySelector('[class*="assetNodeContainer"]'))
    .map(fo => ({name: fo.querySelector('[data-tooltip]').getAttribute('data-tooltip'),
                 x: +fo.getAttribute('x'), y: +fo.getAttribute('y'),
                 w: +fo.getAttribute('width'), h: +fo.getAttribute('height')}));
  const edges = [...document.querySelectorAll('path[marker-end]')].map(p => {
    const n = p.getAttribute('d').match(/-?[\\d.]+/g).map(Number);
    return {sx: n[0], sy: n[1], ex: n[n.length - 2], ey: n[n.length - 1]};
  });
  return {nodes, edges};
}"""


def drawn_edges(graph) -> set[tuple[str, str]]:
    def source(edge):
        return [
            n["name"]
            for n in graph["nodes"]
            if abs(n["x"] + n["w"] - edge["sx"]) < 3 and n["y"] <= edge["sy"] <= n["y"] + n["h"]
        ]

    def target(edge):
        return [
            n["name"]
            for n in graph["nodes"]
            if 0 <= n["x"] - edge["ex"] < 12 and n["y"] <= edge["ey"] <= n["y"] + n["h"]
        ]

    pairs = set()
    for edge in graph["edges"]:
        sources, targets = source(edge), target(edge)
        if len(sources) == 1 and len(targets) == 1:
            pairs.add((sources[0], targets[0]))
    return pairs


def test_lineage_is_drawn(webserver, page):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # training_set's neighbours two steps either way: the whole chain from raw_trips to the models.
    page.goto(f"{webserver}/assets/training_set?view=lineage&lineageScope=neighbors&lineageDepth=2")
    for name in ("raw_trips", "xgboost_model"):
        page.locator(f'foreignObject [data-tooltip="{name}"]').first.wait_for(timeout=120_000)
    expected = {
        ("raw_trips", "cleaned_trips"),
        ("cleaned_trips", "training_set"),
        ("training_set", "sklearn_models"),
        ("training_set", "xgboost_model"),
        ("sklearn_models", "production_model"),
        ("xgboost_model", "production_model"),
    }
    # Edges are laid out after the nodes: read the drawing until they are all there (or time out).
    deadline = time.monotonic() + 120
    while True:
        graph = page.evaluate(GRAPH_JS)
        edges = drawn_edges(graph)
        if expected <= edges or time.monotonic() > deadline:
            break
        page.wait_for_timeout(250)
    names = {node["name"] for node in graph["nodes"]}
    assert {
        "raw_trips",
        "cleaned_trips",
        "training_set",
        "sklearn_models",
        "xgboost_model",
        "production_model",
    } <= names
    assert expected <= edges, edges
    # Nothing upstream of raw_trips, and training_set does not feed raw data back.
    assert not any(target == "raw_trips" for _, target in edges)
    page.screenshot(path=str(SCREENSHOTS / "lineage.png"))


@pytest.mark.parametrize(
    ("asset", "names"),
    [
        ("raw_trips", ["pickups per day", "missing values"]),
        ("xgboost_model", ["predicted vs actual", "residuals", "feature contributions", "rmse over months"]),
        ("production_model", ["rmse by model", "rmse over months", "predicted vs actual", "residuals"]),
    ],
)
def test_one_click_shows_all_of_an_assets_charts(webserver, page, asset, names):
    """Markdown metadata sits behind "[Show Markdown]": one value, "charts", holds every chart of
    the materialization, 800 px wide, so one click shows them all."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{webserver}/assets/{asset}?partition=2024-02")
    page.get_by_text("charts", exact=True).first.wait_for(timeout=120_000)
    row = page.locator("tr", has=page.get_by_text("charts", exact=True))
    row.get_by_text("[Show Markdown]").first.click()
    dialog = page.get_by_role("dialog")
    images = dialog.locator('img[src^="data:image/png;base64,"]')
    images.first.wait_for(timeout=120_000)
    # Decoded and laid out by the browser, not just present in the DOM: wait for that (an event).
    page.wait_for_function(
        """count => {
             const all = [...document.querySelectorAll('[role="dialog"] img[src^="data:image/png;base64,"]')];
             return all.length === count && all.every(i => i.complete && i.naturalWidth > 0
                                                       && i.getBoundingClientRect().width > 0);
           }""",
        arg=len(names),
        timeout=120_000,
    )
    shown = images.evaluate_all(
        "all => all.map(i => [i.alt, i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width])"
    )
    assert [alt for alt, *_ in shown] == names
    assert all(width == 800 and height >= 400 and on_screen > 300 for _, width, height, on_screen in shown), shown
    page.screenshot(path=str(SCREENSHOTS / f"{asset}-charts.png"))


STEERING_CONFIG = """ops:
  serving_decision:
    config:
      action: promote
      model: xgboost
      version: '1'
      reason: 2024-02's model mispredicts airport trips; back to January's
"""


def test_the_steer_serving_launchpad_takes_a_promotion_and_names_a_wrong_action(webserver, page):
    """The UI's form of ``taxi-assets promote``: the Launchpad asks for the action, accepts a
    promotion's model, version and reason, and names the field of a misspelled action."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{webserver}/locations/taxi_assets/jobs/steer_serving/playground")
    page.get_by_text('Missing required config entry "action"').wait_for(timeout=120_000)
    set_config = "c => document.querySelector('.CodeMirror').CodeMirror.setValue(c)"
    page.evaluate(set_config, STEERING_CONFIG.replace("promote", "promot"))
    page.get_by_text("serving_decision:config:action not in enum type SteeringAction").wait_for(timeout=120_000)
    assert not page.get_by_role("button", name="Launch Run").is_enabled()
    page.evaluate(set_config, STEERING_CONFIG)
    page.get_by_text("No errors", exact=True).wait_for(timeout=120_000)
    assert page.get_by_role("button", name="Launch Run").is_enabled()
    page.screenshot(path=str(SCREENSHOTS / "steer_serving-launchpad.png"))


def test_the_projects_instance_shows_no_welcome_and_writes_no_nux(tmp_path, browser):
    """The project's dagster.yaml turns the "join the community" dialog off: nothing asks, and
    nothing is written into DAGSTER_HOME (a .nux/ folder in the project, before)."""
    pytest_configure_chromium()
    import shutil

    shutil.copy(REPO_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    with running_webserver(tmp_path) as url:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()

        def asks_whether_to_show_the_dialog(response) -> bool:
            # The UI names each operation in the URL (/graphql?op=ShouldShowNux): match the path.
            path = urllib.parse.urlsplit(response.url).path
            return path.endswith("/graphql") and "shouldShowNux" in (response.request.post_data or "")

        # The UI asks the server whether to show the dialog; its answer decides, so wait for it
        # (an event), not for a number of seconds after which its absence would prove nothing.
        with page.expect_response(asks_whether_to_show_the_dialog, timeout=120_000) as asked:
            page.goto(f"{url}/assets")
        answer = asked.value.json()
        assert answer["data"]["shouldShowNux"] is False, answer
        page.get_by_text("raw_trips").first.wait_for(timeout=120_000)
        assert page.get_by_role("button", name="Skip").count() == 0
        context.close()
    assert not (tmp_path / ".nux").exists()
    # dagster-webserver's log-upload thread makes logs/ and .logs_queue/ in DAGSTER_HOME even with
    # telemetry off (dagster/_core/telemetry_upload.py); with it off they stay empty.
    made = {path.name: path for path in tmp_path.iterdir()}
    assert set(made) - {"logs", ".logs_queue"} == {".dagster_home", "dagster.yaml", "webserver.log"}, sorted(made)
    assert not [child for name in ("logs", ".logs_queue") if name in made for child in made[name].iterdir()]
