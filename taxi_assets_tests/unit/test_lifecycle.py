"""Steps that watch their run: a storage error or a failed cancel report is said, never swallowed."""

from __future__ import annotations

import threading

import dagster as dg
import pytest

from taxi_assets.lib.lifecycle import RunWatch, canceled_on_interrupt


class FlakyStorage:
    """An instance whose run storage fails ``failures`` times, then reports the run CANCELING."""

    def __init__(self, failures: int):
        self.failures, self.reads = failures, 0
        self.done = threading.Event()

    def get_run_by_id(self, run_id):
        self.reads += 1
        if self.reads <= self.failures:
            raise OSError("database is locked")
        self.done.set()
        return dg.DagsterRun(job_name="retraining", run_id=run_id, status=dg.DagsterRunStatus.CANCELING)


def test_a_run_whose_status_cannot_be_read_is_reported_and_still_watched():
    storage, warnings = FlakyStorage(failures=3), []
    with RunWatch(storage, "r1", poll_seconds=0.01, warn=warnings.append) as watch:  # type: ignore[arg-type]
        assert storage.done.wait(60), "the watch stopped polling after a storage error"
        # The flag is set by the watch's thread right after that read: wait for it, not for seconds.
        watch._thread.join(timeout=60)
    assert watch.stop_reason() == "run r1 is CANCELING"
    assert warnings and "cannot read the status of run r1 (OSError: database is locked)" in warnings[0]
    assert "a terminate request is not seen until it can" in warnings[0]


class Log:
    def __init__(self):
        self.errors: list[str] = []

    def error(self, message):
        self.errors.append(message)


class Context:
    """What canceled_on_interrupt uses of a step's context, with a storage that refuses writes."""

    run_id = "r2"

    def __init__(self):
        self.log = Log()

        class Instance:
            def get_run_by_id(self, run_id):
                return dg.DagsterRun(job_name="retraining", run_id=run_id, status=dg.DagsterRunStatus.STARTED)

            def report_run_canceling(self, run, message):
                raise OSError("read-only database")

        self.instance = Instance()


def test_an_interrupt_whose_cancel_report_fails_is_logged_and_still_raised():
    context = Context()
    with pytest.raises(KeyboardInterrupt), canceled_on_interrupt(context):
        raise KeyboardInterrupt
    [message] = context.log.errors
    assert "run r2 was interrupted, but marking it CANCELING failed (OSError: read-only database)" in message
    assert "run retries may start again a run someone stopped" in message
