"""The registered model outside the project: MLflow makes a fresh environment from nothing but the
model's recorded requirements (``--env-manager uv``: uv's virtual environment, packages from PyPI
through uv's cache), and there ``mlflow models serve -m models:/taxi-duration-xgboost@champion``
and ``mlflow.pyfunc.load_model`` answer the course's literal request (ids as strings) with the
numbers ``taxi-assets serve`` gives. Nothing named taxi_assets is installed there, and no Dagster:
the model's own copy of the modules it imports is what runs.

A real 2024-02 decision on 3,000 trips a month with the least budget: trained, registered and
promoted by the assets themselves, in-process.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from taxi_assets.definitions import build_defs
from taxi_assets.lib.sources import LocalTripSource
from taxi_assets_tests.helpers import REPO_ROOT, TINY_BUDGET, materializer, mlflow_client, sampled_months
from taxi_assets_tests.servers import inference_server
from taxi_assets_tests.stack import Processes, wait_for

pytestmark = pytest.mark.production

# ../shared/README.md: the course's request, word for word.
COURSE_REQUEST = {
    "inputs": [
        {"DOLocationID": "239", "PULocationID": "236", "trip_distance": 1.98},
        {"DOLocationID": "170", "PULocationID": "65", "trip_distance": 6.54},
    ]
}
CHAMPION = "models:/taxi-duration-xgboost@champion"
# Run in the fresh environment's Python: what it has installed, where taxi_assets comes from, and
# the model's answer to the request.
LOAD_AND_PREDICT = """
import importlib.metadata, importlib.util, json, sys
import mlflow.pyfunc

model = mlflow.pyfunc.load_model(sys.argv[1])
import taxi_assets.ml.model_files

print(json.dumps({
    "predictions": [float(value) for value in model.predict(json.loads(sys.argv[2])["inputs"])],
    "code": taxi_assets.ml.model_files.__file__,
    "installed": {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()},
    "dagster": importlib.util.find_spec("dagster") is not None,
}))
"""


def post(port: int, path: str, body: dict, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def pings(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=10) as response:
            return response.status == 200
    except OSError:  # not listening yet, or not answering 200 (HTTPError is an OSError)
        return False


@pytest.fixture
def decided(tmp_path):
    """An instance whose 2024-02 decision made taxi-duration-xgboost's version the champion."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    folder = sampled_months(tmp_path / "trips", ["2024-01", "2024-02"])
    (tmp_path / "home").mkdir()
    job = build_defs(trip_source=LocalTripSource(directory=str(folder))).resolve_implicit_global_asset_job_def()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        run = materializer(job, instance)
        run("2024-01", ["trip_files", "raw_trips", "cleaned_trips"])
        chain = ["trip_files", "raw_trips", "cleaned_trips", "training_set", "sklearn_models", "xgboost_model"]
        run("2024-02", [*chain, "production_model"], TINY_BUDGET)
        yield instance


def fresh_environment_settings(tmp_path: Path, tracking_uri: str) -> dict[str, str]:
    """This process's environment without its virtual environment: uv and mlflow from the project's
    bin folder on PATH (as a user's), the environments MLflow makes in a folder of this test's."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    return env | {
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_ENV_ROOT": str(tmp_path / "envs"),
    }


def test_the_champion_serves_from_its_own_requirements_as_taxi_assets_serve_does(decided, tmp_path):
    import mlflow

    client = mlflow_client(decided)
    champion = client.get_model_version_by_alias("taxi-duration-xgboost", "champion")
    locked = {p["name"]: p["version"] for p in tomllib.loads((REPO_ROOT / "uv.lock").read_text())["package"]}

    # What the model records: every requirement pinned to uv.lock's version, nothing of the project's.
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_registry_uri(client.tracking_uri)
    requirements = Path(mlflow.pyfunc.get_model_dependencies(CHAMPION)).read_text().split()
    pins = dict(line.split("==") for line in requirements)
    assert pins == {name: locked[name] for name in pins}, requirements
    assert {"mlflow", "xgboost", "scikit-learn", "pydantic"} <= set(pins)
    assert not {"taxi_assets", "taxi-assets", "dagster"} & set(pins)
    # The code it runs, and not the project's lock (with it, --env-manager uv syncs the whole project).
    model = Path(mlflow.artifacts.download_artifacts(CHAMPION, dst_path=str(tmp_path / "model")))
    assert (model / "code" / "taxi_assets" / "ml" / "model_files.py").is_file()
    assert not (model / "uv.lock").exists() and not (model / "pyproject.toml").exists()

    # The numbers taxi-assets serve gives for the request (MLflow's protocol: unrounded minutes).
    token = secrets.token_urlsafe(24)
    home = Path(decided.storage_directory()).resolve().parent
    serve_env = {**os.environ, "DAGSTER_HOME": str(home), "TAXI_API_TOKEN": token}
    with inference_server(serve_env, tmp_path, "--reload-interval", "0", log=tmp_path / "serve.log") as (_, port):
        which = wait_for(lambda: _answer(port, "/predict", token), 120, "taxi-assets serve")["model"]
        expected = post(port, "/invocations", COURSE_REQUEST, token)["predictions"]
    assert (which["name"], str(which["version"])) == ("xgboost", str(champion.version))
    assert len(expected) == 2 and all(5 < minutes < 60 for minutes in expected), expected

    # mlflow models serve in an environment made from the model's requirements alone.
    env = fresh_environment_settings(tmp_path, client.tracking_uri)
    scratch = tmp_path / "elsewhere"  # not the checkout: nothing of the project's is in reach
    scratch.mkdir()
    processes = Processes(tmp_path, env)
    try:
        served_port = processes.start_on_a_free_port(
            "mlflow-models-serve",
            lambda port: [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", CHAMPION,
                          "--env-manager", "uv", "-h", "127.0.0.1", "-p", str(port)],
            pings,
            timeout=900,  # the first run creates the environment (wheels from PyPI, then uv's cache)
            cwd=scratch,
        )  # fmt: skip
        served = post(served_port, "/invocations", COURSE_REQUEST)["predictions"]
    finally:
        log = (tmp_path / "mlflow-models-serve.log").read_text(errors="replace")
        processes.stop_all()
    assert served == expected, log[-3000:]

    # mlflow.pyfunc.load_model in that same environment.
    [python] = (tmp_path / "envs").glob("*/bin/python")
    done = subprocess.run(
        [str(python), "-I", "-B", "-c", LOAD_AND_PREDICT, CHAMPION, json.dumps(COURSE_REQUEST)],
        cwd=scratch, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["predictions"] == expected
    assert not loaded["dagster"] and not {"taxi-assets", "taxi_assets"} & set(loaded["installed"])
    assert "/code/taxi_assets/ml/" in loaded["code"], loaded["code"]  # the model's own copy
    assert {name: loaded["installed"][name] for name in pins} == pins


def _answer(port: int, path: str, token: str) -> dict | None:
    try:
        return post(port, path, COURSE_REQUEST, token)
    except OSError:
        return None
