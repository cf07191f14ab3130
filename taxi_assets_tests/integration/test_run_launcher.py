"""A run whose code server dies with it is failed and retried, not left STARTED for its max runtime.

A standalone code server (``dagster api grpc``, as deploy/ runs it) on a Unix socket, the daemon
on the project's own dagster.yaml (its run launcher, run monitoring and run retries), a run of a
job that waits in its step. The code server's process group is SIGKILLed (its container lost) and a
new server starts at the same address: the daemon's run monitoring asks it, it does not know the
run, the run is failed with that reason, and run retries re-execute it to success. Under the proxy
of ``dagster code-server start`` (which cannot list its runs) a live run is never judged lost.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml

from taxi_assets.lib.run_launcher import CodeServerRunLauncher
from taxi_assets_tests.helpers import REPO_ROOT
from taxi_assets_tests.stack import Processes, wait_for

pytestmark = pytest.mark.production  # the daemon: the long tier

BIN = Path(sys.executable).parent

WAITING_JOB = """
import os, time
from pathlib import Path
import dagster as dg

@dg.op
def wait_for_release(context):
    (Path(os.environ["TEST_STARTED_DIR"]) / context.run_id).touch()
    while not Path(os.environ["TEST_RELEASE_FILE"]).exists():
        time.sleep(0.2)

@dg.job(tags={"dagster/max_retries": "1"})
def waits():
    wait_for_release()

defs = dg.Definitions(jobs=[waits])
"""
# The same job in a code location that, as taxi_assets.definitions does, keeps the code server's
# run-worker check alive through a storage outage.
GUARDED_JOB = WAITING_JOB.replace(
    "defs = dg.Definitions(",
    "from taxi_assets.lib.dagster_private import keep_code_server_cleanup_alive\n"
    "keep_code_server_cleanup_alive()\ndefs = dg.Definitions(",
)


@pytest.fixture
def daemon_and_code_server(tmp_path, monkeypatch, request):
    options = getattr(request, "param", {})
    server = options.get("server", ["api", "grpc"])  # as the Dockerfile runs it
    home, started = tmp_path / "home", tmp_path / "started"
    home.mkdir()
    started.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    (tmp_path / "code.py").write_text(options.get("code", WAITING_JOB))
    sockets = Path(tempfile.mkdtemp(prefix="taxi-grpc-", dir="/tmp"))  # short: a socket path is at most 107 bytes
    socket = sockets / "code.sock"
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump({"load_from": [{"grpc_server": {"socket": str(socket), "location_name": "waits"}}]})
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TAXI_", "DAGSTER_"))} | {
        "DAGSTER_HOME": str(home),
        "TEST_STARTED_DIR": str(started),
        "TEST_RELEASE_FILE": str(tmp_path / "release"),
    }
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    processes = Processes(tmp_path, env)

    def start_code_server() -> None:
        socket.unlink(missing_ok=True)
        processes.start(
            "code-server",
            [
                str(BIN / "dagster"),
                *server,
                "-f",
                str(tmp_path / "code.py"),
                "-a",
                "defs",
                "--socket",
                str(socket),
            ],
        )
        health = [str(BIN / "dagster"), "api", "grpc-health-check", "--socket", str(socket)]
        wait_for(lambda: subprocess.run(health, env=env, capture_output=True).returncode == 0, 180, "the code server")

    try:
        start_code_server()
        processes.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)])
        yield env, workspace, started, tmp_path / "release", start_code_server, processes, socket
    finally:
        processes.stop_all()
        shutil.rmtree(sockets, ignore_errors=True)


def launch_waiting_run(instance, env, workspace, started):
    """Launch the waiting job as a user does (`dagster job launch`); return the run once it is
    queued, dequeued by the daemon, started by the code server, and its step is waiting."""
    run_id = str(uuid.uuid4())
    launch = [str(BIN / "dagster"), "job", "launch", "-w", str(workspace), "-j", "waits", "--run-id", run_id]
    launched = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    wait_for(lambda: (started / run_id).exists(), 300, "the run's step to start", interval=1)
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.STARTED
    return run


def test_a_run_whose_code_server_died_is_failed_and_retried(daemon_and_code_server):
    env, workspace, started, release, start_code_server, processes, _ = daemon_and_code_server
    instance = dg.DagsterInstance.get()
    assert isinstance(instance.run_launcher, CodeServerRunLauncher)  # the project's dagster.yaml
    run = launch_waiting_run(instance, env, workspace, started)
    run_id = run.run_id
    alive = instance.run_launcher.check_run_worker_health(run)
    assert alive.status.value == "RUNNING", alive

    processes.kill("code-server")  # the whole group: the server, the run worker, its step process
    start_code_server()  # the same address, a new server that never heard of the run

    def failed():
        run = instance.get_run_by_id(run_id)
        return run is not None and run.status == dg.DagsterRunStatus.FAILURE

    wait_for(failed, 300, "run monitoring to fail the run", interval=1)
    messages = [record.message for record in instance.all_logs(run_id)]
    assert any("code server does not know it" in message for message in messages), messages[-10:]

    # Run retries re-execute it on the new server; released, the retry succeeds.
    release.touch()

    def retried_to_success():
        retries = instance.get_runs(dg.RunsFilter(tags={"dagster/parent_run_id": run_id}))
        return retries and retries[0].status == dg.DagsterRunStatus.SUCCESS

    wait_for(retried_to_success, 300, "the retry to succeed", interval=1)
    in_flight = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.QUEUED]))
    assert not in_flight, [run.run_id for run in in_flight]


@pytest.mark.parametrize("daemon_and_code_server", [{"server": ["code-server", "start"]}], indirect=True)
def test_a_code_server_that_cannot_list_its_runs_never_fails_a_live_one(daemon_and_code_server):
    """`dagster code-server start` runs a proxy that answers UNIMPLEMENTED to GetCurrentRuns. The
    first version of the check counted that as silence, and once the server had been "silent" for
    the timeout every run still going was failed (CI's chaos soak; the stack then ran the proxy)."""
    env, workspace, started, release, _, _, _ = daemon_and_code_server
    instance = dg.DagsterInstance.get()
    run = launch_waiting_run(instance, env, workspace, started)
    run_id = run.run_id

    impatient = CodeServerRunLauncher(unreachable_timeout_seconds=0)  # any silence would be too long
    for _ in range(2):
        health = impatient.check_run_worker_health(run)
        assert health.status.value == "RUNNING" and "cannot list" in (health.msg or ""), health

    release.touch()

    def succeeded():
        run = instance.get_run_by_id(run_id)
        return run is not None and run.status == dg.DagsterRunStatus.SUCCESS

    wait_for(succeeded, 300, "the run to succeed", interval=1)


def _descendants(pid: int) -> list[int]:
    """Every process under ``pid``, from each process's parent in /proc (a code server starts run
    workers from its gRPC threads: its main thread's children list does not show them)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found, frontier = found + children, children
    return found


@pytest.mark.parametrize("daemon_and_code_server", [{"code": GUARDED_JOB}], indirect=True)
def test_a_run_worker_that_dies_while_the_storage_is_down_is_failed_once_it_is_back(daemon_and_code_server):
    """The whole chaos soak's PostgreSQL fault: a run worker died while the database was down, the
    code server's one thread that checks its workers ended on the error, and from then on the
    server listed every run it had launched, so the dead one stayed STARTED and held a run slot.
    Here the instance's storage is taken away (its folder replaced by a file) while the worker is
    killed; once it is back, the run is failed and retried."""
    from dagster._grpc.client import DagsterGrpcClient  # noqa: PLC2701 - what the daemon's check asks

    env, workspace, started, release, _, processes, socket = daemon_and_code_server
    instance = dg.DagsterInstance.get()
    run = launch_waiting_run(instance, env, workspace, started)
    server = processes.running["code-server"].pid
    history = Path(env["DAGSTER_HOME"]) / ".dagster_home" / "history"  # dagster.yaml's SQLite storage
    history.rename(history.with_name("history.away"))
    history.write_text("the storage is down")
    try:
        workers = _descendants(server)  # the run worker and its step process
        assert workers, "the code server has no run worker"
        for pid in workers:
            os.kill(pid, 9)
        met = ("checking its run workers failed", "Exception in thread grpc-server-cleanup")  # kept going, or died
        output = wait_for(
            lambda: (lambda out: out if any(line in out for line in met) else None)(
                processes.output_since_start("code-server")
            ),
            120,
            "the code server to meet the outage",
        )
    finally:
        history.unlink()
        history.with_name("history.away").rename(history)
    assert met[1] not in output, output[-3000:]

    def failed():
        now = instance.get_run_by_id(run.run_id)
        return now is not None and now.status == dg.DagsterRunStatus.FAILURE

    wait_for(failed, 300, "the dead worker's run to be failed", interval=1)
    listed = DagsterGrpcClient(socket=str(socket)).get_current_runs()
    assert run.run_id not in listed, listed
    release.touch()

    def retried_to_success():
        retries = instance.get_runs(dg.RunsFilter(tags={"dagster/parent_run_id": run.run_id}))
        return retries and retries[0].status == dg.DagsterRunStatus.SUCCESS

    wait_for(retried_to_success, 300, "the retry to succeed", interval=1)
