"""Long steps that keep their promises: :func:`step_budget` gives a step its time budget and a stop
request raised once its run stops running (terminated, failed, ended by run monitoring), which the
training loops check between rounds, tree batches and chunks; an interrupt (Terminate, SIGTERM,
Ctrl-C) marks the run CANCELING so it ends CANCELED, not FAILED. A step stuck in native code
(one boosting round of a deep tree on a busy machine can outlast the promise) is ended
:data:`STOP_GRACE_SECONDS` after its run stopped by :func:`exit_stuck_step`. Dagster does the rest
(dead workers, max runtime, retries); MLflow runs are ended in :mod:`taxi_assets.lib.tracking`."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from taxi_assets.ml.budget import Budget

RUNNING = {dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED}
POLL_SECONDS = 1.0
# How often the step's own interrupt flag (Terminate, SIGTERM, Ctrl-C reach it first) is looked at.
INTERRUPT_TICK_SECONDS = 0.2
# How long a step may take to stop by itself once its run stopped, before it is ended from outside:
# terminate ends a step within a few seconds even when the machine is busy.
STOP_GRACE_SECONDS = 2.0
# The exit status of a step process ended by exit_stuck_step (Dagster reports it as a crash of the step).
STUCK_EXIT_CODE = 3


def op_context(context):
    """The op's own context behind an asset's (``AssetExecutionContext`` deprecates reading the
    run id, op handle and op config from itself); any other context as it is."""
    return getattr(context, "op_execution_context", context)


def run_id_of(context) -> str:
    """The id of the run that ``context`` (an asset's, op's or hook's) belongs to."""
    return op_context(context).run_id


_forks_steps = False  # set in the training jobs' forkserver: every process it forks is one step's


def mark_step_forkserver() -> None:
    """Called by ``taxi_assets.step_server``, which only the training jobs' forkserver preloads
    (``step_process_executor``): the processes it forks then know they are steps' own processes."""
    global _forks_steps
    _forks_steps = True


def in_step_subprocess() -> bool:
    """Whether this process is one step's own process (forked by the step forkserver, not the
    forkserver itself): only such a process may be exited to end a step that cannot be interrupted."""
    import multiprocessing

    return _forks_steps and multiprocessing.parent_process() is not None


# While the run's status cannot be read, say so this often (and on the first failure).
UNREADABLE_WARNING_SECONDS = 60.0
UNREADABLE = object()


class RunWatch:
    """Polls one run's status in a daemon thread; ``stop_reason()`` answers from a flag.

    A storage error is not a reason to stop training, but while it lasts a terminate request
    cannot be seen: ``warn`` (the step's log) is told on the first failure and every minute after.
    ``interrupted()`` (the step's own interrupt flag) is a stop reason too, seen before the run's status.
    If the step has not ended ``grace_seconds`` after a stop reason, ``on_stuck(reason)`` is called
    from this thread: the main thread is in native code that no stop request reaches."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        run_id: str,
        poll_seconds: float = POLL_SECONDS,
        warn=None,
        on_stuck: Callable[[str], None] | None = None,
        grace_seconds: float = STOP_GRACE_SECONDS,
        interrupted: Callable[[], bool] = lambda: False,
    ) -> None:
        self.instance, self.run_id, self.poll_seconds = instance, run_id, poll_seconds
        self.warn = warn or (lambda message: None)
        self.on_stuck, self.grace_seconds, self.interrupted = on_stuck, grace_seconds, interrupted
        self.failures = 0
        self._reason: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"run-watch-{run_id[:8]}", daemon=True)

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

    def _poll(self) -> str | None:
        """Why the step should stop, once there is a reason; None while it may go on."""
        read_at = time.monotonic()
        watching_run = True
        while not self._done.wait(min(INTERRUPT_TICK_SECONDS, self.poll_seconds)):
            if self.interrupted():
                return "the step was interrupted (Terminate, SIGTERM or Ctrl-C)"
            if not watching_run or time.monotonic() - read_at < self.poll_seconds:
                continue
            read_at, run = time.monotonic(), self._read_run()
            if run is UNREADABLE:
                continue
            if not isinstance(run, dg.DagsterRun):  # an ephemeral instance (tests): no run to watch
                watching_run = False
            elif run.status not in RUNNING:
                return f"run {self.run_id} is {run.status.value}"
        return None

    def _watch(self) -> None:
        self._reason = self._poll()
        if self._reason and self.on_stuck is not None and not self._done.wait(self.grace_seconds):
            self.on_stuck(self._reason)

    def stop_reason(self) -> str | None:
        return self._reason

    def __enter__(self) -> RunWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()


class SignalWatch:
    """SIGINT and SIGTERM as they arrive, seen from the watching thread through Python's wakeup fd.

    Dagster turns Terminate, SIGTERM and Ctrl-C into SIGINT in the step's process, and raises an
    interrupt in the main thread only when it returns to Python: after the native call it is in.
    The wakeup fd is written by the C-level handler at once. Used only in the main thread and only
    when no one else (an asyncio loop) holds the wakeup fd."""

    def __init__(self) -> None:
        self.seen = False
        self._sockets: tuple[socket.socket, socket.socket] | None = None

    def __enter__(self) -> SignalWatch:
        if threading.current_thread() is not threading.main_thread():
            return self
        read, write = socket.socketpair()
        read.setblocking(False)
        write.setblocking(False)
        previous = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
        if previous != -1:  # someone else's: leave it to them
            signal.set_wakeup_fd(previous)
            read.close()
            write.close()
            return self
        self._sockets = (read, write)
        return self

    def interrupted(self) -> bool:
        if self.seen or self._sockets is None:
            return self.seen
        try:
            data = self._sockets[0].recv(512)
        except OSError:  # nothing arrived (or the watch just closed)
            return False
        self.seen = signal.SIGINT in data or signal.SIGTERM in data
        return self.seen

    def __exit__(self, *exc) -> None:
        if self._sockets is not None:
            signal.set_wakeup_fd(-1)
            for end in self._sockets:
                end.close()
            self._sockets = None


def _may_exit_this_process() -> bool:
    """Whether ending a stuck step may end this process: a step's own process, or a `dagster asset
    materialize` / `dagster job execute` command running the step in-process (its user asked it to
    stop). Never a test, a notebook or a server that runs steps inside itself."""
    command = [Path(sys.argv[0]).name, *sys.argv[1:3]] if sys.argv else []
    return in_step_subprocess() or command in (["dagster", "asset", "materialize"], ["dagster", "job", "execute"])


def _report_canceling(context, message: str) -> None:
    """Mark the run CANCELING unless it already stopped, so it ends CANCELED; a failure is logged."""
    try:
        run = context.instance.get_run_by_id(run_id_of(context))
        if run is not None and run.status in RUNNING:
            context.instance.report_run_canceling(run, message=message)
    except Exception as error:  # reporting must never hide the interrupt itself
        context.log.error(
            f"run {run_id_of(context)} was interrupted, but marking it CANCELING failed ({type(error).__name__}: "
            f"{error}); it may end FAILED, and run retries may start again a run someone stopped"
        )


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
        _report_canceling(context, "Interrupted (SIGTERM/SIGINT) during a step: canceling.")
        raise


def exit_stuck_step(context, step: str, end_tracking: Callable[[], list[str]]) -> Callable[[str], None]:
    """What ends ``step`` (its name in logs) if it did not stop by itself after a stop request: the
    run is marked CANCELING (unless it already stopped), ``end_tracking()`` ends its open MLflow runs
    (KILLED), then its process exits. In a step's own process Dagster records the step failed and
    the run ends CANCELED; in a `dagster asset materialize` process (steps in-process) the run is
    reported CANCELED here, as nothing else is left to. Why our own: Dagster's terminate only raises
    an interrupt, which waits for a native call (one XGBoost round) to return, and its
    force-terminate ends the run record without ending the step or its MLflow runs. A step inside
    a process that must live on (a test, a notebook) goes on to its next check."""

    def stop(reason: str) -> None:
        waited = f"{reason}, and step {step} did not stop within {STOP_GRACE_SECONDS:.0f} s"
        if not _may_exit_this_process():
            context.log.warning(f"{waited}; it runs inside this process, so it stops at its next check")
            return
        try:
            _report_canceling(context, f"Step {step} was stopped in native code: canceling.")
            ended = end_tracking()
            context.log.info(f"{waited} (native code): {len(ended)} MLflow run(s) ended KILLED, its process exits")
            run = context.instance.get_run_by_id(run_id_of(context))
            if not in_step_subprocess() and run is not None and run.status == dg.DagsterRunStatus.CANCELING:
                context.instance.report_run_canceled(run, message=f"Step {step} was stopped in native code.")
        except Exception as error:  # the exit must happen even if the tracking store is gone
            context.log.error(f"{waited}; ending its runs failed ({type(error).__name__}: {error}); exiting")
        finally:
            _exit_without_teardown(STUCK_EXIT_CODE)

    return stop


_quick_exit_registered = threading.Lock()


def _exit_without_teardown(code: int = 0) -> None:
    """End this process now, its printed output flushed, without the interpreter's teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def exit_quickly_after_step() -> None:
    """Let this step's process end without the interpreter's teardown, once its step is over.

    Dagster's multiprocess executor joins each finished step process in its one loop, so while a
    process tears down (seconds for one that imported XGBoost, scikit-learn and MLflow; 5 s and
    more with a core taken), no other step's events are read: a terminated XGBoost step was seen
    failed 7 s after it exited, behind the forest's teardown. By the time ``atexit`` runs, the
    step's events are stored, its MLflow runs ended and its threads joined; the rest is freeing
    memory that the exit frees anyway. Only in a step's own process, registered once."""
    if in_step_subprocess() and _quick_exit_registered.acquire(blocking=False):
        atexit.register(_exit_without_teardown)  # runs first: atexit calls the last registered first


@contextmanager
def step_budget(context, seconds: float | None, on_stuck: Callable[[str], None] | None = None) -> Iterator[Budget]:
    """The whole step's budget, from now, which stops when the run stops (and ``on_stuck`` is called
    if the step has not ended :data:`STOP_GRACE_SECONDS` later)."""
    exit_quickly_after_step()
    with SignalWatch() as signals:
        watch = RunWatch(
            context.instance, run_id_of(context), warn=context.log.warning, on_stuck=on_stuck,
            interrupted=signals.interrupted,
        )  # fmt: skip
        with watch, canceled_on_interrupt(context):
            yield Budget.seconds(seconds, watch.stop_reason)


class Stopwatch:
    """Seconds since it was made; for metadata about where a step's time went."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def seconds(self) -> float:
        return round(time.monotonic() - self.start, 2)
