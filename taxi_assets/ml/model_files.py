"""Predictors on disk in their libraries' own formats, never as pickles.

A folder holds one predictor:

* ``manifest.json``: what it is (name, kind, month, best round, library versions) and the
  minutes it predicted for a few reference trips when it was saved;
* ``booster.ubj`` (XGBoost's own ``save_model``) or ``model.skops`` (scikit-learn through skops,
  loaded with an explicit list of trusted types);
* ``vocabulary.json``: the vectorizer's feature names in column order;
* ``lookup.npz``: the compiled lookup table, plain arrays (loaded with ``allow_pickle=False``).

Loading executes no code from the files: JSON, NumPy arrays, XGBoost's model format, and skops'
schema, which refuses any type outside the allowlist.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from taxi_assets.ml.predictor import DistanceLookup, TripDurationPredictor
from taxi_assets.ml.vectorizing import dict_vectorizer

FORMAT = "taxi-assets-predictor"
FORMAT_VERSION = 1
# The one non-default type skops needs for the tree ensembles the course trains.
TRUSTED_SKOPS_TYPES = ["sklearn.tree._tree.Tree"]
# Trips predicted when a predictor is saved, and checked again when it is loaded elsewhere.
REFERENCE_TRIPS = [
    {"PULocationID": 236, "DOLocationID": 239, "trip_distance": 1.98},
    {"PULocationID": 65, "DOLocationID": 170, "trip_distance": 6.54},
    {"PULocationID": 74, "DOLocationID": 75, "trip_distance": 0.5},
    {"PULocationID": 999, "DOLocationID": 998, "trip_distance": 12.0},  # an unseen pair
]


# How far a loaded model's minutes for the reference trips may be from the recorded ones.
REFERENCE_TOLERANCE_MINUTES = 1e-6


class ModelFormatError(ValueError):
    """A folder that is not a predictor this version can read; the message says what to do."""


def library_versions() -> dict[str, str]:
    import sklearn
    import xgboost

    return {"xgboost": xgboost.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__}


def predictor_files(predictor: TripDurationPredictor) -> dict[str, bytes]:
    """``predictor`` as named files (see the module's docstring)."""
    files = {"vocabulary.json": json.dumps(list(predictor.vectorizer.feature_names_)).encode()}
    if predictor.kind == "xgboost":
        files["booster.ubj"] = bytes(predictor.model.save_raw("ubj"))
    else:
        import skops.io

        files["model.skops"] = skops.io.dumps(predictor.model)
    lookup = predictor.lookup
    if lookup is not None:
        pairs = sorted(lookup.rows, key=lookup.rows.__getitem__)
        buffer = io.BytesIO()
        np.savez(buffer, pairs=np.array(pairs, dtype=str), thresholds=lookup.thresholds, table=lookup.table)
        files["lookup.npz"] = buffer.getvalue()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": predictor.name,
        "kind": predictor.kind,
        "partition": predictor.partition,
        "best_iteration": predictor.best_iteration,
        "libraries": library_versions(),
        "reference_trips": REFERENCE_TRIPS,
        "reference_minutes": [float(value) for value in predictor.predict(REFERENCE_TRIPS)],
    }
    files["manifest.json"] = json.dumps(manifest, indent=1).encode()
    return files


def save_predictor(predictor: TripDurationPredictor, folder: Path) -> None:
    """Write ``predictor`` into ``folder`` (which must exist and be empty)."""
    for name, data in predictor_files(predictor).items():
        (Path(folder) / name).write_bytes(data)


def read_manifest(files: Mapping[str, bytes], where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(files["manifest.json"])
    except (KeyError, ValueError) as error:
        raise ModelFormatError(f"{where} holds no readable predictor manifest ({error!r}); rematerialize it") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(
            f"{where} holds predictor format {manifest.get('format')} v{manifest.get('format_version')}; this version "
            f"reads {FORMAT} v{FORMAT_VERSION}: rematerialize it"
        )
    return manifest


def predictor_from_files(files: Mapping[str, bytes], where: str, check: bool = True) -> TripDurationPredictor:
    """The predictor in ``files`` (named as :func:`predictor_files` names them). With ``check``,
    its minutes for the reference trips must equal the ones recorded when it was saved (a
    library that reads the file differently is refused, not served)."""
    manifest = read_manifest(files, where)
    vectorizer = dict_vectorizer(json.loads(files["vocabulary.json"]))
    if manifest["kind"] == "xgboost":
        import xgboost as xgb

        model: Any = xgb.Booster()
        model.load_model(bytearray(files["booster.ubj"]))
    else:
        import skops.io

        data = files["model.skops"]
        untrusted = [name for name in skops.io.get_untrusted_types(data=data) if name not in TRUSTED_SKOPS_TYPES]
        if untrusted:
            names = ", ".join(untrusted)
            raise ModelFormatError(f"{where}: the model holds types this project does not trust: {names}")
        model = skops.io.loads(data, trusted=TRUSTED_SKOPS_TYPES)
    lookup = None
    if "lookup.npz" in files:
        with np.load(io.BytesIO(files["lookup.npz"]), allow_pickle=False) as arrays:
            pairs = [str(pair) for pair in arrays["pairs"]]
            lookup = DistanceLookup(
                rows={pair: row for row, pair in enumerate(pairs)},
                thresholds=arrays["thresholds"].astype(np.float32),
                table=arrays["table"].astype(np.float32),
            )
    predictor = TripDurationPredictor(
        name=manifest["name"], kind=manifest["kind"], model=model, vectorizer=vectorizer,
        partition=manifest["partition"], best_iteration=manifest["best_iteration"], lookup=lookup,
    )  # fmt: skip
    if check:
        got = [float(value) for value in predictor.predict(manifest["reference_trips"])]
        # Not bit-for-bit: a forest's parallel predict sums its trees in any order (last-digit
        # differences); a library that reads the file differently is off by far more.
        if not np.allclose(got, manifest["reference_minutes"], rtol=0, atol=REFERENCE_TOLERANCE_MINUTES):
            raise ModelFormatError(
                f"{where}: {manifest['name']} predicts {got} for its reference trips, but recorded "
                f"{manifest['reference_minutes']} when saved with {manifest['libraries']}; now "
                f"{library_versions()}. Rematerialize it with these versions."
            )
    return predictor


def load_predictor(folder: Path, check: bool = True) -> TripDurationPredictor:
    """The predictor saved in ``folder`` by :func:`save_predictor` (see :func:`predictor_from_files`)."""
    folder = Path(folder)
    files = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    return predictor_from_files(files, str(folder), check)
