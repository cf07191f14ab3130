"""What serves, as plain data (taxi_assets.ml.serving), and the local store's atomic writes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from taxi_assets.lib.serving_pointer import POINTER, LocalServingStore, read_published
from taxi_assets.ml.serving import PointerError, ServedDecision, pointer_document, publication, read_pointer

JANUARY = ServedDecision("2024-01", 10, "run-a", "xgboost", "2024-01", "taxi-duration-xgboost", "1", "no champion yet")
FEBRUARY = ServedDecision("2024-02", 25, "run-b", "xgboost", "2024-02", "taxi-duration-xgboost", "2", "promoted")


def test_nothing_to_publish_before_the_first_decision():
    plan = publication(None, None, None)
    assert not plan.needed and "no decision" in plan.reason


def test_a_recorded_decision_without_a_pointer_is_published_with_its_alias():
    plan = publication(FEBRUARY, None, None)
    assert plan.write_pointer and plan.move_alias
    assert "no pointer" in plan.reason and "taxi-duration-xgboost v2" in plan.reason


def test_a_pointer_behind_the_record_is_rewritten_and_an_alias_behind_it_moved():
    plan = publication(FEBRUARY, JANUARY, ("taxi-duration-xgboost", "1"))
    assert (plan.write_pointer, plan.move_alias) == (True, True)
    assert "2024-01-10" in plan.reason and "2024-02-25" in plan.reason


def test_only_the_alias_behind():
    plan = publication(FEBRUARY, FEBRUARY, ("taxi-duration-xgboost", "1"))
    assert (plan.write_pointer, plan.move_alias) == (False, True)


def test_a_published_decision_needs_nothing_even_without_asking_mlflow():
    assert not publication(FEBRUARY, FEBRUARY, ("taxi-duration-xgboost", "2")).needed
    assert not publication(FEBRUARY, FEBRUARY, None, alias_known=False).needed


def test_the_same_month_decided_again_is_a_new_decision():
    again = dataclasses.replace(FEBRUARY, storage_id=31)
    assert publication(again, FEBRUARY, ("taxi-duration-xgboost", "2")).write_pointer


def test_an_unregistered_model_never_moves_the_alias():
    plain = dataclasses.replace(FEBRUARY, registered_model=None, version=None)
    assert not publication(plain, None, ("taxi-duration-xgboost", "1")).move_alias


def test_the_pointer_reads_back_what_was_written():
    document = json.loads(json.dumps(pointer_document(FEBRUARY, "models/2024-02-25", "2026-12-06T00:00:00+00:00")))
    assert read_pointer(document, "here") == (FEBRUARY, "models/2024-02-25")


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ([], "not a serving pointer"),
        ({"format": "something"}, "not a serving pointer"),
        ({"format": "taxi-assets-serving-pointer", "version": 9}, "pointer version 9"),
        ({"format": "taxi-assets-serving-pointer", "version": 1, "decision": {}, "model_key": ""}, "model_key"),
        ({"format": "taxi-assets-serving-pointer", "version": 1, "decision": [], "model_key": "k"}, "decision"),
        ({"format": "taxi-assets-serving-pointer", "version": 1, "decision": {"month": "2024-02"}, "model_key": "k"}, "storage_id"),
    ],
)  # fmt: skip
def test_a_bad_pointer_is_refused_naming_the_field(document, named):
    with pytest.raises(PointerError, match=named) as refused:
        read_pointer(document, "s3://bucket/serving/current.json")
    assert "s3://bucket/serving/current.json" in str(refused.value)


def test_the_local_store_replaces_whole_files_and_reads_nothing_before_the_first(tmp_path):
    store = LocalServingStore(tmp_path / "serving")
    assert read_published(store) is None
    store.write(POINTER, json.dumps(pointer_document(JANUARY, "models/a", "t")).encode())
    store.write(POINTER, json.dumps(pointer_document(FEBRUARY, "models/b", "t")).encode())
    assert read_published(store) == (FEBRUARY, "models/b")
    assert sorted(path.name for path in (tmp_path / "serving").iterdir()) == [POINTER]  # no temporary left


def test_a_pointer_that_is_not_json_names_the_file(tmp_path):
    store = LocalServingStore(tmp_path)
    store.write(POINTER, b"{half")
    with pytest.raises(PointerError, match="current.json: not JSON"):
        read_published(store)
