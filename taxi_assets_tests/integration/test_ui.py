"""The Dagster UI in a real browser: dagster-webserver on 127.0.0.1, headless Debian Chromium
driven by Playwright, against an instance with 2024-02 prepared and trained."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from taxi_assets_tests.helpers import DATA_DIR, REPO_ROOT
from taxi_assets_tests.servers import free_port

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


@pytest.fixture(scope="module")
def webserver(trained_instance):
    pytest_configure_chromium()
    home = Path(trained_instance.storage_directory()).parent
    port = free_port()
    log = open(home / "webserver.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "DAGSTER_HOME": str(home), "TAXI_DATA_DIR": str(DATA_DIR)},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"dagster-webserver did not start: {(home / 'webserver.log').read_text()[-3000:]}")
        time.sleep(0.5)
    try:
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    yield context.new_page()
    context.close()


def dismiss_welcome(page):
    """The first visit may show a "Join the Dagster community" dialog over the page."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(state="visible", timeout=8_000)
    except PlaywrightTimeout:
        return
    skip.click()
    skip.wait_for(state="hidden", timeout=5_000)


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
        page.locator(f'foreignObject [data-tooltip="{name}"]').first.wait_for(timeout=60_000)
    dismiss_welcome(page)
    page.wait_for_timeout(1500)  # edges are laid out after the nodes
    graph = page.evaluate(GRAPH_JS)
    names = {node["name"] for node in graph["nodes"]}
    assert {"raw_trips", "cleaned_trips", "training_set", "sklearn_models", "xgboost_model"} <= names
    edges = drawn_edges(graph)
    assert {
        ("raw_trips", "cleaned_trips"),
        ("cleaned_trips", "training_set"),
        ("training_set", "sklearn_models"),
        ("training_set", "xgboost_model"),
    } <= edges, edges
    # Nothing upstream of raw_trips, and training_set does not feed raw data back.
    assert not any(target == "raw_trips" for _, target in edges)
    page.screenshot(path=str(SCREENSHOTS / "lineage.png"))


@pytest.mark.parametrize(
    ("asset", "entry", "width"),
    [("raw_trips", "pickups_per_day", 512), ("xgboost_model", "feature_contributions_chart", 512)],
)
def test_asset_page_shows_its_chart(webserver, page, asset, entry, width):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{webserver}/assets/{asset}?view=events&partition=2024-02")
    page.get_by_text(entry, exact=True).wait_for(timeout=60_000)
    dismiss_welcome(page)
    row = page.locator("tr", has=page.get_by_text(entry, exact=True))
    row.get_by_text("[Show Markdown]").click()
    image = page.get_by_role("dialog").locator('img[src^="data:image/png;base64,"]')
    image.wait_for(timeout=10_000)
    # Decoded and laid out by the browser, not just present in the DOM.
    natural_width, natural_height, shown_width = image.evaluate(
        "i => [i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width]"
    )
    assert natural_width == width and natural_height >= 200 and shown_width > 100
    page.screenshot(path=str(SCREENSHOTS / f"{asset}-{entry}.png"))
