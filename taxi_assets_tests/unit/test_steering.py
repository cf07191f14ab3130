"""What serves, folded from recorded decisions (taxi_assets.ml.steering), without an instance:
automatic decisions, pins, rollbacks, approvals, and the next month's judgement."""

import pytest

from taxi_assets.ml.steering import (
    APPROVE,
    AUTO_ROLLBACK,
    AUTOMATIC,
    JUDGED,
    PIN,
    REJECT,
    ROLLBACK,
    UNPIN,
    Event,
    ModelRef,
    SteeringError,
    approval_request,
    check_request,
    fold,
    judge_promotion,
    next_month,
    state_for_month,
)


def model(version: str, trained_for: str = "2024-01", name: str = "xgboost") -> ModelRef:
    return ModelRef(name, trained_for, f"taxi-duration-{name}", version, source_month=trained_for)


V1, V2, V3 = model("1", "2023-12"), model("2", "2024-01"), model("3", "2024-02")


class Log:
    """Events in the order Dagster would store them (storage ids ascending)."""

    def __init__(self):
        self.events: list[Event] = []

    def add(self, kind: str, month: str, target: ModelRef | None = None, **fields) -> Event:
        event = Event(len(self.events) + 1, kind, month, f"run-{len(self.events) + 1}", target, **fields)
        self.events.append(event)
        return event

    def automatic(self, month: str, target: ModelRef, promoted: bool = True, **fields) -> Event:
        return self.add(AUTOMATIC, month, target, promoted=promoted, **fields)


def two_months() -> Log:
    log = Log()
    log.automatic("2023-12", V1)
    log.automatic("2024-01", V2)
    return log


def test_each_newer_month_serves_and_a_backfill_never_moves_what_serves():
    log = two_months()
    backfill = log.automatic("2023-11", model("9", "2023-11"))
    state = fold(log.events)
    assert state.serving is not None and state.serving.model == V2
    assert state.serving.replaced == V1 and [s.model for s in state.before] == [V1]
    assert state.outcome(backfill).startswith("left alone: 2024-01's decision is newer")


def test_a_kept_champion_keeps_its_promotion():
    log = two_months()
    champion = ModelRef(V2.name, V2.model_partition, V2.registered_model, V2.version, source_month="2024-02")
    kept = log.automatic("2024-02", champion, promoted=False)
    state = fold(log.events)
    assert state.serving is not None and state.serving.event == kept
    assert state.serving.since.month == "2024-01" and state.serving.model.source_month == "2024-02"
    assert state.outcome(kept) == "taxi-duration-xgboost v2 keeps serving"


def test_rollback_serves_the_model_before_and_holds_like_a_pin():
    log = two_months()
    state = fold(log.events)
    assert check_request(state, ROLLBACK) == V1
    log.add(ROLLBACK, "2024-01", V1, by="ana", reason="v2 mispredicts airport trips")
    state = fold(log.events)
    assert state.serving is not None and state.serving.model == V1 and state.serving.how == ROLLBACK
    assert state.pinned is not None and state.pinned.by == "ana"
    assert state.before == ()  # back to the first model: nothing further to roll back to
    with pytest.raises(SteeringError, match="first model that served"):
        check_request(state, ROLLBACK)
    # The next month's automatic decision records its figures but the pin holds.
    held = log.automatic("2024-02", V3)
    state = fold(log.events)
    assert state.serving is not None and state.serving.model == V1
    assert "held: taxi-duration-xgboost v1 is pinned (rollback by ana" in state.outcome(held)
    assert state.newest_month == "2024-02"


def test_a_pin_holds_until_unpinned_and_then_the_next_decision_applies():
    log = two_months()
    log.add(PIN, "2024-01", V1, by="ana", reason="audit")
    log.automatic("2024-02", V3)
    assert fold(log.events).serving.model == V1  # type: ignore[union-attr]
    with pytest.raises(SteeringError, match="already serves, pinned"):
        check_request(fold(log.events), PIN, target=V1)
    unpin = log.add(UNPIN, "2024-02", by="ana")
    state = fold(log.events)
    assert state.pinned is None and state.serving is not None and state.serving.model == V1
    assert state.outcome(unpin).startswith("unpinned")
    with pytest.raises(SteeringError, match="nothing is pinned"):
        check_request(state, UNPIN)
    log.automatic("2024-03", model("4", "2024-03"))
    assert fold(log.events).serving.model.version == "4"  # type: ignore[union-attr]


def test_approval_waits_then_serves_and_a_newer_month_supersedes_a_waiting_one():
    log = two_months()
    waiting = log.automatic("2024-02", V3, approval=True, challenger_rmse=5.1, champion_rmse=5.3)
    state = fold(log.events)
    assert state.serving is not None and state.serving.model == V2  # nothing serves it yet
    assert state.pending["2024-02"].status == "pending"
    assert "taxi-assets approve 2024-02" in state.outcome(waiting)
    assert check_request(state, APPROVE, "2024-02") == V3
    log.add(APPROVE, "2024-02", by="ana")
    state = fold(log.events)
    assert state.serving is not None and state.serving.model == V3 and state.serving.how == APPROVE
    assert state.pending["2024-02"].status == "approved"
    with pytest.raises(SteeringError, match="was approved"):
        check_request(state, APPROVE, "2024-02")

    log.automatic("2024-03", model("4", "2024-03"), approval=True)
    log.automatic("2024-04", model("5", "2024-04"), approval=True)
    state = fold(log.events)
    assert state.pending["2024-03"].status == "superseded" and state.pending["2024-04"].status == "pending"
    with pytest.raises(SteeringError, match="superseded by 2024-04"):
        check_request(state, APPROVE, "2024-03")
    # An approval recorded after the supersession (a race) promotes nothing.
    late = log.add(APPROVE, "2024-03", by="bo")
    assert fold(log.events).serving.model == V3  # type: ignore[union-attr]
    assert fold(log.events).outcome(late).startswith("not applied")


def test_a_rejected_challenger_never_serves_and_unknown_months_are_named():
    log = two_months()
    log.automatic("2024-02", V3, approval=True)
    with pytest.raises(SteeringError, match="2024-05 has no challenger waiting"):
        check_request(fold(log.events), APPROVE, "2024-05")
    log.add(REJECT, "2024-02", by="ana", reason="trained on a strike month")
    state = fold(log.events)
    assert state.pending["2024-02"].status == "rejected" and state.serving.model == V2  # type: ignore[union-attr]
    late = log.add(APPROVE, "2024-02", by="bo")
    assert fold(log.events).outcome(late).startswith("not applied")


def test_a_pin_holds_against_challengers_and_approvals():
    log = two_months()
    log.automatic("2024-02", V3, approval=True)  # waiting, then someone pins
    log.add(PIN, "2024-02", V1, by="ana")
    with pytest.raises(SteeringError, match="promote --unpin"):
        check_request(fold(log.events), APPROVE, "2024-02")
    held = log.automatic("2024-03", model("4", "2024-03"), approval=True)  # under the pin: held, not waiting
    state = fold(log.events)
    assert state.outcome(held).startswith("held:") and "2024-03" not in state.pending
    assert state.pending["2024-02"].status == "superseded"


def test_the_next_month_judges_only_the_promotion_it_follows():
    log = two_months()
    served = fold(log.events).serving
    assert served is not None
    worse = judge_promotion(served, "2024-02", serving_rmse=6.0, shadow_rmse=5.5, tolerance=0.05)
    assert worse is not None and worse.worse and worse.rollback and worse.promotion == 2
    assert "did worse on 2024-02 than taxi-duration-xgboost v1" in worse.reason
    fine = judge_promotion(served, "2024-02", serving_rmse=5.7, shadow_rmse=5.5, tolerance=0.05)
    assert fine is not None and not fine.worse and not fine.rollback
    assert judge_promotion(served, "2024-03", 9.0, 5.5) is None  # only the month after it
    first = fold(log.events[:1]).serving
    assert first is not None and judge_promotion(first, "2024-01", 9.0, 5.5) is None  # it replaced nothing


def test_a_persons_promotion_is_judged_but_never_rolled_back():
    log = two_months()
    log.add(PIN, "2024-01", V3, by="ana")
    served = fold(log.events).serving
    assert served is not None and served.how == PIN
    verdict = judge_promotion(served, "2024-02", serving_rmse=9.0, shadow_rmse=5.0)
    assert verdict is not None and verdict.worse and not verdict.rollback
    assert "kept: a person's pin holds" in verdict.reason


def test_an_automatic_rollback_applies_only_while_its_promotion_serves_and_nothing_is_pinned():
    log = two_months()
    log.add(AUTO_ROLLBACK, "2024-01", V1, judged=2, reason="worse on 2024-02")
    state = fold(log.events)
    assert state.serving is not None and state.serving.model == V1 and state.serving.how == AUTO_ROLLBACK
    assert state.pinned is None  # the next automatic decision may promote again
    stale = log.add(AUTO_ROLLBACK, "2024-01", V1, judged=2)
    assert fold(log.events).outcome(stale).startswith("not applied: the promotion it judged no longer serves")

    pinned = two_months()
    pinned.add(PIN, "2024-01", V3, by="ana")
    pinned.add(AUTO_ROLLBACK, "2024-01", V2, judged=3)
    assert fold(pinned.events).serving.model == V3  # type: ignore[union-attr]
    judged = pinned.add(JUDGED, "2024-01", reason="kept: a person's pin holds")
    assert fold(pinned.events).outcome(judged).startswith("kept serving")


def test_what_served_when_a_month_arrived_ignores_later_decisions():
    log = two_months()
    log.automatic("2024-02", V3)
    assert state_for_month(log.events, "2024-02").serving.model == V2  # type: ignore[union-attr]
    assert state_for_month(log.events, "2024-01").serving.model == V1  # type: ignore[union-attr]
    assert state_for_month(log.events, "2023-12").serving is None


def test_a_decision_and_an_operators_rollback_recorded_at_once_apply_in_storage_order():
    # A rollback recorded just before the next month's decision: the decision then serves
    # (the rollback held as a pin, so it is held); recorded just after: the rollback serves.
    before = two_months()
    before.add(ROLLBACK, "2024-01", V1, by="ana")
    before.automatic("2024-02", V3)
    after = two_months()
    after.automatic("2024-02", V3)
    after.add(ROLLBACK, "2024-02", V2, by="ana")
    assert fold(before.events).serving.model == V1  # type: ignore[union-attr]
    assert fold(after.events).serving.model == V2  # type: ignore[union-attr]
    assert fold(reversed(after.events)).serving == fold(after.events).serving  # order is the storage id


def test_the_approval_message_names_the_month_both_figures_and_the_command():
    event = Event(7, AUTOMATIC, "2024-02", "run", V3, promoted=True, approval=True, challenger_rmse=5.1234,
                  champion_rmse=5.4321)  # fmt: skip
    subject, body = approval_request(event, "http://ui/runs/run")
    assert "2024-02" in subject and "5.123" in subject and "5.432" in subject
    assert "taxi-assets approve 2024-02" in body and "http://ui/runs/run" in body


def test_next_month_rolls_the_year():
    assert next_month("2023-12") == "2024-01" and next_month("2024-01") == "2024-02"


def test_pinning_the_model_that_serves_makes_its_promotion_a_persons():
    log = two_months()
    log.add(PIN, "2024-01", V2, by="ana")
    served = fold(log.events).serving
    assert served is not None and served.how == PIN and served.since.storage_id == 2  # still its promotion
    verdict = judge_promotion(served, "2024-02", serving_rmse=9.0, shadow_rmse=5.0)
    assert verdict is not None and verdict.worse and not verdict.rollback
