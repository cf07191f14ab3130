"""The image's install path without a Docker engine: the Dockerfile's own `uv sync` commands,
read from the Dockerfile, into a fresh environment from uv.lock, as a non-root user, and then
the code server, the webserver and the inference server started from that environment.

Differences from a real build, each on purpose: the interpreter is this machine's Python 3.11
(the image's is python:3.11.x-slim), and uv keeps a download cache between CI runs (the image
builds with UV_NO_CACHE). What gets installed is the same: every package and hash from the lock.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from taxi_assets_tests.helpers import DATA_DIR, REPO_ROOT
from taxi_assets_tests.stack import Processes, wait_for

pytestmark = pytest.mark.production

INSTALL_USER = "taxi-install"
CACHE = Path("/var/tmp/taxi-install-uv-cache")


def dockerfile_build() -> tuple[dict[str, str], list[list[str]], list[str]]:
    """The build stage's uv environment, its `uv sync` commands, and what it copies in."""
    text = (REPO_ROOT / "Dockerfile").read_text()
    build = text.split(" AS build", 1)[1].split("\nFROM ", 1)[0]
    [env_line] = re.findall(r"^ENV (UV_.*)$", build, re.M)
    env = dict(item.split("=", 1) for item in shlex.split(env_line))
    syncs = [shlex.split(command) for command in re.findall(r"^RUN (uv sync .*)$", build, re.M)]
    copied = [name for line in re.findall(r"^COPY (?!--from)(.*) \S+$", build, re.M) for name in line.split()]
    return env, syncs, copied


def install_user() -> tuple[int, int] | None:
    """(uid, gid) of a non-root user to install as, created if needed; None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(INSTALL_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--create-home", "--shell", "/usr/sbin/nologin", INSTALL_USER], check=True
        )
        entry = pwd.getpwnam(INSTALL_USER)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def scratch():
    """A folder the install user can reach (pytest's own temporary folders are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="taxi-install-", dir="/var/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_the_images_install_path_from_the_lock_as_a_non_root_user(scratch):
    tmp_path = scratch
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv is installed by the README's set-up commands"
    env_from_dockerfile, syncs, copied = dockerfile_build()
    assert [sync[:3] for sync in syncs] == [["uv", "sync", "--locked"]] * 2
    assert {"pyproject.toml", "uv.lock", "README.md", "taxi_assets"} <= set(copied)

    user = install_user()
    python = "/usr/bin/python3.11" if user and Path("/usr/bin/python3.11").exists() else sys.executable
    app, venv, home = tmp_path / "app", tmp_path / "venv", tmp_path / "home"
    app.mkdir()
    home.mkdir()
    for name in copied:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, app / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, app / name)
    shutil.copy(uv, tmp_path / "uv")
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    CACHE.mkdir(exist_ok=True)
    if user:
        for path in [tmp_path, CACHE, *tmp_path.rglob("*"), *CACHE.iterdir()]:
            os.chown(path, *user)
        tmp_path.chmod(0o755)
    # The network settings of this machine (proxies, a corporate CA), nothing else of root's.
    network = {
        key: value
        for key, value in os.environ.items()
        if key in ("SSL_CERT_FILE", "SSL_CERT_DIR") or key.lower().endswith("_proxy") or key.startswith("UV_INDEX")
    }
    env = {
        **network,
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        **env_from_dockerfile,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_NO_CACHE": "0",
        "UV_CACHE_DIR": str(CACHE),
        "UV_PYTHON": python,
    }
    as_user = {"user": user[0], "group": user[1], "extra_groups": []} if user else {}

    def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=app, env=env, capture_output=True, text=True, **as_user, **kwargs)

    for sync in syncs:
        done = run([str(tmp_path / "uv"), *sync[1:]], timeout=1200)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (venv / "bin" / "python").exists() and not (venv / "bin" / "pip").exists()
    who = run([str(venv / "bin" / "python"), "-c", "import os; print(os.geteuid())"], timeout=30)
    assert who.stdout.strip() == str(user[0] if user else os.geteuid())

    # Exactly the locked versions, production extra included.
    locked = {
        package["name"]: package["version"] for package in tomllib.loads((app / "uv.lock").read_text())["package"]
    }
    script = (
        "import json; from importlib.metadata import version; "
        "print(json.dumps({n: version(n) for n in ['dagster', 'dagster-postgres', 'xgboost', 'scikit-learn', "
        "'mlflow', 'sqlalchemy', 'psycopg2-binary', 'skops']}))"
    )
    versions = json.loads(run([str(venv / "bin" / "python"), "-c", script], timeout=600).stdout)
    assert versions == {name: locked[name] for name in versions}

    # The servers the image runs, from that environment.
    serving_env = {**env, "DAGSTER_HOME": str(home), "TAXI_DATA_DIR": str(DATA_DIR), "TAXI_API_TOKEN": "t" * 32}
    # Create the fresh SQLite instance once: three processes creating its tables at the same
    # moment race in Dagster's schema set-up ("table alembic_version already exists").
    made = subprocess.run(
        [str(venv / "bin" / "dagster"), "instance", "migrate"],
        cwd=app, env=serving_env, capture_output=True, text=True, timeout=600, **as_user,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    bin_dir = venv / "bin"
    processes = Processes(tmp_path, serving_env, **as_user)

    def logs() -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()[-3000:]}" for path in tmp_path.glob("*.log"))

    try:
        # The inference server binds port 0 and writes the port it got; Dagster's servers cannot, so
        # they start on a free port and again on another if it was taken before they bound it.
        port_file = tmp_path / "serve.port"
        processes.start(
            "inference-server",
            [str(bin_dir / "taxi-assets"), "serve", "--port", "0", "--port-file", str(port_file)],
            cwd=app,
        )

        def grpc_healthy(port: int) -> bool:
            done = subprocess.run(
                [str(bin_dir / "dagster"), "api", "grpc-health-check", "-p", str(port)],
                env=serving_env,
                capture_output=True,
                **as_user,
            )
            return done.returncode == 0

        processes.start_on_a_free_port(
            "code-server",
            lambda port: [str(bin_dir / "dagster"), "api", "grpc", "-h", "127.0.0.1", "-p", str(port),
                          "-m", "taxi_assets.definitions", "--location-name", "taxi_assets"],
            grpc_healthy,
            timeout=240,
            cwd=app,
        )  # fmt: skip

        def graphql_sees_the_assets(port: int):
            query = json.dumps({"query": "{ assetNodes { assetKey { path } } }"}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/graphql", data=query, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    nodes = json.load(response)["data"]["assetNodes"]
            except OSError:
                return None
            return {"/".join(node["assetKey"]["path"]) for node in nodes} or None

        try:
            web_port = processes.start_on_a_free_port(
                "webserver",
                lambda port: [str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
                              "-m", "taxi_assets.definitions"],
                graphql_sees_the_assets,
                timeout=240,
                cwd=app,
            )  # fmt: skip
        except (RuntimeError, TimeoutError) as error:
            raise AssertionError(f"{error}\n{logs()}") from None
        assets = graphql_sees_the_assets(web_port)
        assert assets and {"raw_trips", "cleaned_trips", "training_set", "xgboost_model", "production_model"} <= assets

        api_port = wait_for(
            lambda: port_file.exists() and port_file.read_text().strip() and int(port_file.read_text()),
            180,
            "the inference server's port",
        )

        def answers(path: str):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}{path}", timeout=10) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()
            except OSError:
                return None

        status, body = wait_for(lambda: answers("/version"), 120, "the inference server")
        assert (status, body.strip()) == (200, locked["taxi-assets"])
        # A fresh instance has no production model: MLflow's "not ready", and how to make one.
        status, body = answers("/health")
        assert status == 503 and "taxi-assets materialize" in body, body
    finally:
        processes.stop_all()
