"""A model's lineage as Dagster recorded it when the model was trained: the trip files' versions
(as raw_trips read them), the training set's data version, the code versions on its path, the
package and git commit, the config and the fit. ``taxi_assets.ml.lineage`` says what the tags
mean; this module reads them off the instance."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import dagster as dg

from taxi_assets.lib.catalog import CODE_VERSIONS
from taxi_assets.lib.history import recorded_version
from taxi_assets.lib.months import previous_month
from taxi_assets.ml.lineage import CODE_PREFIX, FILE_PREFIX, PATH_ASSETS, PREFIX, as_tags


def file_version(instance: dg.DagsterInstance, month: str) -> str | None:
    """The version of the trip file raw_trips last read for ``month`` (its data version is that
    version and raw_trips' code version)."""
    version = recorded_version(instance, "raw_trips", month)
    return version.split("|", 1)[0] if version else None


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("taxi_assets")
    except PackageNotFoundError:
        return "unknown"


@functools.cache
def git_commit() -> str | None:
    """The commit the code came from: TAXI_GIT_COMMIT (the image's build sets it), else the
    checkout's HEAD when the package runs from a git checkout, else None (unknown)."""
    if os.environ.get("TAXI_GIT_COMMIT"):
        return os.environ["TAXI_GIT_COMMIT"]
    here = Path(__file__).resolve().parents[2]
    if not (here / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def model_lineage(instance: dg.DagsterInstance, month: str, asset: str, config: dict, fit: dict) -> dict[str, str]:
    """The ``lineage.*`` tags of a model of ``asset`` trained for ``month`` now."""
    return as_tags(
        {
            **{FILE_PREFIX + key: file_version(instance, key) or "unknown" for key in (previous_month(month), month)},
            PREFIX + "training_set": recorded_version(instance, "training_set", month) or "unknown",
            **{CODE_PREFIX + name: CODE_VERSIONS[name] for name in (*PATH_ASSETS, asset)},
            PREFIX + "package_version": package_version(),
            PREFIX + "git_commit": git_commit() or "unknown",
            PREFIX + "trained_for": month,
            PREFIX + "asset": asset,
            PREFIX + "config": config,
            PREFIX + "fit": fit,
        }
    )
