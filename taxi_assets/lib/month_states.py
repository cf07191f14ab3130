"""What the new-data sensor and the schedule decide from: each month's trip file version (from the
source), what Dagster observed and says is missing or unsynced, and the runs in flight, as the
plain :class:`~taxi_assets.ml.retraining.MonthState` the decision takes.

Dagster's stale-status resolver costs a few queries per asset and month; a tick over fourteen
months would spend seconds in it. So each month has a *stamp* (the storage ids of its newest
trip-file observation and its assets' newest materializations, one query per asset for every
month, and the code versions): the resolver is asked only about months whose stamp changed since
the last tick, and the answer is kept in the sensor's cursor with the stamp.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import dagster as dg

from taxi_assets.lib.catalog import CODE_VERSIONS, MONTH_TAG, REASON_TAG, TRIP_FILES
from taxi_assets.lib.dagster_private import stale_status_resolver
from taxi_assets.lib.history import observed_version, recorded_version
from taxi_assets.lib.months import FIRST_MONTH, previous_month
from taxi_assets.lib.settings import retraining_run_config
from taxi_assets.ml.retraining import CHAIN, PREPARATION, MonthState, Request

ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def in_flight(instance: dg.DagsterInstance) -> set[str]:
    """Months with a run queued or running (runs for a month carry the month tag)."""
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=ACTIVE), limit=1000)
    return {record.dagster_run.tags[MONTH_TAG] for record in records if MONTH_TAG in record.dagster_run.tags}


def _storage_ids(instance: dg.DagsterInstance) -> dict[str, dict[str, int]]:
    """{asset: {month: storage id of its newest event}}: one query per asset, every month."""
    materialized, observed = dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_OBSERVATION
    ids = {
        asset: dict(instance.get_latest_storage_id_by_partition(dg.AssetKey(asset), materialized)) for asset in CHAIN
    }
    ids[TRIP_FILES] = dict(instance.get_latest_storage_id_by_partition(dg.AssetKey(TRIP_FILES), observed))
    return ids


def _stamp(ids: dict[str, dict[str, int]], month: str) -> str:
    """Changes whenever anything the month's status depends on changes."""
    before = previous_month(month)
    parts = {asset: ids[asset].get(month) for asset in ids} | {
        "previous_cleaned_trips": ids["cleaned_trips"].get(before),
        "previous_production_model": ids["production_model"].get(before),
        "code": CODE_VERSIONS,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _unsynced(resolver, month: str) -> tuple[str, ...]:
    """The month's retraining assets Dagster says are missing or stale (the first month has only
    raw and cleaned trips); none when this Dagster has no resolver (see lib/dagster_private.py)."""
    if resolver is None:
        return ()
    assets = PREPARATION if month == FIRST_MONTH else CHAIN
    return tuple(
        asset for asset in assets if resolver.get_status(dg.AssetKey(asset), month).value in ("MISSING", "STALE")
    )


def month_states(
    instance: dg.DagsterInstance,
    asset_graph,
    files: Mapping[str, str | None],
    known: dict[str, dict] | None = None,
) -> tuple[dict[str, MonthState], dict[str, dict]]:
    """A :class:`MonthState` for every month in ``files`` (month -> its file's version now), and
    what to keep for the next tick (``known``: per month, the stamp and what it meant)."""
    known = dict(known or {})
    ids, flying = _storage_ids(instance), in_flight(instance)
    resolver = None
    states: dict[str, MonthState] = {}
    # Every month with a file, and the month before each (it may be prepared without a file now).
    months = {month: files.get(month) for month in files} | {
        previous_month(month): files.get(previous_month(month)) for month in files if month != FIRST_MONTH
    }
    for month, version in sorted(months.items()):
        stamp = _stamp(ids, month)
        if known.get(month, {}).get("stamp") != stamp:
            resolver = resolver or stale_status_resolver(instance, asset_graph)  # None: degraded
            known[month] = {
                "stamp": stamp,
                "observed": observed_version(instance, month),
                "unsynced": list(_unsynced(resolver, month)),
                "decision": recorded_version(instance, "production_model", month),
            }
        seen = known[month]
        states[month] = MonthState(
            file=version,
            observed=seen["observed"],
            unsynced=tuple(seen["unsynced"]),
            in_flight=month in flying,
            decision=seen["decision"],
        )
    return states, known


def _run_config(request: Request) -> dict:
    """The configured retraining budgets (TAXI_RETRAINING_RUN_CONFIG), for the ops the run has."""
    config = retraining_run_config()
    ops = {name: value for name, value in config.get("ops", {}).items() if name in request.assets}
    return {**config, "ops": ops} if ops else {key: value for key, value in config.items() if key != "ops"}


def run_request(request: Request, reason: str | None = None, tags: dict[str, str] | None = None) -> dg.RunRequest:
    """The retraining job's run for a planned request (ingesting runs observe the file first)."""
    assets = [TRIP_FILES, *request.assets] if "raw_trips" in request.assets else list(request.assets)
    return dg.RunRequest(
        run_key=request.key,
        partition_key=request.month,
        asset_selection=[dg.AssetKey(asset) for asset in assets],
        run_config=_run_config(request),
        tags={MONTH_TAG: request.month, REASON_TAG: (reason or request.reason)[:200], **(tags or {})},
    )
