"""Asset values as archives of plain files: nothing is pickled, and reading runs no stored code.

One value is one zip archive (one local file renamed into place, or one S3 object, so a value is
replaced whole or not at all). Its ``value.json`` says what it is; the rest are files in formats
that hold data only:

================= =============================================================================
value             files
================= =============================================================================
trip frames       ``frame.parquet``
training set      ``X.npz``, ``X_train.npz``, ``X_val.npz`` (SciPy's CSR format, loaded without
                  pickle), ``y*.parquet``, the vectorizer as its feature names in ``value.json``
trained model(s)  the predictor (:mod:`taxi_assets.ml.model_files`: XGBoost's UBJ, skops),
                  ``validation_predictions.npy``, ``charts/*.png``, the rest in ``value.json``
production model  the predictor, the decision in ``value.json``
anything else     JSON (the predict job's minutes, the fan-out's model specs)
================= =============================================================================

Archives written before this format (pickles) are refused with a message that says to
rematerialize: loading a pickle can run any code its writer chose.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

FORMAT = "taxi-assets-value"
FORMAT_VERSION = 1
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


class ValueFormatError(ValueError):
    """Stored bytes this version cannot read; the message names the value and says what to do."""


def _plain(value: Any) -> Any:
    """JSON's view of hyperparameters and metrics (NumPy scalars become Python numbers)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, np.ndarray):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(f"cannot store {type(value).__name__} in a value's JSON")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def _from_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _release_arrow_memory() -> None:
    """Arrow's pool keeps its arenas after a one-off conversion (tens of MB for a month, most of a
    data-preparation step's headroom); hand back what it no longer uses."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def _parquet(frame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    table = pa.Table.from_pandas(frame, preserve_index=None)
    pq.write_table(table, buffer, compression="lz4")
    del table
    _release_arrow_memory()
    return buffer.getvalue()


def _from_parquet(data: bytes):
    import pyarrow.parquet as pq

    # ParquetFile rather than pandas.read_parquet: the latter imports pyarrow.dataset (~0.15 s).
    table = pq.ParquetFile(io.BytesIO(data)).read()
    frame = table.to_pandas()
    del table
    _release_arrow_memory()
    return frame


def _series_parquet(series) -> bytes:
    return _parquet(series.to_frame(name=series.name if series.name is not None else "value"))


def _from_series_parquet(data: bytes):
    frame = _from_parquet(data)
    series = frame.iloc[:, 0]
    return series.rename(None) if series.name == "value" else series


def _csr(matrix) -> bytes:
    import scipy.sparse as sp

    buffer = io.BytesIO()
    sp.save_npz(buffer, matrix, compressed=False)
    return buffer.getvalue()


def _from_csr(data: bytes):
    import scipy.sparse as sp

    return sp.csr_matrix(sp.load_npz(io.BytesIO(data)))


# Each kind: what it is in value.json, its files. -----------------------------------------------


def _trained_files(trained, prefix: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    from taxi_assets.ml.model_files import predictor_files

    fields = {
        field.name: _plain(getattr(trained, field.name))
        for field in dataclasses.fields(trained)
        if field.name not in ("predictor", "charts", "validation_predictions")
    }
    files = {f"{prefix}predictor/{name}": data for name, data in predictor_files(trained.predictor).items()}
    files |= {f"{prefix}charts/{name}.png": png for name, png in trained.charts.items()}
    if trained.validation_predictions is not None:
        files[f"{prefix}validation_predictions.npy"] = _npy(trained.validation_predictions)
    fields["charts"] = list(trained.charts)
    return fields, files


def _trained_from(fields: dict[str, Any], files: Mapping[str, bytes], prefix: str, where: str):
    from taxi_assets.ml.model_files import predictor_from_files
    from taxi_assets.ml.predictor import TrainedModel

    predictor = predictor_from_files(_folder(files, f"{prefix}predictor/"), f"{where} ({fields['name']})")
    charts = {name: files[f"{prefix}charts/{name}.png"] for name in fields.pop("charts")}
    predictions = files.get(f"{prefix}validation_predictions.npy")
    return TrainedModel(
        predictor=predictor,
        charts=charts,
        validation_predictions=_from_npy(predictions) if predictions is not None else None,
        **fields,
    )


def _folder(files: Mapping[str, bytes], prefix: str) -> dict[str, bytes]:
    return {name.removeprefix(prefix): data for name, data in files.items() if name.startswith(prefix)}


def to_files(value: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``value`` as (what ``value.json`` says, the other files)."""
    import pandas as pd

    from taxi_assets.ml.champion import ProductionModel
    from taxi_assets.ml.dataset import TrainingSet
    from taxi_assets.ml.predictor import TrainedModel
    from taxi_assets.ml.training import ModelSpec

    if isinstance(value, pd.DataFrame):
        return {"kind": "dataframe"}, {"frame.parquet": _parquet(value)}
    if isinstance(value, TrainingSet):
        files = {f"{name}.npz": _csr(getattr(value, name)) for name in ("X", "X_train", "X_val")}
        files |= {f"{name}.parquet": _series_parquet(getattr(value, name)) for name in ("y", "y_train", "y_val")}
        return {"kind": "training_set", "feature_names": list(value.feature_names)}, files
    if isinstance(value, TrainedModel):
        fields, files = _trained_files(value, "")
        return {"kind": "trained_model", "model": fields}, files
    if isinstance(value, dict) and value and all(isinstance(item, TrainedModel) for item in value.values()):
        models, files = {}, {}
        for position, (name, trained) in enumerate(value.items()):
            models[name], model_files = _trained_files(trained, f"models/{position}/")
            files |= model_files
        return {"kind": "trained_models", "models": models}, files
    if isinstance(value, ProductionModel):
        from taxi_assets.ml.model_files import predictor_files

        fields = {
            field.name: _plain(getattr(value, field.name))
            for field in dataclasses.fields(value)
            if field.name != "predictor"
        }
        files = {f"predictor/{name}": data for name, data in predictor_files(value.predictor).items()}
        return {"kind": "production_model", "decision": fields}, files
    if isinstance(value, ModelSpec):
        return {"kind": "model_spec", "spec": dataclasses.asdict(value)}, {}
    try:
        return {"kind": "json", "value": _plain(value)}, {}
    except TypeError:
        raise TypeError(
            f"cannot store a {type(value).__name__} without pickle; add it to taxi_assets.ml.value_files"
        ) from None


def from_files(described: dict[str, Any], files: Mapping[str, bytes], where: str) -> Any:
    kind = described["kind"]
    if kind == "dataframe":
        return _from_parquet(files["frame.parquet"])
    if kind == "training_set":
        from taxi_assets.ml.dataset import TrainingSet

        matrices = {name: _from_csr(files[f"{name}.npz"]) for name in ("X", "X_train", "X_val")}
        targets = {name: _from_series_parquet(files[f"{name}.parquet"]) for name in ("y", "y_train", "y_val")}
        return TrainingSet(
            X=matrices["X"], X_train=matrices["X_train"], X_val=matrices["X_val"],
            y=targets["y"], y_train=targets["y_train"], y_val=targets["y_val"],
            feature_names=tuple(described["feature_names"]),
        )  # fmt: skip
    if kind == "trained_model":
        return _trained_from(dict(described["model"]), files, "", where)
    if kind == "trained_models":
        return {
            name: _trained_from(dict(fields), files, f"models/{position}/", where)
            for position, (name, fields) in enumerate(described["models"].items())
        }
    if kind == "production_model":
        from taxi_assets.ml.champion import ProductionModel
        from taxi_assets.ml.model_files import predictor_from_files

        predictor = predictor_from_files(_folder(files, "predictor/"), where)
        return ProductionModel(predictor=predictor, **described["decision"])
    if kind == "model_spec":
        from taxi_assets.ml.training import ModelSpec

        return ModelSpec(**described["spec"])
    if kind == "json":
        return described["value"]
    raise ValueFormatError(f"{where} holds a value of kind {kind!r}, unknown to this version; rematerialize it")


def dump_value(value: Any) -> bytes:
    """``value`` as one archive's bytes."""
    described, files = to_files(value)
    buffer = io.BytesIO()
    # Parquet and NPZ parts are compressed or dense already; storing them keeps writes fast.
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("value.json", json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **described}))
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def load_value(data: bytes, where: str) -> Any:
    """The value in an archive written by :func:`dump_value`; ``where`` names it in errors."""
    if data.startswith(_PICKLE_MAGIC):
        raise ValueFormatError(
            f"{where} was stored by an earlier taxi_assets version as a pickle, which this version does not load "
            f"(unpickling can run any code its writer chose); rematerialize it"
        )
    if not data.startswith(_ZIP_MAGIC):
        raise ValueFormatError(f"{where} is not a taxi_assets value archive; rematerialize it")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile as error:
        raise ValueFormatError(f"{where} is a damaged archive ({error}); rematerialize it") from None
    described = json.loads(files.pop("value.json"))
    if described.get("format") != FORMAT or described.get("format_version") != FORMAT_VERSION:
        raise ValueFormatError(
            f"{where} holds {described.get('format')} v{described.get('format_version')}; this version reads "
            f"{FORMAT} v{FORMAT_VERSION}: rematerialize it"
        )
    return from_files(described, files, where)
