"""Who decides what serves, as plain data: each month's automatic decision and the operators'
(pin, rollback, approve, reject, unpin), folded in the order Dagster stored them.

Every reader of "what serves" (the publisher, the next month's champion, the batch predictions,
``lineage``) folds the same recorded events with :func:`fold`, so a pin, a rollback or an
approval recorded between two retrainings means the same thing to all of them, whatever order
their processes ran in. Checking what an operator asks for (:func:`check_request`) and judging
a promotion by the next month (:func:`judge_promotion`) are here too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

AUTOMATIC = "automatic"  # production_model's decision for a month
PIN = "pin"  # a person serves a registered version; it holds until unpinned
UNPIN = "unpin"
ROLLBACK = "rollback"  # a person serves the model that served before; it holds like a pin
APPROVE = "approve"  # a person lets a pending challenger serve
REJECT = "reject"
AUTO_ROLLBACK = "auto_rollback"  # the next month found the promoted model worse than the one it replaced
JUDGED = "judged"  # the next month found it worse, and a person's decision keeps it serving
OPERATOR_KINDS = (PIN, UNPIN, ROLLBACK, APPROVE, REJECT)
KINDS = (AUTOMATIC, *OPERATOR_KINDS, AUTO_ROLLBACK, JUDGED)
BY_A_PERSON = (PIN, ROLLBACK, APPROVE)  # promotions the next month's judgement never undoes

# How much worse (a fraction of its RMSE) the promoted model may do on the next month than the
# model it replaced, before it is rolled back; why 5 %: the reason below.
PROMOTION_TOLERANCE = 0.05
PROMOTION_TOLERANCE_REASON = (
    "Sound models trained a month apart differ on the next month's trips by at most about 2.6 % of RMSE, and the "
    "newer one was never worse by more than 0.1 % (2023-03 to 2024-02, benchmarks/bench_promotion_noise.py); 5 % "
    "is beyond that noise and far below what a model trained on a broken month costs."
)


class SteeringError(ValueError):
    """An operator's request that cannot be carried out; the message names the version or month."""


@dataclass(frozen=True)
class ModelRef:
    """A model that can serve: its registered version, and the production_model month whose
    stored value holds it (None: only in the MLflow registry)."""

    name: str
    model_partition: str  # the month it was trained for
    registered_model: str | None
    version: str | None
    source_month: str | None = None
    rmse: float | None = None  # its validation RMSE when it was chosen

    @property
    def label(self) -> str:
        if self.registered_model and self.version:
            return f"{self.registered_model} v{self.version}"
        return f"{self.name} ({self.model_partition}, unregistered)"

    def same_model(self, other: ModelRef | None) -> bool:
        return other is not None and (self.registered_model, self.version, self.name, self.model_partition) == (
            other.registered_model,
            other.version,
            other.name,
            other.model_partition,
        )


@dataclass(frozen=True)
class Event:
    """One recorded decision, in Dagster's order (``storage_id``)."""

    storage_id: int
    kind: str
    month: str  # automatic: decided for; approve/reject: the pending month; others: the newest decided month
    run_id: str = ""
    model: ModelRef | None = None  # automatic: the rule's choice; pin/rollback/auto_rollback: the target
    promoted: bool = False  # automatic: the month's challenger beat the champion
    approval: bool = False  # automatic: decided under ``promotion: approval``
    challenger_rmse: float | None = None
    champion_rmse: float | None = None
    by: str = ""
    reason: str = ""
    at: str = ""  # when (ISO 8601, UTC)
    judged: int | None = None  # auto_rollback/judged: the promotion (its storage id) that was judged


@dataclass(frozen=True)
class Served:
    """The model that serves, the latest event that confirmed it, and the promotion that put it there."""

    event: Event
    model: ModelRef
    how: str  # the kind of the promotion: automatic, pin, rollback, approve, auto_rollback
    since: Event  # the promotion (the first event that served this model, this time)
    replaced: ModelRef | None  # what served before it


@dataclass(frozen=True)
class Pending:
    event: Event  # the automatic decision whose challenger waits
    status: str = "pending"  # pending | approved | rejected | superseded
    note: str = ""


@dataclass(frozen=True)
class State:
    serving: Served | None = None
    before: tuple[Served, ...] = ()  # what served before, oldest first: rollback returns to before[-1]
    pinned: Event | None = None  # the person's decision that holds, if any
    pending: dict[str, Pending] = field(default_factory=dict)  # by month
    newest_month: str | None = None  # the newest month an automatic decision was made for
    outcomes: dict[int, str] = field(default_factory=dict)  # what each event did, by storage id

    def outcome(self, event: Event) -> str:
        return self.outcomes.get(event.storage_id, "not recorded")


def fold(events: Iterable[Event]) -> State:
    """What serves after ``events``, applied in the order Dagster stored them."""
    state = State()
    for event in sorted(events, key=lambda e: e.storage_id):
        state = apply(state, event)
    return state


def state_for_month(events: Iterable[Event], month: str) -> State:
    """What served when ``month``'s file arrived: the events recorded for earlier months."""
    return fold(event for event in events if event.month < month)


def apply(state: State, event: Event) -> State:
    """One event applied to ``state``; what it did is in the new state's ``outcomes``."""
    handlers = {
        AUTOMATIC: _automatic,
        PIN: _pin,
        UNPIN: _unpin,
        ROLLBACK: _rollback,
        AUTO_ROLLBACK: _rollback,
        APPROVE: _approve,
        REJECT: _reject,
        JUDGED: lambda s, e: (s, f"kept serving: {e.reason}"),
    }
    if event.kind not in handlers:
        raise ValueError(f"event {event.storage_id}: unknown kind {event.kind!r} (one of {', '.join(KINDS)})")
    after, outcome = handlers[event.kind](state, event)
    return replace(after, outcomes={**state.outcomes, event.storage_id: outcome})


def _serve(state: State, event: Event, model: ModelRef, how: str, history: tuple[Served, ...] | None = None):
    """``model`` serves from ``event``; the same model as now keeps its promotion's record."""
    current = state.serving
    if current is not None and current.model.same_model(model):
        served = replace(current, event=event, model=model)
        return replace(state, serving=served), f"{model.label} keeps serving"
    before = state.before if history is None else history
    if current is not None and history is None:
        before = (*before, current)
    served = Served(event, model, how, event, current.model if current else None)
    replaced = f" instead of {current.model.label}" if current else ""
    return replace(state, serving=served, before=before), f"{model.label} serves{replaced}"


def _supersede(pending: dict[str, Pending], month: str) -> dict[str, Pending]:
    return {
        key: replace(item, status="superseded", note=f"superseded by {month}'s decision")
        if item.status == "pending" and key <= month
        else item
        for key, item in pending.items()
    }


def _automatic(state: State, event: Event):
    assert event.model is not None, f"automatic decision {event.storage_id} names no model"
    if state.newest_month is not None and event.month < state.newest_month:
        return state, f"left alone: {state.newest_month}'s decision is newer (a backfill never moves what serves)"
    state = replace(state, newest_month=event.month, pending=_supersede(state.pending, event.month))
    if state.pinned is not None:
        held = state.serving.model.label if state.serving else "nothing"
        return state, f"held: {held} is pinned ({_who(state.pinned)}); the rule chose {event.model.label}"
    if event.approval and event.promoted and not event.model.same_model(state.serving and state.serving.model):
        waiting = {**state.pending, event.month: Pending(event)}
        return replace(
            state, pending=waiting
        ), f"pending approval: {event.model.label} waits (`taxi-assets approve {event.month}`)"
    return _serve(state, event, event.model, AUTOMATIC)


def _who(event: Event) -> str:
    return f"{event.kind} by {event.by or 'unknown'}" + (f": {event.reason}" if event.reason else "")


def _pin(state: State, event: Event):
    """``event.model`` serves and holds; pinning the model that serves makes its promotion a
    person's (the next month's judgement then keeps it)."""
    assert event.model is not None
    after, outcome = _serve(state, event, event.model, PIN)
    assert after.serving is not None
    return replace(after, serving=replace(after.serving, how=PIN), pinned=event), f"pinned: {outcome}"


def _unpin(state: State, event: Event):
    if state.pinned is None:
        return state, "nothing was pinned"
    return replace(state, pinned=None), "unpinned: the next automatic decision may replace what serves"


def _rollback(state: State, event: Event):
    """Back to ``event.model`` (what served before); a person's rollback holds like a pin. An
    automatic one applies only while the promotion it judged still serves."""
    assert event.model is not None
    if event.kind == AUTO_ROLLBACK:
        if state.serving is None or state.serving.since.storage_id != event.judged:
            return state, "not applied: the promotion it judged no longer serves"
        if state.pinned is not None:
            return state, f"not applied: {_who(state.pinned)} holds"
    index = max((i for i, s in enumerate(state.before) if s.model.same_model(event.model)), default=None)
    history = (
        state.before[:index] if index is not None else (*state.before, *([state.serving] if state.serving else []))
    )
    after, outcome = _serve(state, event, event.model, event.kind, history)
    if event.kind == ROLLBACK:
        after = replace(after, pinned=event)
    return after, f"rolled back: {outcome}"


def _approve(state: State, event: Event):
    waiting = state.pending.get(event.month)
    if waiting is None or waiting.status != "pending":
        status = "nothing pending" if waiting is None else f"{waiting.status} {waiting.note}".strip()
        return state, f"not applied: {event.month}: {status}"
    if state.pinned is not None:
        return state, f"not applied: {_who(state.pinned)} holds"
    assert waiting.event.model is not None
    after, outcome = _serve(state, event, waiting.event.model, APPROVE)
    approved = {**after.pending, event.month: replace(waiting, status="approved", note=f"by {event.by}")}
    return replace(after, pending=approved), f"approved: {outcome}"


def _reject(state: State, event: Event):
    waiting = state.pending.get(event.month)
    if waiting is None or waiting.status != "pending":
        return state, f"not applied: {event.month} has no pending challenger"
    rejected = {**state.pending, event.month: replace(waiting, status="rejected", note=f"by {event.by}")}
    return replace(state, pending=rejected), f"rejected {waiting.event.model.label if waiting.event.model else '?'}"


def check_request(state: State, kind: str, month: str = "", target: ModelRef | None = None) -> ModelRef | None:
    """The model an operator's request serves (None for unpin and reject), or
    :class:`SteeringError` saying why it cannot be done now."""
    serving = state.serving
    if kind == PIN:
        if target is None:
            raise SteeringError("promote: name a model and a version")
        if state.pinned is not None and serving is not None and serving.model.same_model(target):
            raise SteeringError(f"promote: {target.label} already serves, pinned ({_who(state.pinned)})")
        return target
    if kind == UNPIN:
        if state.pinned is None:
            raise SteeringError("promote --unpin: nothing is pinned; automatic decisions already apply")
        return None
    if kind == ROLLBACK:
        if serving is None:
            raise SteeringError("rollback: nothing serves yet")
        if not state.before:
            raise SteeringError(
                f"rollback: {serving.model.label} is the first model that served; nothing to go back to"
            )
        return state.before[-1].model
    if kind in (APPROVE, REJECT):
        waiting = state.pending.get(month)
        if waiting is None:
            known = ", ".join(f"{m} ({p.status})" for m, p in sorted(state.pending.items())) or "none"
            raise SteeringError(
                f"{kind}: {month or '(no month)'} has no challenger waiting for approval (pending: {known})"
            )
        if waiting.status != "pending":
            raise SteeringError(f"{kind}: {month}'s challenger was {waiting.status} {waiting.note}".rstrip())
        if kind == APPROVE and state.pinned is not None:
            raise SteeringError(f"approve: {_who(state.pinned)} holds; `taxi-assets promote --unpin` first")
        return waiting.event.model if kind == APPROVE else None
    raise SteeringError(f"unknown request {kind!r}; one of {', '.join(OPERATOR_KINDS)}")


@dataclass(frozen=True)
class Judgement:
    """The next month's verdict on a promotion: the promoted model against the one it replaced."""

    promotion: int  # the storage id of the promotion judged
    promoted_how: str
    month: str  # the month both models scored
    serving: str
    shadow: str
    serving_rmse: float
    shadow_rmse: float
    tolerance: float
    worse: bool
    rollback: bool
    reason: str


def judge_promotion(
    served: Served, month: str, serving_rmse: float, shadow_rmse: float, tolerance: float = PROMOTION_TOLERANCE
) -> Judgement | None:
    """The verdict on ``served``'s promotion from ``month``, the first month after it; None when
    there is nothing to judge (no model was replaced, the month is not the next one, or the model
    came back by a rollback). Worse by more than ``tolerance`` (a fraction of the replaced model's
    RMSE) rolls back, unless a person pinned or approved it."""
    if served.replaced is None or served.how in (ROLLBACK, AUTO_ROLLBACK) or month != next_month(served.since.month):
        return None
    limit = shadow_rmse * (1 + tolerance)
    worse = serving_rmse > limit
    rollback = worse and served.how not in BY_A_PERSON
    verdict = (
        f"{served.model.label} did worse on {month} than {served.replaced.label}, which it replaced: RMSE "
        f"{serving_rmse:.3f} against {shadow_rmse:.3f} (tolerance {tolerance:.0%}, limit {limit:.3f})"
        if worse
        else f"{served.model.label} held up on {month}: RMSE {serving_rmse:.3f} against {shadow_rmse:.3f} for "
        f"{served.replaced.label} (tolerance {tolerance:.0%})"
    )
    if worse:
        verdict += "; rolled back" if rollback else f"; kept: a person's {served.how} holds"
    return Judgement(
        served.since.storage_id, served.how, month, served.model.label, served.replaced.label,
        serving_rmse, shadow_rmse, tolerance, worse, rollback, verdict,
    )  # fmt: skip


def next_month(month: str) -> str:
    """``YYYY-MM`` of the month after ``month``."""
    year, number = (int(part) for part in month.split("-"))
    return f"{year + number // 12}-{number % 12 + 1:02d}"


def approval_request(event: Event, run_url: str = "") -> tuple[str, str]:
    """The subject and body of the message asking a person to approve ``event``'s challenger."""
    label = event.model.label if event.model else "the challenger"
    challenger = f"{event.challenger_rmse:.3f}" if event.challenger_rmse is not None else "?"
    champion = f"{event.champion_rmse:.3f}" if event.champion_rmse is not None else "none (no champion)"
    subject = f"[taxi-assets] approve {event.month}? {label} (RMSE {challenger} against the champion's {champion})"
    body = (
        f"The retraining of {event.month} chose {label}: validation RMSE {challenger} minutes on {event.month}, "
        f"against {champion} for the model that serves.\n\nUnder `promotion: approval` it waits; nothing serves it "
        f"until a person decides:\n\n  taxi-assets approve {event.month} --reason '...'\n"
        f"  taxi-assets reject {event.month} --reason '...'\n\n(or the steer_serving job in the Dagster UI, "
        f"action approve / reject, month {event.month}). A newer month's decision supersedes it.\n"
    )
    return subject, body + (f"\nRun: {run_url}\n" if run_url else "")
