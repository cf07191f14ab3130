"""Dagster's default run launcher, plus the worker health check it lacks.

Under ``DefaultRunLauncher`` a run's worker is a child process of the code server that launched it
(``dagster api grpc``). When that server dies with its workers (its container lost, SIGKILL,
redeployed), nothing fails the runs: they stay STARTED until their ``dagster/max_runtime`` (an hour
for retrainings), each holding one of the queue's slots, and run retries never see them (found by
the chaos soak, which stalled on two such runs). ECS's launcher answers Dagster's run monitoring
("is this run's worker alive?") from the task's state; this one asks the code server, over the
address Dagster records on each run, which runs it is executing. A run it does not know has lost
its worker: run monitoring marks it failed, and run retries re-execute it. A server that does not
answer is given ``unreachable_timeout_seconds`` to come back (a restart) before its runs count as
lost (``dagster dev`` restarted: its servers come back on new ports).

The server must be ``dagster api grpc`` (what the Dockerfile, ECS and ``dagster dev`` run): the
proxy that ``dagster code-server start`` runs answers "unimplemented" to that question, and its
runs are then never judged (the first version counted that answer as silence and failed every run
still going five minutes after the daemon started; found by CI's chaos soak).

Assumes what every deployment here does: a code server's run workers live and die with it (one
container, one process group). Nothing here imports the code location.
"""

from __future__ import annotations

import threading
import time

import dagster as dg

from taxi_assets.lib.dagster_private import can_ask_code_servers, code_server_runs, run_health

UNREACHABLE_TIMEOUT_SECONDS = 300


def run_worker_lost(
    run_id: str,
    server_runs: list[str] | None,
    unreachable_seconds: float,
    timeout_seconds: float,
    can_list: bool = True,
) -> tuple[bool, str]:
    """Whether a STARTED run's worker is gone, and why. ``server_runs`` is what the run's code
    server says it executes (None: it did not answer, for ``unreachable_seconds`` so far);
    ``can_list`` is False when the server answered that it cannot say."""
    if not can_list:
        return False, (
            "its code server cannot list the runs it executes (the proxy of `dagster code-server start`); "
            "serve the location with `dagster api grpc` for this check"
        )
    if server_runs is not None:
        if run_id in server_runs:
            return False, "its code server is executing it"
        return True, (
            "its code server does not know it: the server restarted since it launched the run, "
            "and a code server's run workers end with it"
        )
    if unreachable_seconds >= timeout_seconds:
        return True, f"its code server has not answered for {unreachable_seconds:.0f} s (limit {timeout_seconds:.0f} s)"
    return False, f"its code server has not answered for {unreachable_seconds:.0f} s; asked again on the next check"


class CodeServerRunLauncher(dg.DefaultRunLauncher):
    """``DefaultRunLauncher`` whose runs' workers Dagster's run monitoring can check (see above)."""

    def __init__(self, inst_data=None, unreachable_timeout_seconds: int = UNREACHABLE_TIMEOUT_SECONDS):
        super().__init__(inst_data=inst_data)
        self.unreachable_timeout_seconds = unreachable_timeout_seconds
        self._silent_since: dict[str, float] = {}  # server address -> first unanswered check
        self._lock = threading.Lock()

    @classmethod
    def config_type(cls):
        return {
            "unreachable_timeout_seconds": dg.Field(
                int,
                default_value=UNREACHABLE_TIMEOUT_SECONDS,
                description="How long a code server may not answer before its runs count as lost.",
            )
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    @property
    def supports_check_run_worker_health(self) -> bool:
        """False when this Dagster lacks what the check uses (run monitoring then skips it)."""
        return can_ask_code_servers()

    def check_run_worker_health(self, run):
        CheckRunHealthResult, WorkerStatus = run_health() or (None, None)  # noqa: N806 (Dagster's classes)
        assert CheckRunHealthResult is not None and WorkerStatus is not None  # supports_... said so
        address, server_runs, unanswered = code_server_runs(run)
        if address is None:  # executed in some other process (a CLI's own): not ours to judge
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"{run.run_id} was not launched by a code server")
        can_list = unanswered != "UNIMPLEMENTED"
        now = time.monotonic()
        with self._lock:
            if server_runs is None and can_list:
                silent_for = now - self._silent_since.setdefault(address, now)
            else:  # the server answered
                self._silent_since.pop(address, None)
                silent_for = 0.0
        lost, why = run_worker_lost(run.run_id, server_runs, silent_for, self.unreachable_timeout_seconds, can_list)
        message = f"run worker of {run.run_id} at code server {address}: {why}"
        return CheckRunHealthResult(WorkerStatus.NOT_FOUND if lost else WorkerStatus.RUNNING, message)
