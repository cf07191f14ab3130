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


class Canceling:
    """A run storage that reports the run CANCELING at once."""

    def get_run_by_id(self, run_id):
        return dg.DagsterRun(job_name="retraining", run_id=run_id, status=dg.DagsterRunStatus.CANCELING)


def test_a_step_that_does_not_stop_after_its_run_stopped_is_handed_to_on_stuck():
    called = threading.Event()
    reasons: list[str] = []

    def on_stuck(reason):
        reasons.append(reason)
        called.set()

    with RunWatch(Canceling(), "r3", poll_seconds=0.01, on_stuck=on_stuck, grace_seconds=0.05):  # type: ignore[arg-type]
        assert called.wait(60), "on_stuck was never called for a step still inside its block"
    assert reasons == ["run r3 is CANCELING"]


def test_a_step_that_stops_within_the_grace_is_left_alone():
    stuck: list[str] = []
    with RunWatch(Canceling(), "r4", poll_seconds=0.01, on_stuck=stuck.append, grace_seconds=3600) as watch:  # type: ignore[arg-type]
        while watch.stop_reason() is None:  # the step sees the stop request and ends
            threading.Event().wait(0.01)
    watch._thread.join(timeout=60)
    assert not watch._thread.is_alive() and stuck == []


def test_a_stuck_step_running_in_process_is_not_exited():
    """A test's in-process run shares its process with the caller: exiting would end the caller."""
    from taxi_assets.lib.lifecycle import exit_stuck_step

    context, ended = Context(), []
    context.log.warning = context.log.errors.append  # type: ignore[attr-defined]
    exit_stuck_step(context, "xgboost-2024-02", lambda: ended.append(1) or [])("run r2 is CANCELING")
    assert ended == []
    assert context.log.errors == [
        "run r2 is CANCELING, and step xgboost-2024-02 did not stop within 2 s; it runs inside this process, so it stops at its next check"
    ]
