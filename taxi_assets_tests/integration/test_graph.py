"""The data-preparation graph materialized in-process on temporary instances from the real files."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from taxi_assets.definitions import build_defs
from taxi_assets.lib.io_managers import LocalValueIOManager
from taxi_assets.lib.model_store import read_value
from taxi_assets.lib.sources import LocalTripSource
from taxi_assets.ml import course_reference
from taxi_assets.ml.cleaning import clean
from taxi_assets.ml.schema import PICKUP, validate_trips
from taxi_assets_tests.helpers import COURSE_SHAPES, DATA_DIR, failure_messages, run_months


def load(instance, asset, month):
    return read_value(instance, asset, month)


def test_training_set_reproduces_course_figures(prepared_instance):
    dataset = load(prepared_instance, "training_set", "2024-02")
    assert dataset.shapes() == COURSE_SHAPES
    assert (len(dataset.y), len(dataset.y_train), len(dataset.y_val)) == tuple(
        COURSE_SHAPES[name][0] for name in ("X", "X_train", "X_val")
    )
    # dv transforms the course's inference records.
    row = dataset.dv.transform([{"PU_DO": "236_239", "trip_distance": 1.98}])
    assert row.nnz == 2 and row[0, dataset.dv.vocabulary_["trip_distance"]] == 1.98


def test_matrices_identical_to_course_implementation(prepared_instance):
    raw = [pd.read_parquet(DATA_DIR / "2024" / f"{month:02d}.parquet") for month in (1, 2)]
    reference = course_reference.prepare_and_build(raw, "2024-02-01")
    dataset = load(prepared_instance, "training_set", "2024-02")
    for ours, theirs in zip((dataset.X, dataset.X_train, dataset.X_val), reference[:3]):
        assert ours.shape == theirs.shape
        np.testing.assert_array_equal(ours.indptr, theirs.indptr)
        np.testing.assert_array_equal(ours.indices, theirs.indices)
        np.testing.assert_array_equal(ours.data, theirs.data)
    for ours, theirs in zip((dataset.y, dataset.y_train, dataset.y_val), reference[3:6]):
        np.testing.assert_array_equal(ours.to_numpy(), theirs.to_numpy())
    assert dataset.dv.feature_names_ == reference[6].feature_names_


def test_checks_ran_and_passed_per_partition(prepared_instance):
    result = prepared_instance.test_results["2024-02"]
    evaluations = {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {
        ("cleaned_trips", "durations_within_bounds"),
        ("cleaned_trips", "features_not_null"),
        ("cleaned_trips", "dropped_share_stable"),
        ("cleaned_trips", "duration_drift"),
        ("cleaned_trips", "trip_distance_drift"),
        ("training_set", "matrices_consistent"),
        ("training_set", "rows_match_cleaned_months"),
    }
    assert all(e.passed for e in evaluations.values())
    assert evaluations[("training_set", "rows_match_cleaned_months")].metadata["X_rows"].value == COURSE_SHAPES["X"][0]
    # Recorded per partition in the instance.
    january = prepared_instance.test_results["2024-01"]
    assert {e.check_name for e in january.get_asset_check_evaluations()} == {
        "durations_within_bounds",
        "features_not_null",
        "dropped_share_stable",
        "duration_drift",
        "trip_distance_drift",
    }


def test_materialization_metadata(prepared_instance):
    def metadata(asset, month):
        event = prepared_instance.get_latest_materialization_event(dg.AssetKey(asset))
        records = prepared_instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[month]), limit=1
        ).records
        return records[0].asset_materialization.metadata if records else event.asset_materialization.metadata

    raw = metadata("raw_trips", "2024-02")
    assert raw["dagster/row_count"].value == 53_577
    assert raw["columns"].value == 20
    assert raw["pickup_min"].value.startswith("20") and raw["pickup_max"].value >= "2024-02-29"
    assert "null_counts" in raw and raw["source"].value.endswith("2024/02.parquet")
    cleaned = metadata("cleaned_trips", "2024-02")
    assert cleaned["dagster/row_count"].value + cleaned["rows_dropped"].value == 53_577
    assert 1 <= cleaned["duration_mean_minutes"].value <= 60
    built = metadata("training_set", "2024-02")
    assert (built["X_train_rows"].value, built["X_val_rows"].value, built["features"].value) == (54_378, 51_492, 5_094)


def test_other_partitions_build_with_the_same_construction(instance):
    # 2023-06 from 2023-05 + 2023-06: same split rule, no course figures.
    results = run_months(instance, ["2023-05"], ["raw_trips", "cleaned_trips"]) + run_months(instance, ["2023-06"])
    assert all(result.success for result in results), failure_messages(results[-1])
    dataset = load(instance, "training_set", "2023-06")
    assert dataset.X_train.shape[1] == dataset.X_val.shape[1] > 1_000
    cleaned = [load(instance, "cleaned_trips", month) for month in ("2023-05", "2023-06")]
    both = pd.concat(cleaned)
    assert dataset.X.shape[0] == len(both)
    assert dataset.X_train.shape[0] == int((both[PICKUP] < "2023-06-01").sum())
    evaluation = next(
        e for e in results[-1].get_asset_check_evaluations() if e.check_name == "rows_match_cleaned_months"
    )
    assert evaluation.passed and evaluation.metadata["X_rows"].value == len(both)


def test_first_partition_fails_with_a_clear_message(instance):
    [result] = run_months(instance, ["2023-01"])
    assert not result.success
    message = failure_messages(result)
    assert "training_set partition 2023-01: it is the first partition" in message
    assert "no previous month (2022-12)" in message
    # The month's own assets did materialize.
    assert instance.get_materialized_partitions(dg.AssetKey("cleaned_trips")) == {"2023-01"}


def test_missing_previous_month_is_named(instance):
    [result] = run_months(instance, ["2024-02"])
    assert not result.success
    assert "not materialized: 2024-01" in failure_messages(result)
    assert "taxi-assets materialize --partition 2024-01" in failure_messages(result)


def test_failing_blocking_check_stops_downstream_partition_only(instance, data_copy):
    # 2024-02 with a missing trip_distance: cleaned_trips materializes, features_not_null fails,
    # and training_set for 2024-02 must not run. 2024-01 is untouched.
    february = pd.read_parquet(data_copy / "2024" / "02.parquet")
    february.loc[:9, "trip_distance"] = np.nan
    february.to_parquet(data_copy / "2024" / "02.parquet")
    source = LocalTripSource(directory=str(data_copy))
    run_months(instance, ["2024-01"], ["raw_trips", "cleaned_trips"], trip_source=source)
    [result] = run_months(instance, ["2024-02"], trip_source=source)
    assert not result.success
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    expected_nulls = int(
        clean(validate_trips(february, "02.parquet"))["trip_distance"].isna().sum()
    )  # some of the 10 are dropped
    assert expected_nulls > 0
    assert [(e.check_name, e.metadata["null_counts"].value["trip_distance"]) for e in failed] == [
        ("features_not_null", expected_nulls)
    ]
    assert "2024-02" not in instance.get_materialized_partitions(dg.AssetKey("training_set"))
    assert instance.get_materialized_partitions(dg.AssetKey("cleaned_trips")) == {"2024-01", "2024-02"}


@pytest.mark.parametrize("fails", ["half-way through writing", "at the rename"])
def test_io_manager_never_leaves_a_partial_value(tmp_path, monkeypatch, fails):
    """The disk fills up (ENOSPC) half-way through writing the new value, or the rename fails:
    the old value still loads and no temporary file is left. A plain write to the value's own
    path would leave it truncated."""
    import errno
    import io
    import os

    from taxi_assets.lib import io_managers

    manager = LocalValueIOManager(base_dir=str(tmp_path)).create_io_manager(dg.build_init_resource_context())
    context = dg.build_output_context(asset_key=dg.AssetKey("training_set"), partition_key="2024-02")
    manager.handle_output(context, {"good": 1})
    written: list[int] = []

    class DiskFillsUp(io.FileIO):
        def write(self, data):  # writes half of the value, then the disk is full
            written.append(super().write(bytes(data)[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")

    if fails == "half-way through writing":
        monkeypatch.setattr(io_managers.os, "fdopen", lambda handle, mode: DiskFillsUp(handle, "wb"))
    else:
        monkeypatch.setattr(io_managers.os, "replace", lambda *args: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    with pytest.raises(OSError):
        manager.handle_output(context, {"new": list(range(1000))})
    if fails == "half-way through writing":
        assert written and written[0] > 0  # the failure came during the write, on disk
    monkeypatch.undo()
    input_context = dg.build_input_context(asset_key=dg.AssetKey("training_set"), partition_key="2024-02")
    assert manager.load_input(input_context) == {"good": 1}
    assert sorted(os.listdir(tmp_path / "training_set")) == ["2024-02"]  # no temporary file left


def test_defs_load_and_jobs():
    defs = build_defs()
    dg.Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert {"raw_trips", "cleaned_trips", "training_set"} <= keys
    assert defs.resolve_job_def("data_preparation").partitions_def is not None
    assert build_defs(trip_source=LocalTripSource(directory="/nowhere")) is not None


def test_row_check_fails_when_the_training_set_no_longer_matches_its_inputs(instance, data_copy):
    """rows_match_cleaned_months checks every month, not only the course's: here 2024-01 is
    re-cleaned from a shorter file after 2024-02's training set was built from the longer one."""
    source = LocalTripSource(directory=str(data_copy))
    assert all(
        r.success
        for r in run_months(instance, ["2024-01"], ["raw_trips", "cleaned_trips"], trip_source=source)
        + run_months(instance, ["2024-02"], trip_source=source)
    )
    january = data_copy / "2024" / "01.parquet"
    pd.read_parquet(january).iloc[:1000].to_parquet(january)
    assert run_months(instance, ["2024-01"], ["raw_trips", "cleaned_trips"], trip_source=source)[0].success
    from taxi_assets.defs.data.checks import rows_match_cleaned_months

    # The check, run on the training set as stored (built from the longer January).
    context = dg.build_op_context(instance=instance, partition_key="2024-02")
    evaluation = rows_match_cleaned_months(context, read_value(instance, "training_set", "2024-02"))
    assert not evaluation.passed
    assert "X has 105,870 rows; cleaned_trips has" in evaluation.description
