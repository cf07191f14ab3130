"""Warnings that speak: a deprecation that a library raises on this package's behalf fails the test
that caused it, so an upgrade's removals show up here first, not in production."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

PACKAGE = str(Path(__file__).resolve().parents[2] / "taxi_assets")
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
# Upstream deprecations the package cannot avoid, each as (category name, text it contains, why).
ALLOWED: list[tuple[str, str, str]] = []


def _ours(caught: warnings.WarningMessage) -> bool:
    """A deprecation attributed to a line of this package (the library's stacklevel points at us)."""
    if not issubclass(caught.category, DEPRECATIONS) or not str(caught.filename).startswith(PACKAGE):
        return False
    text = str(caught.message)
    return not any(caught.category.__name__ == name and part in text for name, part, _ in ALLOWED)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = yield
    ours = [entry for entry in caught if _ours(entry)]
    for entry in caught:  # the rest still reach pytest's warnings summary
        if entry not in ours:
            warnings.warn_explicit(entry.message, entry.category, entry.filename, entry.lineno)
    if ours:
        shown = "; ".join(
            f"{entry.filename}:{entry.lineno}: {entry.category.__name__}: {entry.message}" for entry in ours
        )
        raise AssertionError(f"deprecated use in taxi_assets (fix it, or add it to ALLOWED with why): {shown}")
    return result
