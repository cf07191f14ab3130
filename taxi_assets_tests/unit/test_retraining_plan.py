"""Which months the sensor retrains: the pure decision, over plain data (no instance)."""

from __future__ import annotations

from taxi_assets.ml.retraining import CHAIN, PREPARATION, MonthState, plan, previous

CODE = {asset: "1" for asset in CHAIN}
FIRST = "2023-01"


def trained(version: str, decision: str = "d") -> MonthState:
    """A month trained from the file it has now: nothing unsynced."""
    return MonthState(file=version, observed=version, unsynced=(), decision=decision)


DECEMBER = {"2023-12": MonthState(file="z", observed="z", unsynced=(), decision="d")}  # trained, unchanged


def kinds(result) -> list[tuple[str, str]]:
    return [(request.month, request.kind) for request in result.requests]


def test_previous_month():
    assert previous("2024-01") == "2023-12" and previous("2024-03") == "2024-02"


def test_a_month_whose_file_and_code_are_unchanged_is_not_retrained():
    states = {"2024-01": trained("a"), "2024-02": trained("b")}
    assert plan(states, FIRST, CODE, ignored={}).requests == []


def test_a_new_month_is_retrained_and_a_prepared_month_without_a_model_too():
    # README command 1 prepared 2024-02 (and 2024-01's trips) but trained nothing.
    prepared = MonthState(file="b", observed="b", unsynced=CHAIN[2:])
    january = MonthState(file="a", observed="a", unsynced=CHAIN[2:])
    result = plan(DECEMBER | {"2024-01": january, "2024-02": prepared}, FIRST, CODE, ignored={})
    assert kinds(result) == [("2024-01", "retrain")]  # January first; February waits for it
    assert result.skipped == ["2024-02: waiting for 2024-01, which is being retrained or prepared"]
    # On a first start, the older untrained month is left alone and the newest is trained.
    first = plan({"2024-01": january, "2024-02": prepared}, FIRST, CODE, ignored=None)
    assert kinds(first) == [("2024-02", "retrain")] and first.ignored == {"2024-01": "a"}
    assert first.requests[0].assets == CHAIN and "training_set unsynced" in first.requests[0].reason


def test_a_changed_file_retrains_its_month_and_the_next_one_waits():
    states = DECEMBER | {
        "2024-01": MonthState(file="a2", observed="a", unsynced=(), decision="d"),
        "2024-02": trained("b"),
    }
    result = plan(states, FIRST, CODE, ignored={})
    assert kinds(result) == [("2024-01", "retrain")]
    assert "new file version" in result.requests[0].reason
    # Once January is retrained, Dagster marks February's training set and decision unsynced.
    after = DECEMBER | {
        "2024-01": trained("a2", "d2"),
        "2024-02": MonthState(file="b", observed="b", unsynced=CHAIN[2:]),
    }
    assert kinds(plan(after, FIRST, CODE, ignored={})) == [("2024-02", "retrain")]


def test_a_touched_file_keeps_its_version_and_starts_nothing():
    # Same bytes, new modification time: the content hash is the same, so nothing changed.
    assert plan({"2024-01": trained("a"), "2024-02": trained("b")}, FIRST, CODE, ignored={}).requests == []


def test_only_the_decision_unsynced_is_decided_again_models_stand():
    states = {"2024-01": trained("a"), "2024-02": MonthState(file="b", observed="b", unsynced=("production_model",))}
    [request] = plan(states, FIRST, CODE, ignored={}).requests
    assert (request.kind, request.assets) == ("decide", ("production_model",))


def test_the_previous_month_is_prepared_first():
    states = DECEMBER | {"2024-01": MonthState(file="a", observed=None), "2024-02": MonthState(file="b", observed=None)}
    result = plan(states, FIRST, CODE, ignored={})
    assert kinds(result) == [("2024-01", "retrain")]  # January is wanted itself (never made)
    ignored_january = plan(states, FIRST, CODE, ignored={"2024-01": "a"})
    [request] = ignored_january.requests
    assert (request.month, request.kind, request.assets) == ("2024-01", "prepare", PREPARATION)
    assert ignored_january.skipped == ["2024-02: waiting for cleaned_trips 2024-01, being prepared"]


def test_the_first_month_and_a_month_without_a_previous_file_are_prepared_only():
    result = plan({FIRST: MonthState(file="a")}, FIRST, CODE, ignored={})
    assert [(r.month, r.kind) for r in result.requests] == [(FIRST, "prepare")]
    # Prepared, the first month asks for nothing more: its training set cannot exist.
    done = MonthState(file="a", observed="a", unsynced=())
    assert plan({FIRST: done}, FIRST, CODE, ignored={}).requests == []
    alone = plan({"2024-02": MonthState(file="b")}, FIRST, CODE, ignored={})
    assert kinds(alone) == [("2024-02", "prepare")]


def test_runs_in_flight_are_left_alone_and_their_followers_wait():
    states = {
        "2024-01": MonthState(file="a2", observed="a", unsynced=(), in_flight=True, decision="d"),
        "2024-02": MonthState(file="b", observed="b", unsynced=("production_model",)),
    }
    result = plan(states, FIRST, CODE, ignored={})
    assert result.requests == []
    assert result.skipped == [
        "2024-01: a run for it is in flight",
        "2024-02: waiting for 2024-01, which is being retrained or prepared",
    ]


def test_ignored_months_come_back_when_their_file_changes():
    states = DECEMBER | {"2024-01": MonthState(file="a2", observed="a"), "2024-02": trained("b")}
    result = plan(states, FIRST, CODE, ignored={"2024-01": "a"})
    assert kinds(result) == [("2024-01", "retrain")] and result.ignored == {}
    unchanged = plan(
        {"2024-01": MonthState(file="a", observed="a"), "2024-02": trained("b")}, FIRST, CODE, {"2024-01": "a"}
    )
    assert unchanged.requests == [] and unchanged.ignored == {"2024-01": "a"}


def test_run_keys_follow_the_inputs_not_the_attempt():
    states = {"2024-01": trained("a"), "2024-02": MonthState(file="b", observed="b", unsynced=CHAIN[2:])}
    key = plan(states, FIRST, CODE, ignored={}).requests[0].key
    assert plan(states, FIRST, CODE, ignored={}).requests[0].key == key  # a failed run is not asked for again
    new_code = plan(states, FIRST, CODE | {"xgboost_model": "2"}, ignored={}).requests[0].key
    new_file = (
        plan(states | {"2024-02": MonthState(file="b2", observed="b", unsynced=())}, FIRST, CODE, {}).requests[0].key
    )
    new_decision = plan(states | {"2024-01": trained("a", "d2")}, FIRST, CODE, ignored={}).requests[0].key
    assert len({key, new_code, new_file, new_decision}) == 4 and key.startswith("retrain:2024-02:")
