"""Every use of Dagster's private modules (``dagster._...``), in one place and each guarded.

They are what breaks first on an upgrade. Each use resolves what it needs through :func:`private`,
which checks that it exists (with the expected parameters); if not, it logs one warning naming the
Dagster version and the caller falls back to Dagster's default behaviour. Nothing here imports a
private module when this module loads, so an upgrade never stops the code location from loading.
"""

from __future__ import annotations

import datetime
import importlib
import inspect
import logging
from typing import Any

import dagster as dg

logger = logging.getLogger("taxi_assets")
_warned: set[str] = set()
GRPC_INFO_TAG = ".dagster/grpc_info"  # where Dagster records the code server that launched a run


def degrade(feature: str, why: str) -> None:
    """One warning per feature and process: what stopped working, on which Dagster, and why."""
    if feature not in _warned:
        _warned.add(feature)
        logger.warning(f"dagster {dg.__version__}: {feature} is off ({why}); Dagster's default behaviour applies")


def private(path: str, feature: str, parameters: tuple[str, ...] | None = None, exactly: bool = False) -> Any | None:
    """The object at ``path`` (``"module:attribute.attribute"``), or None after :func:`degrade`
    when it is missing or does not take ``parameters`` (in that order, first ones; ``exactly``:
    and no others)."""
    module, _, attributes = path.partition(":")
    try:
        found: Any = importlib.import_module(module)
        for name in filter(None, attributes.split(".")):
            found = getattr(found, name)
    except (ImportError, AttributeError) as error:
        degrade(feature, f"{path} is missing: {error}")
        return None
    if parameters is not None:
        try:
            names = tuple(inspect.signature(found).parameters)
        except (TypeError, ValueError):
            names = ()
        if (names if exactly else names[: len(parameters)]) != parameters:
            degrade(feature, f"{path} takes {names}, not {parameters}")
            return None
    return found


def run_health() -> tuple[Any, Any] | None:
    """``(CheckRunHealthResult, WorkerStatus)``, what a run launcher's worker health check answers
    (lib/run_launcher.py); None when missing (the launcher then says it cannot check). No public
    import path."""
    feature = "the run launcher's worker health check"
    result = private("dagster._core.launcher:CheckRunHealthResult", feature)
    status = private("dagster._core.launcher:WorkerStatus", feature)
    return (result, status) if result is not None and status is not None else None


def _grpc_parts() -> tuple[Any, ...] | None:
    feature = "the run launcher's worker health check"
    parts = tuple(
        private(path, feature)
        for path in (
            "dagster._core.errors:DagsterUserCodeUnreachableError",
            "dagster._grpc.client:DagsterGrpcClient",
            "dagster._grpc.types:GetCurrentRunsResult",
            "dagster._serdes:deserialize_value",
        )
    )
    return parts if all(part is not None for part in parts) else None


def can_ask_code_servers() -> bool:
    """Whether :func:`code_server_runs` can ask (every private part it uses exists)."""
    return _grpc_parts() is not None and run_health() is not None


def code_server_runs(run) -> tuple[str | None, list[str] | None, str | None]:
    """The address of the code server that launched ``run`` (None for a run no code server
    launched, e.g. one executed in a CLI's own process), the run ids that server executes now
    (None when it did not say), and why not (gRPC status: UNAVAILABLE when nothing answers,
    UNIMPLEMENTED from ``dagster code-server start``'s proxy). Public API cannot ask a code server
    which run workers it holds; Dagster's own launcher reads the same tag to terminate a run."""
    import json

    import grpc

    parts = _grpc_parts()
    info = json.loads(run.tags.get(GRPC_INFO_TAG) or "{}")
    if parts is None or (not info.get("socket") and not info.get("port")):
        return None, None, None
    unreachable, client_class, current_runs, deserialize = parts
    address = info.get("socket") or f"{info.get('host')}:{info.get('port')}"
    client = client_class(
        port=info.get("port"),
        socket=info.get("socket"),
        host=info.get("host") or "localhost",
        use_ssl=bool(info.get("use_ssl", False)),
    )
    try:
        return address, list(deserialize(client.get_current_runs(), current_runs).current_runs), None
    except unreachable as error:
        cause = error.__cause__
        return address, None, cause.code().name if isinstance(cause, grpc.Call) else "UNAVAILABLE"


def code_location(module: str, attribute: str = "defs"):
    """The code location as Dagster's own CLI loads it, by module name, so that step processes
    rebuild it from that reference (``taxi-assets materialize``); None when missing (the CLI then
    runs every step in its own process). Public API runs jobs in-process only."""
    repository = private(
        "dagster._core.definitions.reconstruct:ReconstructableRepository.for_module",
        "running a CLI retraining's steps in their own processes",
        ("module", "fn_name", "working_directory"),
    )
    return repository(module, attribute, working_directory=None) if repository is not None else None


def stale_status_resolver(instance, asset_graph):
    """Dagster's own answer to "is this partition missing, unsynced or fresh": the resolver behind
    the UI's "Unsynced" tags and GraphQL's ``staleStatus``, asked per month so the new-data sensor
    decides from the versions the UI shows. None when missing (the sensor then goes by file
    versions and missing months only). Public API has ``RunRequest(stale_assets_only=True)``, which
    ignores partitions (dagster-io/dagster#18921); GraphQL needs a webserver the sensor lacks."""
    feature = "the new-data sensor's staleness check"
    view = private("dagster._core.asset_graph_view.asset_graph_view:AssetGraphView", feature)
    resolver = private("dagster._core.definitions.data_version:CachingStaleStatusResolver", feature)
    context = private("dagster._core.definitions.temporal_context:TemporalContext", feature)
    if view is None or resolver is None or context is None:
        return None
    try:
        now = context(effective_dt=datetime.datetime.now(datetime.UTC), last_event_id=None)
        return resolver(instance, asset_graph, view(temporal_context=now, instance=instance, asset_graph=asset_graph))
    except TypeError as error:  # a changed constructor
        degrade(feature, f"its constructors changed: {error}")
        return None


def failed_check_evaluations(instance, asset: str, check: str, limit: int = 100) -> list:
    """The newest failed evaluations of one asset check (newest first), as ``(storage id,
    partition, timestamp, run id, metadata)``; the decay sensor answers each once. [] when missing
    (no decay alerts). Public API has each partition's latest result, not the history a sensor
    needs to catch every failure between two ticks (``get_event_records`` is deprecated)."""
    feature = "the decay sensor's check history"
    status = private("dagster._core.storage.asset_check_execution_record:AssetCheckExecutionRecordStatus", feature)
    history = getattr(instance.event_log_storage, "get_asset_check_execution_history", None)
    if status is None or history is None:
        if history is None:
            degrade(feature, "EventLogStorage.get_asset_check_execution_history is missing")
        return []
    key = dg.AssetCheckKey(dg.AssetKey(asset), check)
    found = []
    for record in history(key, limit=limit, status={status.FAILED}):
        event = record.event.dagster_event if record.event is not None else None
        data = event.asset_check_evaluation_data if event is not None else None
        metadata = {name: getattr(value, "value", value) for name, value in (data.metadata if data else {}).items()}
        found.append((record.id, record.partition, record.create_timestamp, record.run_id, metadata))
    return found


def would_retry(instance, run) -> bool:
    """Whether Dagster's run retries will re-execute the failed ``run``: the decision stored as the
    run's ``dagster/will_retry`` tag, made again for a run whose tag was never written (the failure
    and the tag are separate writes; the retry daemon decides the same way when it finds no tag).
    False when missing (the failure alert is then sent). No public API answers it."""
    decide = private(
        "dagster._core.execution.retries:auto_reexecution_should_retry_run",
        "holding back alerts for runs that will be retried",
        ("instance", "run", "run_failure_reason"),
    )
    reasons = private("dagster._core.events:RunFailureReason", "holding back alerts for runs that will be retried")
    if decide is None or reasons is None or not instance.run_retries_enabled:
        return False
    reason = run.tags.get("dagster/failure_reason")
    return bool(decide(instance, run, reasons(reason) if reason else None))


def keep_code_server_cleanup_alive() -> None:
    """Make the code server's run-worker check survive a storage outage (idempotent).

    Dagster's code server checks its run workers in one thread
    (``DagsterApiServer._check_for_orphaned_runs``); an unreachable storage (PostgreSQL failing
    over) ends that thread for good, and a run whose worker died stays STARTED until its max
    runtime. Wrapped so an error is logged and the check runs again on the next tick. Patches
    nothing when the method is missing or takes other parameters than ``(self)``."""
    import time

    feature = "the code server's run-worker check outliving outages"
    server = private("dagster._grpc.server:DagsterApiServer", feature)
    check = private("dagster._grpc.server:DagsterApiServer._check_for_orphaned_runs", feature, ("self",), exactly=True)
    if server is None or check is None or getattr(check, "keeps_going", False):
        return
    logged = {"at": 0.0}

    def check_and_keep_going(self) -> None:
        try:
            check(self)
        except Exception as error:  # the thread must outlive any one tick's error
            if time.monotonic() - logged["at"] > 30:
                logged["at"] = time.monotonic()
                logger.warning(f"code server: checking its run workers failed; trying again every tick: {error!r:.300}")
            time.sleep(1.0)  # a storage outage: do not spin

    check_and_keep_going.keeps_going = True  # type: ignore[attr-defined]
    server._check_for_orphaned_runs = check_and_keep_going


def local_storage_bases() -> tuple[type, type, type] | None:
    """Dagster's SQLite storage, local artifact storage and local compute log manager, which
    lib/instance.py subclasses so that relative paths in dagster.yaml mean "inside DAGSTER_HOME"
    (Dagster's YAML cannot join an environment variable with a path); None when missing. These
    classes have no public import path."""
    feature = "DAGSTER_HOME-relative storage paths"
    bases = (
        private("dagster._core.storage.sqlite_storage:DagsterSqliteStorage", feature),
        private("dagster._core.storage.root:LocalArtifactStorage", feature),
        private("dagster._core.storage.local_compute_log_manager:LocalComputeLogManager", feature),
    )
    return bases if all(isinstance(base, type) for base in bases) else None  # type: ignore[return-value]
