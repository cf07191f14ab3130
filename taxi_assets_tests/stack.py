"""Real Dagster processes for tests: long-running commands, GraphQL, waiting for conditions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from taxi_assets_tests.helpers import REPO_ROOT
from taxi_assets_tests.servers import port_was_taken, unused_port


class Processes:
    """Long-running commands with their output in files; stopped (whole process groups) at exit."""

    def __init__(self, directory: Path, env: dict[str, str], **popen_options):
        self.directory, self.env, self.running = directory, env, {}
        self.popen_options = popen_options  # e.g. user/group to run as another user
        self.started_at: dict[str, int] = {}  # where each process's output starts in its log

    def start(self, name: str, command: list[str], cwd: Path | None = None) -> subprocess.Popen:
        path = self.directory / f"{name}.log"
        self.started_at[name] = path.stat().st_size if path.exists() else 0
        log = open(path, "ab")
        process = subprocess.Popen(
            command,
            cwd=cwd or REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self.popen_options,
        )
        self.running[name] = process
        return process

    def output_since_start(self, name: str) -> str:
        """What the latest process started as ``name`` has printed."""
        with open(self.directory / f"{name}.log", "rb") as log:
            log.seek(self.started_at.get(name, 0))
            return log.read().decode(errors="replace")

    def start_on_a_free_port(
        self,
        name: str,
        command: Callable[[int], list[str]],
        ready: Callable[[int], object],
        timeout: float = 180,
        cwd: Path | None = None,
        attempts: int = 5,
    ) -> int:
        """Start a server that cannot bind port 0 and report it (Dagster's, MLflow's): on a port
        nobody listens on, and again on another one if the server says its port was taken in
        the meantime. Returns the port once ``ready(port)`` is true; fails with the server's
        output if it exits for another reason or is not ready within ``timeout`` seconds."""
        for _ in range(attempts):
            port = unused_port()
            process = self.start(name, command(port), cwd)
            deadline = time.monotonic() + timeout
            while True:
                output = self.output_since_start(name)
                if port_was_taken(output):
                    self.kill(name)
                    break  # another process has it: another port
                if process.poll() is not None:
                    self.running.pop(name, None)
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{output[-4000:]}")
                if ready(port):
                    return port
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} was not ready within {timeout:.0f} s:\n{output[-4000:]}")
                time.sleep(0.5)
        raise RuntimeError(f"{name}: every port tried was taken ({attempts} tries)")

    def kill(self, name: str) -> None:
        process = self.running.pop(name)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:  # it exited on its own
            pass
        process.wait(timeout=30)

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")[-4000:]

    def stop_all(self) -> None:
        for name in list(self.running):
            self.kill(name)


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class GraphQL:
    def __init__(self, url: str):
        self.url = url

    def __call__(self, query: str, variables: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:  # 500 is a resolver's exception: say which (same type)
            body = error.read()[:3000].decode(errors="replace")
            raise urllib.error.HTTPError(
                error.url, error.code, f"{error.reason}: {body}", error.headers, None
            ) from None
        assert "errors" not in answer, answer
        return answer["data"]

    def launch(
        self, job: str, tags: dict[str, str], run_config: dict | None = None, assets: list[str] | None = None
    ) -> str:
        data = self(
            """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
                 __typename ... on LaunchRunSuccess { run { runId status } } ... on PythonError { message }
                 ... on InvalidSubsetError { message } ... on RunConfigValidationInvalid { errors { message } } } }""",
            {
                "params": {
                    "selector": {
                        "repositoryLocationName": "taxi_assets",
                        "repositoryName": "__repository__",
                        "jobName": job,
                    }
                    | ({"assetSelection": [{"path": [name]} for name in assets]} if assets else {}),
                    "runConfigData": run_config or {},
                    "executionMetadata": {"tags": [{"key": key, "value": value} for key, value in tags.items()]},
                }
            },
        )["launchRun"]
        assert data["__typename"] == "LaunchRunSuccess", data
        return data["run"]["runId"]

    def status(self, run_id: str) -> str:
        return self("query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})[
            "runOrError"
        ]["status"]

    def location_loaded(self) -> bool:
        data = self("""{ workspaceOrError { ... on Workspace { locationEntries { name
                         locationOrLoadError { __typename } } } } }""")
        entries = data["workspaceOrError"]["locationEntries"]
        return any(
            e["name"] == "taxi_assets" and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
            for e in entries
        )

    def terminate(self, run_id: str) -> str:
        return self("mutation($id: String!) { terminateRun(runId: $id) { __typename } }", {"id": run_id})[
            "terminateRun"
        ]["__typename"]

    def stop_schedule(self, name: str) -> None:
        """What the UI's schedule toggle sends: the schedule launches nothing from now on (tests that
        count runs or tasks turn the daily one off rather than race its 06:15 UTC tick)."""
        selector = {"repositoryLocationName": "taxi_assets", "repositoryName": "__repository__", "scheduleName": name}
        schedule = self(
            "query($selector: ScheduleSelector!) { scheduleOrError(scheduleSelector: $selector) { "
            "__typename ... on Schedule { id } } }",
            {"selector": selector},
        )["scheduleOrError"]
        assert schedule["__typename"] == "Schedule", schedule
        stopped = self(
            "mutation($id: String!) { stopRunningSchedule(id: $id) { __typename } }", {"id": schedule["id"]}
        )["stopRunningSchedule"]
        assert stopped["__typename"] == "ScheduleStateResult", stopped


def run_command(command: list, timeout: float, **options) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a session of its own, whose whole process group is killed if it runs
    past ``timeout``: a command's children (step processes) never outlive a test that gave up."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **options
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise subprocess.TimeoutExpired(command, timeout, out, err) from None
    return subprocess.CompletedProcess(command, process.returncode, out, err)
