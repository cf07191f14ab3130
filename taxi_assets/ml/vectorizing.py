"""One-hot + numeric vectorizing that builds exactly what ``DictVectorizer`` builds, faster.

The course turns every row into a Python dict (``to_dict('records')``) and feeds the list to
``DictVectorizer``. Here each categorical column is factorized once and the CSR arrays are laid out
with NumPy. The result is the same matrix (same feature names and order, same stored entries in the
same order, same values), and the returned vectorizer is a fitted ``DictVectorizer``, so
``dv.transform(records)`` still works on inference records.

Building needs only the feature names (:func:`fit`); scikit-learn is imported when a
``DictVectorizer`` is asked for, so data preparation never pays for importing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

if TYPE_CHECKING:
    from sklearn.feature_extraction import DictVectorizer

SEPARATOR = "="  # DictVectorizer's default separator between a column and its category


def _is_categorical(series: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype)


def _column_entries(series: pd.Series, vocabulary: dict[str, int] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Column indices (-1 = not in the vocabulary), values and the names this column produces."""
    column = str(series.name)
    if _is_categorical(series):
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        names = [f"{column}{SEPARATOR}{value}" for value in uniques]
        values = np.ones(len(series), dtype=np.float64)
        if vocabulary is None:
            return codes, values, names  # codes index `names` until the vocabulary exists
        lookup = np.fromiter((vocabulary.get(name, -1) for name in names), np.int64, len(names))
        indices = np.where(codes >= 0, lookup[np.maximum(codes, 0)] if len(names) else -1, -1)
        return indices, values, names
    values = series.to_numpy(dtype=np.float64)
    if vocabulary is None:
        return np.zeros(len(series), dtype=np.int64), values, [column]
    return np.full(len(series), vocabulary.get(column, -1), dtype=np.int64), values, [column]


def assemble_csr(indices: list[np.ndarray], values: list[np.ndarray], n_rows: int, n_features: int) -> sp.csr_matrix:
    # Row-major: each row's entries in column order, as DictVectorizer appends them.
    index_table = np.column_stack(indices) if indices else np.empty((n_rows, 0), np.int64)
    value_table = np.column_stack(values) if values else np.empty((n_rows, 0))
    present = index_table >= 0
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(present.sum(axis=1), out=indptr[1:])
    index_dtype = np.int32 if max(n_features, indptr[-1]) < np.iinfo(np.int32).max else np.int64
    return sp.csr_matrix(
        (value_table[present], index_table[present].astype(index_dtype), indptr.astype(index_dtype)),
        shape=(n_rows, n_features),
        dtype=np.float64,
    )


def fit(features: pd.DataFrame) -> tuple[sp.csr_matrix, list[str]]:
    """Fit on ``features``: (matrix, the feature names in column order)."""
    per_column = [_column_entries(features[column], None) for column in features.columns]
    names = sorted({name for _, _, column_names in per_column for name in column_names})
    vocabulary = {name: position for position, name in enumerate(names)}
    indices = []
    for codes, _, column_names in per_column:
        lookup = np.fromiter((vocabulary[name] for name in column_names), np.int64, len(column_names))
        indices.append(np.where(codes >= 0, lookup[np.maximum(codes, 0)], -1))
    matrix = assemble_csr(indices, [entry[1] for entry in per_column], len(features), len(names))
    return matrix, names


def dict_vectorizer(names: Sequence[str]) -> DictVectorizer:
    """A fitted ``DictVectorizer`` with these feature names, in this column order."""
    from sklearn.feature_extraction import DictVectorizer

    vectorizer = DictVectorizer()
    vectorizer.feature_names_ = list(names)
    vectorizer.vocabulary_ = {name: position for position, name in enumerate(names)}
    return vectorizer


def fit_transform(features: pd.DataFrame) -> tuple[sp.csr_matrix, DictVectorizer]:
    """Fit a vectorizer on ``features`` and return (matrix, fitted ``DictVectorizer``)."""
    matrix, names = fit(features)
    return matrix, dict_vectorizer(names)


def transform(features: pd.DataFrame, vectorizer: Any) -> sp.csr_matrix:
    """``vectorizer.transform(features.to_dict('records'))`` without the dicts.

    ``vectorizer``: a fitted ``DictVectorizer``, or its feature names in column order.
    Categories the vectorizer has not seen are left out of the row, as DictVectorizer does.
    """
    if isinstance(vectorizer, (list, tuple)):
        names, vocabulary = vectorizer, {name: position for position, name in enumerate(vectorizer)}
    else:
        names, vocabulary = vectorizer.feature_names_, vectorizer.vocabulary_
    per_column = [_column_entries(features[column], vocabulary) for column in features.columns]
    return assemble_csr(
        [entry[0] for entry in per_column], [entry[1] for entry in per_column], len(features), len(names)
    )
