"""The one trip schema, on its own (the same cases run through every surface in the
integration tests, test_trip_surfaces.py)."""

import pandas as pd
import pytest

from taxi_assets.ml.trip_record import TripError, TripRecord, records_from_columns, validate_records
from taxi_assets_tests.trip_cases import CASES


@pytest.mark.parametrize("case", list(CASES))
def test_trip_record_rules(case):
    trip, expected, error = CASES[case]
    if expected is not None:
        [record] = validate_records([trip])
        assert record.model_dump() == expected
        assert record.pu_do == f"{expected['PULocationID']}_{expected['DOLocationID']}"
    else:
        with pytest.raises(TripError) as raised:
            validate_records([trip])
        assert error in str(raised.value)
        assert str(raised.value).startswith("record[0].")  # the message names the record


def test_dataframe_rows_and_numpy_scalars_validate_like_records():
    frame = pd.DataFrame(
        [
            {"PULocationID": 236, "DOLocationID": 239, "trip_distance": 1.98},
            {"PULocationID": 65, "DOLocationID": 170, "trip_distance": 6.54},
        ]
    )
    assert [r.pu_do for r in validate_records(frame.to_dict("records"))] == ["236_239", "65_170"]
    row = frame.iloc[0]  # NumPy scalars
    assert TripRecord.model_validate({key: row[key] for key in frame.columns}).PULocationID == 236
    assert records_from_columns({"a": [1, 2], "b": [3, 4]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    with pytest.raises(TripError, match="different lengths"):
        records_from_columns({"a": [1], "b": [3, 4]})


def test_errors_never_echo_huge_inputs():
    with pytest.raises(TripError) as raised:
        validate_records([{"PULocationID": "x" * 100_000, "DOLocationID": 1, "trip_distance": 1}])
    assert len(str(raised.value)) < 300


def test_many_bad_records_are_summarised():
    with pytest.raises(TripError, match=r"\(and 7 more\)"):
        validate_records([{"PULocationID": 0, "DOLocationID": 1, "trip_distance": 1}] * 10)
