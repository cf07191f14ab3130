"""Which months to retrain: a pure decision over plain data (no Dagster), so every rule has a
unit test. The new-data sensor and the hourly schedule gather a :class:`MonthState` per month
(the trip file's version now, what Dagster says is missing or unsynced, runs in flight), call
:func:`plan`, and turn its requests into run requests.

The rules:

* A month is retrained when its file changed (a version Dagster has not observed yet) or when
  Dagster says one of its retraining assets is missing or unsynced (a new file, new code, a
  changed input). A month whose file and code are unchanged is never retrained again.
* Only its decision (``production_model``) unsynced, because the previous month decided anew: a
  ``decide`` run re-makes the decision alone; the month's models stand.
* Month M trains on M-1 and M: when M-1's cleaned trips are missing or out of date, M-1 is
  prepared first (raw and cleaned trips only) and M follows on a later tick. A month whose
  previous month is being retrained waits for it. The first month has nothing before it: it is
  prepared only.
* A calm first start: on the first tick, the months already there that were never trained
  (except the newest) are *ignored* until their file changes; the newest month is trained.
* One run per month at a time: a month with a run in flight is skipped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

CHAIN = ("raw_trips", "cleaned_trips", "training_set", "sklearn_models", "xgboost_model", "production_model")
PREPARATION = ("raw_trips", "cleaned_trips")


@dataclass(frozen=True)
class MonthState:
    """One month as the source and the Dagster instance see it."""

    file: str | None  # the trip file's version now; None: the source has no file for the month
    observed: str | None = None  # the version Dagster last observed for it
    unsynced: tuple[str, ...] = CHAIN  # retraining assets missing or unsynced (default: never made)
    in_flight: bool = False  # a run for this month is queued or running
    decision: str | None = None  # production_model's data version; None: never decided

    @property
    def changed(self) -> bool:
        return self.file is not None and self.file != self.observed

    @property
    def prepared(self) -> bool:
        return not self.changed and not set(PREPARATION) & set(self.unsynced)


@dataclass(frozen=True)
class Request:
    """A run to ask for: ``kind`` is retrain (the whole month), prepare (raw and cleaned trips
    only) or decide (production_model alone)."""

    month: str
    kind: str
    assets: tuple[str, ...]
    key: str  # the run key: the same inputs are never asked for twice
    reason: str


@dataclass
class Plan:
    requests: list[Request] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "<month>: why"
    ignored: dict[str, str] = field(default_factory=dict)  # months left alone, by file version


def run_key(kind: str, month: str, inputs: dict) -> str:
    """``kind:month:digest`` of everything the run would read (file versions, code versions, the
    decision it builds on): a failed run is not asked for again until one of them changes."""
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    return f"{kind}:{month}:{digest}"


def previous(month: str) -> str:
    year, number = int(month[:4]), int(month[5:7])
    return f"{year - 1}-12" if number == 1 else f"{year}-{number - 1:02d}"


def calm_start(states: dict[str, MonthState]) -> dict[str, str]:
    """The months to leave alone on a first start: every month with a file that was never decided,
    except the newest."""
    present = sorted(month for month, state in states.items() if state.file is not None)
    return {month: states[month].file for month in present[:-1] if states[month].decision is None}  # type: ignore[misc]


def _wanted(month: str, state: MonthState, ignored: dict[str, str]) -> bool:
    if state.file is None:
        return False
    if month in ignored:
        return state.file != ignored[month]
    return state.changed or bool(state.unsynced)


def _request(month: str, kind: str, assets: tuple[str, ...], states: dict[str, MonthState], code: dict) -> Request:
    state = states[month]
    earlier = states.get(previous(month), MonthState(file=None))
    inputs = {
        "file": state.file,
        "previous_file": earlier.file if kind != "prepare" else None,
        "previous_decision": earlier.decision if kind != "prepare" else None,
        "code": {asset: code.get(asset) for asset in assets},
    }
    reasons = (["new file version"] if state.changed else []) + [f"{a} unsynced" for a in state.unsynced if a in assets]
    return Request(month, kind, assets, run_key(kind, month, inputs), "; ".join(reasons) or "requested")


def plan(
    states: dict[str, MonthState],
    first_month: str,
    code_versions: dict[str, str],
    ignored: dict[str, str] | None = None,
) -> Plan:
    """The runs to ask for now (see the module's docstring). ``ignored`` is None on the first
    tick (a calm start decides it) and what the last tick returned after that."""
    result = Plan(ignored=calm_start(states) if ignored is None else dict(ignored))
    retraining: set[str] = set()  # months asked for (or running) this tick: their followers wait
    for month in sorted(states):
        state = states[month]
        if not _wanted(month, state, result.ignored):
            continue
        result.ignored.pop(month, None)  # a changed file: the month is ours again
        if state.in_flight:
            result.skipped.append(f"{month}: a run for it is in flight")
            retraining.add(month)
            continue
        before = previous(month)
        earlier = states.get(before, MonthState(file=None))
        needs = set(state.unsynced) | (set(CHAIN) if state.changed else set())
        if month == first_month or (earlier.file is None and not earlier.prepared):
            # Nothing before it to train on: prepare it, for the month after it.
            if needs & set(PREPARATION) or state.changed:
                result.requests.append(_request(month, "prepare", PREPARATION, states, code_versions))
                retraining.add(month)
            continue
        if before in retraining or earlier.in_flight:
            result.skipped.append(f"{month}: waiting for {before}, which is being retrained or prepared")
            continue
        if not earlier.prepared:
            result.requests.append(_request(before, "prepare", PREPARATION, states, code_versions))
            result.skipped.append(f"{month}: waiting for cleaned_trips {before}, being prepared")
            retraining.add(before)
            continue
        kind, assets = ("decide", ("production_model",)) if needs == {"production_model"} else ("retrain", CHAIN)
        result.requests.append(_request(month, kind, assets, states, code_versions))
        retraining.add(month)
    return result
