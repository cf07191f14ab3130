"""Why a failed retraining is retried whole (``dagster/retry_strategy: ALL_STEPS``).

A run worker killed after the scikit-learn fan-out yielded its models, but before a model's step
wrote STEP_START, leaves the run below. test_lifecycle hit this under a CPU hog. Dagster 1.13's
resume-from-failure plan then re-runs the collect step but not the model's step, so every retry
fails on the missing output (dagster-io/dagster#30248, #30077). If this test starts failing, the
upstream plan has been fixed and FROM_FAILURE could come back.
"""

from __future__ import annotations

import dagster as dg
from dagster._core.definitions.dependency import NodeHandle
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.execution.plan.handle import ResolvedFromDynamicStepHandle, StepHandle
from dagster._core.execution.plan.objects import StepSuccessData
from dagster._core.execution.plan.outputs import StepOutputData, StepOutputHandle
from dagster._core.execution.plan.state import KnownExecutionState

from taxi_assets.definitions import build_defs
from taxi_assets.defs.automation import RETRAINING_RUN_TAGS

FAN_OUT = StepHandle(NodeHandle("load_models", NodeHandle("sklearn_models", None)))
MODEL_STEP = "sklearn_models.tune_and_train[LinearRegression]"


def _report(
    instance, run, event_type: DagsterEventType, data=None, step: StepHandle | ResolvedFromDynamicStepHandle = FAN_OUT
) -> None:
    event = DagsterEvent(
        event_type_value=event_type.value,
        job_name=run.job_name,
        step_handle=step,
        node_handle=step.node_handle,
        step_kind_value="COMPUTE",
        event_specific_data=data,
    )
    instance.report_dagster_event(event, run.run_id)


def _run_killed_after_the_fan_out(instance, model_step_started: bool) -> dg.DagsterRun:
    """A retraining of the model assets whose fan-out succeeded, yielding LinearRegression, and
    whose run then failed (with the model's step started, or before it started)."""
    job = build_defs().resolve_job_def("retraining")
    run = instance.create_run_for_job(
        job,
        run_config={"ops": {"sklearn_models": {"ops": {"load_models": {"config": {"models": ["LinearRegression"]}}}}}},
        tags={"dagster/partition": "2024-02"},
        asset_selection=frozenset(
            dg.AssetKey(name) for name in ("sklearn_models", "xgboost_model", "production_model")
        ),
    )
    _report(instance, run, DagsterEventType.STEP_START)
    handle = StepOutputHandle(FAN_OUT.to_key(), "result", "LinearRegression")
    _report(instance, run, DagsterEventType.STEP_OUTPUT, StepOutputData(step_output_handle=handle))
    _report(instance, run, DagsterEventType.STEP_SUCCESS, StepSuccessData(duration_ms=10.0))
    if model_step_started:
        model = ResolvedFromDynamicStepHandle(
            NodeHandle("tune_and_train", NodeHandle("sklearn_models", None)), "LinearRegression"
        )
        _report(instance, run, DagsterEventType.STEP_START, step=model)
    instance.report_run_failed(run)
    return instance.get_run_by_id(run.run_id)


def test_resuming_from_failure_would_lose_a_model_that_never_started():
    with dg.instance_for_test() as instance:
        started = _run_killed_after_the_fan_out(instance, model_step_started=True)
        steps, _ = KnownExecutionState.build_resume_retry_reexecution(instance, started)
        assert {MODEL_STEP, "sklearn_models.collect_models"} <= set(steps)  # interrupted: retried
        never_started = _run_killed_after_the_fan_out(instance, model_step_started=False)
        steps, _ = KnownExecutionState.build_resume_retry_reexecution(instance, never_started)
    assert "sklearn_models.collect_models" in steps  # the collect step runs again ...
    assert MODEL_STEP not in steps  # ... without the model it collects: every retry fails


def test_retrainings_are_retried_whole():
    defs = build_defs()
    for name in ("retraining", "model_training"):
        tags = defs.resolve_job_def(name).tags
        assert tags["dagster/retry_strategy"] == "ALL_STEPS" == RETRAINING_RUN_TAGS["dagster/retry_strategy"]
        assert tags["dagster/max_retries"] == "2"
