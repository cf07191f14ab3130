"""Every use of Dagster's private modules (``dagster._...``), in one place: they are what breaks first
on a Dagster upgrade, so each says why it is needed and what public API would replace it.
"""

from __future__ import annotations

__all__ = [
    "CheckRunHealthResult",
    "DagsterSqliteStorage",
    "LocalArtifactStorage",
    "LocalComputeLogManager",
    "WorkerStatus",
    "code_location",
    "code_server_runs",
    "failed_check_evaluations",
    "in_step_subprocess",
    "stale_status_resolver",
    "would_retry",
]


# What a run launcher's worker health check answers (lib/run_launcher.py's CodeServerRunLauncher);
# Dagster's run monitoring reads it. No public import path.
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

# Dagster's local storages, subclassed by lib/instance.py so that relative paths in dagster.yaml
# mean "inside DAGSTER_HOME" (Dagster's YAML cannot join an environment variable with a path, and
# these classes have no public import path). Imported here because a subclass needs its base when
# its module loads.
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
from dagster._core.storage.root import LocalArtifactStorage
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage


def code_server_runs(run) -> tuple[str | None, list[str] | None, str | None]:
    """The address of the code server that launched ``run`` (its ``.dagster/grpc_info`` tag; None
    for a run no code server launched, e.g. one executed in a CLI's own process), the run ids
    that server is executing now (None when it did not say), and why it did not say (the gRPC
    status: UNAVAILABLE when nothing answers there; UNIMPLEMENTED from the proxy that
    ``dagster code-server start`` runs, which does not forward the question). Public API has no
    way to ask a code server which run workers it holds; Dagster's own launcher reads the same tag
    to terminate a run."""
    import json

    import grpc
    from dagster._core.errors import DagsterUserCodeUnreachableError
    from dagster._core.storage.tags import GRPC_INFO_TAG
    from dagster._grpc.client import DagsterGrpcClient
    from dagster._grpc.types import GetCurrentRunsResult
    from dagster._serdes import deserialize_value

    info = json.loads(run.tags.get(GRPC_INFO_TAG) or "{}")
    if not info.get("socket") and not info.get("port"):
        return None, None, None
    address = info.get("socket") or f"{info.get('host')}:{info.get('port')}"
    client = DagsterGrpcClient(
        port=info.get("port"),
        socket=info.get("socket"),
        host=info.get("host") or "localhost",
        use_ssl=bool(info.get("use_ssl", False)),
    )
    try:
        return address, list(deserialize_value(client.get_current_runs(), GetCurrentRunsResult).current_runs), None
    except DagsterUserCodeUnreachableError as error:
        cause = error.__cause__
        return address, None, cause.code().name if isinstance(cause, grpc.Call) else "UNAVAILABLE"


def code_location(module: str, attribute: str = "defs"):
    """The code location as Dagster's own CLI loads it, by module name (``taxi-assets
    materialize`` runs jobs whose step processes rebuild it from that reference, without this
    process importing the code location). Public API runs jobs in-process only."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    return ReconstructableRepository.for_module(module, attribute, working_directory=None)


def stale_status_resolver(instance, asset_graph):
    """Dagster's own answer to "is this partition missing, unsynced or fresh, and why": the
    resolver behind the UI's "Unsynced" tags and GraphQL's ``staleStatus``/``staleCauses``. The
    sensor asks it per month, so it decides from the same versions the UI shows. Public API has
    ``RunRequest(stale_assets_only=True)``, which ignores partitions (dagster-io/dagster#18921)."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._core.definitions.temporal_context import TemporalContext
    from dagster._time import get_current_datetime

    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    return CachingStaleStatusResolver(instance, asset_graph, view)


def failed_check_evaluations(instance, asset: str, check: str, limit: int = 100) -> list:
    """The newest failed evaluations of one asset check (newest first), as
    ``(storage id, partition, timestamp, run id, metadata)``. The decay sensor answers each once.
    Public API has the check's latest result per partition, not the history a sensor needs to
    catch every failure between two ticks."""
    import dagster as dg
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    key = dg.AssetCheckKey(dg.AssetKey(asset), check)
    records = instance.event_log_storage.get_asset_check_execution_history(
        key, limit=limit, status={AssetCheckExecutionRecordStatus.FAILED}
    )
    found = []
    for record in records:
        event = record.event.dagster_event if record.event is not None else None
        data = event.asset_check_evaluation_data if event is not None else None
        metadata = {name: getattr(value, "value", value) for name, value in (data.metadata if data else {}).items()}
        found.append((record.id, record.partition, record.create_timestamp, record.run_id, metadata))
    return found


def _step_command():
    """This process's step command when it is one step's own process, started by Dagster's
    multiprocess executor (not a run worker, a code server or a test running steps in-process),
    else None. Public API does not say which process a step runs in; the child's entry point is the
    executor's ``_execute_command_in_child_process(event_queue, command)``."""
    import multiprocessing

    from dagster._core.executor import child_process_executor

    process = multiprocessing.current_process()
    if getattr(process, "_target", None) is not child_process_executor._execute_command_in_child_process:
        return None
    return process._args[1]  # type: ignore[attr-defined]


def in_step_subprocess() -> bool:
    """Whether this process is one step's own process: only such a process may be exited to end a
    step that cannot be interrupted."""
    return _step_command() is not None


def would_retry(instance, run) -> bool:
    """Whether Dagster's run retries will re-execute the failed ``run``: the decision the instance
    stores as the run's ``dagster/will_retry`` tag, made again for a run whose tag was never
    written (the failure and the tag are separate writes; the chaos soak saw PostgreSQL go away
    between them, and the retry daemon makes the same decision when it finds no tag). No public
    API answers it."""
    from dagster._core.events import RunFailureReason
    from dagster._core.execution.retries import auto_reexecution_should_retry_run
    from dagster._core.storage.tags import RUN_FAILURE_REASON_TAG

    if not instance.run_retries_enabled:
        return False
    reason = run.tags.get(RUN_FAILURE_REASON_TAG)
    return auto_reexecution_should_retry_run(instance, run, RunFailureReason(reason) if reason else None)


def keep_code_server_cleanup_alive() -> None:
    """Make the code server's run-worker check survive a storage outage (idempotent).

    Dagster 1.13's code server (``dagster api grpc``) checks its run workers every half second in
    one thread (``DagsterApiServer._check_for_orphaned_runs``): a dead worker's run is reported
    failed and dropped from the runs it lists. When the instance's storage is unreachable at that
    moment (PostgreSQL failing over), the error ends the thread for good: from then on the server
    lists every run it ever launched, finished or dead, and a run whose worker died stays STARTED
    until its max runtime (the chaos soak's PostgreSQL fault found it). Called where the code
    location loads, so it runs inside the code server: an error is logged and the check runs again
    on the next tick, and the dead worker's run is reported once the storage is back."""
    import logging
    import time

    from dagster._grpc.server import DagsterApiServer

    check = DagsterApiServer._check_for_orphaned_runs
    if getattr(check, "keeps_going", False):
        return
    logged = {"at": 0.0}

    def check_and_keep_going(self) -> None:
        try:
            check(self)
        except Exception as error:  # the thread must outlive any one tick's error
            if time.monotonic() - logged["at"] > 30:
                logged["at"] = time.monotonic()
                logging.getLogger("taxi_assets").warning(
                    f"code server: checking its run workers failed; trying again every tick: {error!r:.300}"
                )
            time.sleep(1.0)  # a storage outage: do not spin

    check_and_keep_going.keeps_going = True  # type: ignore[attr-defined]
    DagsterApiServer._check_for_orphaned_runs = check_and_keep_going  # type: ignore[method-assign]
