"""Real Dagster processes for tests: long-running commands, GraphQL, waiting for conditions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from taxi_assets_tests.helpers import REPO_ROOT


class Processes:
    """Long-running commands with their output in files; stopped (whole process groups) at exit."""

    def __init__(self, directory: Path, env: dict[str, str]):
        self.directory, self.env, self.running = directory, env, {}

    def start(self, name: str, command: list[str], cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.directory / f"{name}.log", "ab")
        process = subprocess.Popen(
            command, cwd=cwd or REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.running[name] = process
        return process

    def kill(self, name: str) -> None:
        process = self.running.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
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
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
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
