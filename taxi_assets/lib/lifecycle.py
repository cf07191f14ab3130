"""Long steps that keep their promises: :func:`step_budget` gives a step its time budget and a stop
request raised once its run stops running (terminated, failed, ended by run monitoring), which the
training loops check between rounds, tree batches and chunks; an interrupt (Terminate, SIGTERM,
Ctrl-C) marks the run CANCELING so it ends CANCELED, not FAILED. Dagster does the rest (dead
workers, max runtime, retries); MLflow runs are ended in :mod:`taxi_assets.lib.tracking`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from taxi_assets.ml.budget import Budget

RUNNING = {dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED}
POLL_SECONDS = 2.0


# While the run's status cannot be read, say so this often (and on the first failure).
UNREADABLE_WARNING_SECONDS = 60.0
UNREADABLE = object()


class RunWatch:
    """Polls one run's status in a daemon thread; ``stop_reason()`` answers from a flag.

    A storage error is not a reason to stop training, but while it lasts a terminate request
    cannot be seen: ``warn`` (the step's log) is told on the first failure and every minute after."""

    def __init__(
        self, instance: dg.DagsterInstance, run_id: str, poll_seconds: float = POLL_SECONDS, warn=None
    ) -> None:
        self.instance, self.run_id, self.poll_seconds = instance, run_id, poll_seconds
        self.warn = warn or (lambda message: None)
        self.failures = 0
        self._reason: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, name=f"run-watch-{run_id[:8]}", daemon=True)

    def _read_run(self):
        """The run (None for an ephemeral instance's), or ``UNREADABLE`` after saying why."""
        try:
            run = self.instance.get_run_by_id(self.run_id)
        except Exception as error:
            self.failures += 1
            every = max(1, int(UNREADABLE_WARNING_SECONDS / self.poll_seconds))
            if self.failures == 1 or self.failures % every == 0:
                self.warn(
                    f"cannot read the status of run {self.run_id} ({type(error).__name__}: {error}); training "
                    f"goes on, but a terminate request is not seen until it can ({self.failures} failed reads)"
                )
            return UNREADABLE
        self.failures = 0
        return run

    def _poll(self) -> None:
        while not self._done.wait(self.poll_seconds):
            run = self._read_run()
            if run is UNREADABLE:
                continue
            if not isinstance(run, dg.DagsterRun):  # an ephemeral instance (tests): nothing to watch
                return
            if run.status not in RUNNING:
                self._reason = f"run {self.run_id} is {run.status.value}"
                return

    def stop_reason(self) -> str | None:
        return self._reason

    def __enter__(self) -> RunWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()


@contextmanager
def canceled_on_interrupt(context) -> Iterator[None]:
    """An interrupt here means someone stopped the run: mark it CANCELING, so it ends CANCELED.

    Dagster maps SIGTERM to SIGINT and raises ``DagsterExecutionInterruptedError`` in user code;
    without a termination request on record it would report the run FAILED ("interrupted
    unexpectedly") and run retries would start it again.
    """
    try:
        yield
    except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError):
        try:
            run = context.instance.get_run_by_id(context.run_id)
            if run is not None and run.status in RUNNING:
                context.instance.report_run_canceling(
                    run, message="Interrupted (SIGTERM/SIGINT) during a step: canceling."
                )
        except Exception as error:  # reporting must never hide the interrupt itself
            context.log.error(
                f"run {context.run_id} was interrupted, but marking it CANCELING failed ({type(error).__name__}: "
                f"{error}); it may end FAILED, and run retries may start again a run someone stopped"
            )
        raise


@contextmanager
def step_budget(context, seconds: float | None) -> Iterator[Budget]:
    """The whole step's budget, from now, which stops when the run stops."""
    with RunWatch(context.instance, context.run_id, warn=context.log.warning) as watch, canceled_on_interrupt(context):
        yield Budget.seconds(seconds, watch.stop_reason)


class Stopwatch:
    """Seconds since it was made; for metadata about where a step's time went."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def seconds(self) -> float:
        return round(time.monotonic() - self.start, 2)
