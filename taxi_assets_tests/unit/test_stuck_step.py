"""A step stuck in native code after its run was stopped is ended from outside: a real Dagster run
with the training jobs' multiprocess executor (step processes forked from a forkserver), whose
step sleeps in C (no interrupt reaches it) after the run is marked CANCELING, as Terminate marks
it. No data is needed."""

import signal
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from taxi_assets.defs.automation import step_process_executor
from taxi_assets.lib.lifecycle import STOP_GRACE_SECONDS, exit_stuck_step, step_budget


class StuckConfig(dg.Config):
    folder: str


@dg.op
def stuck_in_native_code(context: dg.OpExecutionContext, config: StuckConfig) -> None:
    folder = Path(config.folder)

    def end_tracking() -> list[str]:
        (folder / "tracking-ended").write_text(str(time.time()))
        return ["parent", "trial"]

    with step_budget(context, 600, on_stuck=exit_stuck_step(context, "stuck-2024-02", end_tracking)):
        (folder / "started").write_text(str(time.time()))
        # Like one XGBoost round: SIGINT and SIGTERM are not seen until the call returns.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        time.sleep(600)


@dg.job(executor_def=step_process_executor)  # the training jobs' executor: forked step processes
def stuck_job():
    stuck_in_native_code()


def test_a_terminated_step_stuck_in_native_code_ends_canceled_with_its_tracking_ended(tmp_path):
    folder = tmp_path / "marks"
    folder.mkdir()
    config = {"ops": {"stuck_in_native_code": {"config": {"folder": str(folder)}}}}
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        results: list = []
        worker = threading.Thread(
            target=lambda: results.append(
                dg.execute_job(dg.reconstructable(stuck_job), instance, run_config=config, raise_on_error=False)
            )
        )
        worker.start()
        deadline = time.monotonic() + 300
        while not (folder / "started").exists():
            assert time.monotonic() < deadline, "the step never started"
            time.sleep(0.1)
        [run] = instance.get_runs()
        instance.report_run_canceling(run, message="Terminate, as the UI sends it")
        asked = time.time()
        worker.join(timeout=300)
        assert not worker.is_alive(), "the run did not end"
        run = instance.get_run_by_id(run.run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.CANCELED
        ended_at = float((folder / "tracking-ended").read_text())
        # Not before the grace: the step had its chance to stop by itself.
        assert ended_at - asked >= STOP_GRACE_SECONDS
        failures = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
        assert [record.event_log_entry.step_key for record in failures] == ["stuck_in_native_code"]
        logs = [record.event_log_entry.user_message for record in instance.get_records_for_run(run.run_id).records]
        assert any("2 MLflow run(s) ended KILLED, its process exits" in message for message in logs), logs


@pytest.mark.parametrize("job", ["stuck_job", "stuck_in_process_job"])
def test_sigterm_to_a_job_process_ends_a_step_stuck_in_native_code(tmp_path, job):
    """`dagster job execute` (as `dagster asset materialize`) gets SIGTERM while its step sleeps
    in C, in a step process of its own or in-process: the step is ended from outside, the process
    exits, the run ends CANCELED."""
    import os
    import subprocess
    import sys

    folder, home = tmp_path / "marks", tmp_path / "home"
    folder.mkdir(), home.mkdir()
    (tmp_path / "run.yaml").write_text(f"ops:\n  stuck_in_native_code:\n    config:\n      folder: {folder}\n")
    dagster = Path(sys.executable).parent / "dagster"
    command = [str(dagster), "job", "execute", "-f", __file__, "-j", job, "-c", str(tmp_path / "run.yaml")]
    environment = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "yes"}
    process = subprocess.Popen(
        command, env=environment, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 300
        while not (folder / "started").exists():
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "the step never started"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        # Without the watch the step sleeps 600 s; the deadline is for a busy machine, not a speed.
        process.wait(timeout=300)
    finally:
        process.kill()
    assert (folder / "tracking-ended").exists()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.CANCELED


@dg.op
def finishes(context: dg.OpExecutionContext, config: StuckConfig) -> None:
    import atexit

    # Registered before the step's budget: it would run during the interpreter's teardown.
    atexit.register(lambda: (Path(config.folder) / "teardown-ran").write_text("1"))
    with step_budget(context, 600):
        (Path(config.folder) / "finished").write_text("1")


@dg.job(executor_def=step_process_executor)  # the training jobs' executor: forked step processes
def finishing_job():
    finishes()


@dg.job(executor_def=dg.in_process_executor)
def stuck_in_process_job():
    stuck_in_native_code()


# What `dagster job execute -f this_file -j stuck_job` loads.
defs = dg.Definitions(jobs=[stuck_job, stuck_in_process_job, finishing_job])


def test_a_finished_step_process_skips_the_interpreters_teardown(tmp_path):
    """The executor joins each step process in its one loop: a process that tears the interpreter
    down (seconds with XGBoost, scikit-learn and MLflow loaded) delays every other step's events."""
    folder = tmp_path / "marks"
    folder.mkdir(), (tmp_path / "home").mkdir()
    config = {"ops": {"finishes": {"config": {"folder": str(folder)}}}}
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        result = dg.execute_job(dg.reconstructable(finishing_job), instance, run_config=config)
    assert result.success and (folder / "finished").exists()
    assert not (folder / "teardown-ran").exists()
