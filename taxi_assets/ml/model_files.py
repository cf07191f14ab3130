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

import json
from pathlib import Path
from typing import Any

import numpy as np

from taxi_assets.ml.predictor import DistanceLookup, TripDurationPredictor

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


class ModelFormatError(ValueError):
    """A folder that is not a predictor this version can read; the message says what to do."""


def library_versions() -> dict[str, str]:
    import sklearn
    import xgboost

    return {"xgboost": xgboost.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__}


def save_predictor(predictor: TripDurationPredictor, folder: Path) -> None:
    """Write ``predictor`` into ``folder`` (which must exist and be empty)."""
    folder = Path(folder)
    names = list(predictor.vectorizer.feature_names_)
    (folder / "vocabulary.json").write_text(json.dumps(names))
    if predictor.kind == "xgboost":
        predictor.model.save_model(str(folder / "booster.ubj"))
    else:
        import skops.io

        skops.io.dump(predictor.model, folder / "model.skops")
    lookup = getattr(predictor, "lookup", None)
    if lookup is not None:
        pairs = sorted(lookup.rows, key=lookup.rows.__getitem__)
        np.savez(
            folder / "lookup.npz", pairs=np.array(pairs, dtype=str), thresholds=lookup.thresholds, table=lookup.table
        )
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
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelFormatError(f"{folder} holds no readable predictor manifest ({error}); rematerialize it") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(
            f"{folder} holds predictor format {manifest.get('format')} v{manifest.get('format_version')}; this version "
            f"reads {FORMAT} v{FORMAT_VERSION}: rematerialize it"
        )
    return manifest


def load_predictor(folder: Path, check: bool = True) -> TripDurationPredictor:
    """The predictor saved in ``folder``. With ``check``, its minutes for the reference trips
    must equal the ones recorded when it was saved (a library that reads the file differently is
    refused, not served)."""
    from sklearn.feature_extraction import DictVectorizer

    folder = Path(folder)
    manifest = read_manifest(folder)
    names = json.loads((folder / "vocabulary.json").read_text())
    vectorizer = DictVectorizer()
    vectorizer.feature_names_ = names
    vectorizer.vocabulary_ = {name: position for position, name in enumerate(names)}
    if manifest["kind"] == "xgboost":
        import xgboost as xgb

        model: Any = xgb.Booster()
        model.load_model(str(folder / "booster.ubj"))
    else:
        import skops.io

        path = folder / "model.skops"
        untrusted = [name for name in skops.io.get_untrusted_types(file=path) if name not in TRUSTED_SKOPS_TYPES]
        if untrusted:
            raise ModelFormatError(f"{path} holds types this project does not trust: {', '.join(untrusted)}")
        model = skops.io.load(path, trusted=TRUSTED_SKOPS_TYPES)
    lookup = None
    if (folder / "lookup.npz").is_file():
        with np.load(folder / "lookup.npz", allow_pickle=False) as arrays:
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
        if got != manifest["reference_minutes"]:
            raise ModelFormatError(
                f"{folder}: {manifest['name']} predicts {got} for its reference trips, but recorded "
                f"{manifest['reference_minutes']} when saved with {manifest['libraries']}; now "
                f"{library_versions()}. Rematerialize it with these versions."
            )
    return predictor
