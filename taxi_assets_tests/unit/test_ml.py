"""Unit tests of the plain ML functions on small frames."""

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction import DictVectorizer

from taxi_assets.lib.months import month_start, previous_month
from taxi_assets.ml import course_reference, vectorizing
from taxi_assets.ml.cleaning import clean, trip_duration_minutes
from taxi_assets.ml.dataset import build_training_set
from taxi_assets.ml.features import combine_features
from taxi_assets.ml.schema import TripDataError, in_schema, validate_trips
from taxi_assets.ml.splitting import split_on_value
from taxi_assets.ml.trip_files import format_template, parse_month


def trips(rows):
    """rows: (pickup, minutes, PU, DO, distance)."""
    pickups = pd.to_datetime([row[0] for row in rows])
    return pd.DataFrame(
        {
            "lpep_pickup_datetime": pickups,
            "lpep_dropoff_datetime": pickups + pd.to_timedelta([row[1] for row in rows], unit="min"),
            "PULocationID": np.array([row[2] for row in rows], dtype="int32"),
            "DOLocationID": np.array([row[3] for row in rows], dtype="int32"),
            "trip_distance": [row[4] for row in rows],
        }
    )


# As in a green file (the course's code reads these), and as validation hands them on.
SMALL_FILE = trips(
    [
        ("2024-01-31 23:50", 12.5, 236, 239, 1.98),
        ("2024-01-15 08:00", 0.5, 65, 170, 6.54),  # too short: dropped
        ("2024-02-01 00:00", 20.0, 65, 170, 6.54),  # exactly the split instant: validation
        ("2024-02-03 10:00", 61.0, 1, 2, 3.0),  # too long: dropped
        ("2024-02-03 11:00", 60.0, 7, 7, 0.0),  # bounds are inclusive
        ("2024-01-03 11:00", 1.0, 7, 8, 2.5),
    ]
)
SMALL = validate_trips(SMALL_FILE, "small.parquet")


def test_duration_is_minutes_and_matches_course_apply():
    duration = trip_duration_minutes(SMALL)
    expected = (SMALL_FILE.lpep_dropoff_datetime - SMALL_FILE.lpep_pickup_datetime).apply(
        lambda td: td.total_seconds() / 60
    )
    assert duration.tolist() == expected.tolist() == [12.5, 0.5, 20.0, 61.0, 60.0, 1.0]


def test_clean_keeps_1_to_60_minutes_and_stringifies_ids():
    cleaned = clean(SMALL)
    assert cleaned["duration"].tolist() == [12.5, 20.0, 60.0, 1.0]
    assert cleaned["PULocationID"].tolist() == ["236", "65", "7", "7"]
    assert SMALL["PULocationID"].dtype == "int32", "input must not be modified"
    assert len(clean(SMALL, include_extreme_durations=True)) == len(SMALL)


def test_combine_features_builds_pu_do():
    assert combine_features(clean(SMALL))["PU_DO"].tolist() == ["236_239", "65_170", "7_7", "7_8"]


def test_split_on_value_boundary_goes_to_validation_and_nat_to_neither():
    frame = pd.DataFrame(
        {"t": pd.to_datetime(["2024-01-31 23:59", "2024-02-01 00:00", None, "2024-02-02 00:00"]), "v": [1, 2, 3, 4]}
    )
    train, validation = split_on_value(frame, "t", pd.Timestamp("2024-02-01"))
    assert train["v"].tolist() == [1] and validation["v"].tolist() == [2, 4]
    assert "t" not in train.columns


@pytest.mark.parametrize("with_unknown", [False, True])
def test_vectorizer_equals_dictvectorizer(with_unknown):
    train = pd.DataFrame({"PU_DO": ["b_1", "a_2", "b_1", "c_3"], "trip_distance": [1.5, 0.0, np.nan, 2.0]})
    validation = pd.DataFrame({"PU_DO": ["a_2", "zz_9" if with_unknown else "c_3"], "trip_distance": [3.0, 4.0]})
    reference = DictVectorizer()
    expected_train = reference.fit_transform(train.to_dict("records"))
    expected_val = reference.transform(validation.to_dict("records"))

    X_train, dv = vectorizing.fit_transform(train)
    X_val = vectorizing.transform(validation, dv)
    assert dv.feature_names_ == reference.feature_names_ == ["PU_DO=a_2", "PU_DO=b_1", "PU_DO=c_3", "trip_distance"]
    for ours, theirs in ((X_train, expected_train), (X_val, expected_val)):
        assert ours.shape == theirs.shape
        np.testing.assert_array_equal(ours.indptr, theirs.indptr)
        np.testing.assert_array_equal(ours.indices, theirs.indices)
        np.testing.assert_array_equal(ours.data, theirs.data)  # NaN == NaN here
    # The fitted vectorizer is a working DictVectorizer for inference records.
    row = dv.transform([{"PU_DO": "b_1", "trip_distance": 7.0}]).toarray()
    assert row.tolist() == [[0.0, 1.0, 0.0, 7.0]]


def test_build_training_set_matches_course_reference_on_small_frames():
    january, february = SMALL.iloc[:2], SMALL.iloc[2:]
    ours = build_training_set([combine_features(clean(january)), combine_features(clean(february))], "2024-02-01")
    theirs = course_reference.prepare_and_build([SMALL_FILE.iloc[:2], SMALL_FILE.iloc[2:]], "2024-02-01")
    for mine, reference in zip((ours.X, ours.X_train, ours.X_val), theirs[:3]):
        assert mine.shape == reference.shape and (mine != reference).nnz == 0
    for mine, reference in zip((ours.y, ours.y_train, ours.y_val), theirs[3:6]):
        assert mine.tolist() == reference.tolist()
    assert ours.dv.feature_names_ == theirs[6].feature_names_
    assert ours.shapes() == {"X": (4, 5), "X_train": (2, 3), "X_val": (2, 3)}


def test_validate_trips_names_the_problem():
    raw = SMALL_FILE
    with pytest.raises(TripDataError, match=r"f\.parquet: missing required column\(s\) trip_distance"):
        validate_trips(raw.drop(columns=["trip_distance"]), "f.parquet")
    with pytest.raises(TripDataError, match="column lpep_pickup_datetime has dtype object, expected a datetime"):
        validate_trips(raw.assign(lpep_pickup_datetime=raw.lpep_pickup_datetime.astype(str)), "f.parquet")
    with pytest.raises(TripDataError, match="column trip_distance has dtype object, expected numbers"):
        validate_trips(raw.assign(trip_distance="far"), "f.parquet")
    with pytest.raises(TripDataError, match="column PULocationID .* expected integer location ids"):
        validate_trips(raw.assign(PULocationID=1.5), "f.parquet")
    with pytest.raises(TripDataError, match="no rows"):
        validate_trips(raw.iloc[:0], "f.parquet")
    # Whole floats (older files) are accepted and made integers.
    assert validate_trips(raw.assign(PULocationID=7.0), "f")["PULocationID"].dtype == "int64"


def test_one_schema_for_green_and_yellow_files():
    yellow_file = SMALL_FILE.rename(columns=lambda name: name.replace("lpep_", "tpep_")).assign(Airport_fee=0.0)
    yellow = validate_trips(yellow_file, "yellow_tripdata_2024-02.parquet", "yellow")
    pd.testing.assert_frame_equal(yellow.drop(columns=["Airport_fee"]), SMALL)
    assert {"pickup_datetime", "dropoff_datetime"} <= set(SMALL.columns)
    assert not any(name.startswith(("lpep_", "tpep_")) for name in SMALL.columns)
    # A file of the other type says what it is and which setting to change.
    with pytest.raises(TripDataError, match=r"g\.parquet: missing .*tpep_pickup_datetime.* this is a green file.*"
                       r"TAXI_TRIP_TYPE=green"):  # fmt: skip
        validate_trips(SMALL_FILE, "g.parquet", "yellow")
    with pytest.raises(TripDataError, match=r"y\.parquet: .* this is a yellow file.*TAXI_TRIP_TYPE=yellow"):
        validate_trips(yellow_file, "y.parquet")
    # Frames stored by earlier versions (the file's names) read in today's.
    pd.testing.assert_frame_equal(in_schema(SMALL_FILE), SMALL)
    with pytest.raises(ValueError, match="trip type must be one of green, yellow, got 'blue'"):
        validate_trips(SMALL_FILE, "g.parquet", "blue")


def test_month_helpers():
    assert parse_month("2024-02") == (2024, 2)
    assert previous_month("2024-01") == "2023-12" and previous_month("2024-03") == "2024-02"
    assert month_start("2024-02") == pd.Timestamp("2024-02-01")
    assert format_template("green_tripdata_{year}-{month:02d}.parquet", "2024-02") == "green_tripdata_2024-02.parquet"
    for bad in ("2024-13", "24-02", "2024/02", "x"):
        with pytest.raises(ValueError, match="YYYY-MM"):
            parse_month(bad)


def test_template_pattern_matches_what_the_template_formats():
    from taxi_assets.ml.trip_files import template_pattern

    for template in ("{year}/{month:02d}.parquet", "green_tripdata_{year}-{month:02d}.parquet", "x/{year}.{month}.pq"):
        match = template_pattern(template).fullmatch(format_template(template, "2024-02"))
        assert match and (match["year"], int(match["month"])) == ("2024", 2)
    assert template_pattern("{year}/{month:02d}.parquet").fullmatch("2024/02.parquet.bak") is None
