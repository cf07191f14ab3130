"""Asset values as archives of plain files: every kind round-trips, and nothing that could run
code is loaded (old pickles, untrusted skops types)."""

import io
import pickle
import zipfile

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.linear_model import Lasso

from taxi_assets.ml.champion import ProductionModel
from taxi_assets.ml.cleaning import clean
from taxi_assets.ml.dataset import build_training_set
from taxi_assets.ml.features import combine_features
from taxi_assets.ml.model_files import ModelFormatError, predictor_files
from taxi_assets.ml.predictor import TrainedModel, TripDurationPredictor, compile_lookup
from taxi_assets.ml.schema import validate_trips
from taxi_assets.ml.training import ModelSpec
from taxi_assets.ml.value_files import ValueFormatError, dump_value, load_value
from taxi_assets_tests.unit.test_ml import SMALL_FILE

TRIPS = [
    {"PULocationID": 236, "DOLocationID": 239, "trip_distance": 1.98},
    {"PULocationID": "65", "DOLocationID": "170", "trip_distance": 6.54},
    {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 30.0},
]


@pytest.fixture(scope="module")
def training_set():
    rng = np.random.default_rng(0)
    rows = 400
    pickups = pd.Timestamp("2024-01-20") + pd.to_timedelta(rng.uniform(0, 20, rows), unit="D")
    frame = pd.DataFrame(
        {
            "lpep_pickup_datetime": pickups,
            "lpep_dropoff_datetime": pickups + pd.to_timedelta(rng.uniform(2, 50, rows), unit="min"),
            "PULocationID": rng.choice([236, 65, 74, 1], rows),
            "DOLocationID": rng.choice([239, 170, 75, 2], rows),
            "trip_distance": rng.uniform(0, 20, rows).round(2),
        }
    )
    cleaned = combine_features(clean(validate_trips(frame, "synthetic")))
    return build_training_set([cleaned[cleaned.pickup_datetime < "2024-02-01"], cleaned[cleaned.pickup_datetime >= "2024-02-01"]], "2024-02-01")  # fmt: skip


def trained(name, predictor, training_set):
    predictions = predictor.predict_matrix(training_set.X_val).astype(np.float32)
    return TrainedModel(
        name=name, predictor=predictor, rmse=4.2, mse=17.64, best_params={"max_depth": 6, "learning_rate": np.float64(0.3)},
        n_trials=2, train_seconds=1.5, mlflow_run_id="abc", registered_model=f"taxi-duration-{name}",
        model_version="3", trials=[{"params": {"alpha": np.float64(0.1)}, "metrics": {"rmse": 4.2}, "seconds": 0.1}],
        charts={"residuals": b"\x89PNG fake"}, validation_predictions=predictions, search_seconds=1.0,
        budget_seconds=80.0, stopped_by="time",
    )  # fmt: skip


@pytest.fixture(scope="module")
def models(training_set):
    booster = xgb.train(
        {"max_depth": 4, "nthread": 1}, xgb.DMatrix(training_set.X_train, label=training_set.y_train), 8
    )
    xgboost = TripDurationPredictor("xgboost", "xgboost", booster, training_set.dv, "2024-02", best_iteration=5)
    lasso = Lasso(alpha=0.01).fit(training_set.X_train, training_set.y_train)
    sklearn = TripDurationPredictor("Lasso", "sklearn", lasso, training_set.dv, "2024-02")
    return {"xgboost": trained("xgboost", xgboost, training_set), "Lasso": trained("Lasso", sklearn, training_set)}


def roundtrip(value):
    data = dump_value(value)
    assert data.startswith(b"PK") and b"pickle" not in zipfile.ZipFile(io.BytesIO(data)).namelist()
    return load_value(data, "test value")


def doctored(data: bytes, replacements: dict[str, bytes]) -> bytes:
    """The archive ``data`` with some of its files replaced."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    files = {name: archive.read(name) for name in archive.namelist()} | replacements
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as rewritten:
        for name, content in files.items():
            rewritten.writestr(name, content)
    return out.getvalue()


def same_predictions(a, b, training_set):
    np.testing.assert_array_equal(a.predict(TRIPS), b.predict(TRIPS))
    np.testing.assert_array_equal(a.predict_matrix(training_set.X_val), b.predict_matrix(training_set.X_val))


def test_frames_and_training_sets_round_trip(training_set):
    frame = validate_trips(SMALL_FILE, "small")
    pd.testing.assert_frame_equal(roundtrip(frame), frame)
    cleaned = clean(frame)  # a filtered index survives
    pd.testing.assert_frame_equal(roundtrip(cleaned), cleaned)
    loaded = roundtrip(training_set)
    for name in ("X", "X_train", "X_val"):
        ours, theirs = getattr(loaded, name), getattr(training_set, name)
        assert ours.shape == theirs.shape and (ours != theirs).nnz == 0 and ours.dtype == theirs.dtype
    for name in ("y", "y_train", "y_val"):
        pd.testing.assert_series_equal(getattr(loaded, name), getattr(training_set, name))
    assert loaded.dv.feature_names_ == training_set.dv.feature_names_
    assert loaded.dv.transform([{"PU_DO": "236_239", "trip_distance": 1.0}]).nnz == 2


def test_models_round_trip_in_their_own_formats(models, training_set):
    for model in models.values():
        loaded = roundtrip(model)
        same_predictions(loaded.predictor, model.predictor, training_set)
        np.testing.assert_array_equal(loaded.validation_predictions, model.validation_predictions)
        assert (loaded.rmse, loaded.best_params, loaded.trials[0]["params"], loaded.charts) == (
            4.2, {"max_depth": 6, "learning_rate": 0.3}, {"alpha": 0.1}, {"residuals": b"\x89PNG fake"}
        )  # fmt: skip
        assert loaded.predictor.best_iteration == model.predictor.best_iteration
    files = predictor_files(models["xgboost"].predictor)
    assert set(files) == {"manifest.json", "vocabulary.json", "booster.ubj"}
    assert set(predictor_files(models["Lasso"].predictor)) == {"manifest.json", "vocabulary.json", "model.skops"}
    both = roundtrip(models)
    assert list(both) == list(models)
    same_predictions(both["Lasso"].predictor, models["Lasso"].predictor, training_set)


def test_production_model_with_its_lookup_table_round_trips(models, training_set):
    predictor = models["xgboost"].predictor
    check = pd.DataFrame({"PU_DO": ["236_239", "65_170", "1_2"], "trip_distance": [1.0, 5.5, 19.0]})
    lookup, message = compile_lookup(predictor, check)
    assert lookup is not None, message
    compiled = TripDurationPredictor(**{**predictor.__dict__, "lookup": lookup})
    production = ProductionModel(compiled, "xgboost", "2024-02", "3", "taxi-duration-xgboost", 4.2, "2024-02", "best")
    loaded = roundtrip(production)
    assert loaded.predictor.lookup is not None
    np.testing.assert_array_equal(loaded.predictor.lookup.table, lookup.table)
    np.testing.assert_array_equal(loaded.predictor.predict(TRIPS), compiled.predict(TRIPS))
    assert (loaded.name, loaded.model_version, loaded.decided_for, loaded.reason) == ("xgboost", "3", "2024-02", "best")


def test_small_values_are_json():
    assert roundtrip(ModelSpec("Lasso", 10, 7, 120.0)) == ModelSpec("Lasso", 10, 7, 120.0)
    assert roundtrip([12.5, 20.25]) == [12.5, 20.25]
    with pytest.raises(TypeError, match="cannot store a object without pickle"):
        dump_value(object())


def test_old_pickles_and_foreign_bytes_are_refused_with_what_to_do():
    with pytest.raises(ValueFormatError, match="xgboost_model partition 2024-02 .* pickle.*rematerialize it"):
        load_value(pickle.dumps({"a": 1}), "xgboost_model partition 2024-02 (/x)")
    with pytest.raises(ValueFormatError, match="not a taxi_assets value archive; rematerialize it"):
        load_value(b"hello", "v")
    with pytest.raises(ValueFormatError, match="damaged archive"):
        load_value(b"PK\x03\x04 truncated", "v")


def test_a_model_file_with_untrusted_types_is_not_loaded(models):
    """skops refuses any type outside the allowlist: a doctored model cannot name a function to run."""
    import skops.io

    untrusted = skops.io.dumps({"model": pd.Timestamp("2024-01-01")})
    data = doctored(dump_value(models["Lasso"]), {"predictor/model.skops": untrusted})
    with pytest.raises(ModelFormatError, match="types this project does not trust: pandas"):
        load_value(data, "sklearn_models partition 2024-02")


def test_a_model_that_predicts_differently_than_recorded_is_refused(models):
    import json

    data = dump_value(models["xgboost"])
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("predictor/manifest.json"))
    manifest["reference_minutes"][0] += 1.0
    data = doctored(data, {"predictor/manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(ModelFormatError, match="predicts .* for its reference trips, but recorded .* Rematerialize"):
        load_value(data, "xgboost_model partition 2024-02")
