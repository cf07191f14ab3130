"""Local instance storage whose relative paths mean "inside ``$DAGSTER_HOME``".

Dagster resolves a relative ``base_dir`` in ``dagster.yaml`` against the working directory, so a
command started in another folder (a notebook in a subfolder, ``dagster dev`` from ``~``) saw an
empty instance and created a new ``.dagster_home/`` where it stood. Dagster's YAML cannot join an
environment variable with a path, hence these three thin subclasses: the project's
``dagster.yaml`` names them with ``base_dir: .dagster_home``, and every process that reads that
file (CLI, webserver, daemon, code server, run and step workers) finds the same state. Absolute
paths are used as given. Without ``DAGSTER_HOME`` (``dg dev``, ``dg check defs`` run in the
project), they mean the project's folder, where this dagster.yaml lives: the project's instance.
Nothing here imports the code location.
"""

from __future__ import annotations

import os
from pathlib import Path

from taxi_assets.lib.dagster_private import local_storage_bases


class _Moved:
    """Stands in for a storage base Dagster moved: naming it in dagster.yaml says what to do."""

    @classmethod
    def config_type(cls):
        return {}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        raise SystemExit(
            "this Dagster moved its local storages, so taxi_assets.lib.instance cannot place them under DAGSTER_HOME: "
            "remove the storage, local_artifact_storage and compute_logs sections from dagster.yaml to use "
            "Dagster's defaults (also under DAGSTER_HOME)"
        )


_BASES: tuple = local_storage_bases() or (_Moved, _Moved, _Moved)
DagsterSqliteStorage, LocalArtifactStorage, LocalComputeLogManager = _BASES

PROJECT = Path(__file__).resolve().parents[2]  # the checkout (or site-packages, when installed)


def under_dagster_home(path: str) -> str:
    """``path`` if absolute, else inside ``$DAGSTER_HOME`` (where this dagster.yaml was read), or
    inside the project's folder when DAGSTER_HOME is not set and the package runs from a checkout
    (Dagster's tools then read the project's dagster.yaml from there)."""
    if os.path.isabs(path):
        return path
    home = os.environ.get("DAGSTER_HOME")
    if home:
        return os.path.join(os.path.abspath(os.path.expanduser(home)), path)
    if (PROJECT / "dagster.yaml").is_file() and (PROJECT / "pyproject.toml").is_file():
        return str(PROJECT / path)
    raise SystemExit(
        f"DAGSTER_HOME is not set: export DAGSTER_HOME=<the folder with your dagster.yaml> ({path!r} is relative to it)"
    )


class HomeSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite run, event-log and schedule storage, under ``$DAGSTER_HOME``."""

    @classmethod
    def from_config_value(cls, inst_data, config_value):  # type: ignore[override]
        return cls.from_local(inst_data=inst_data, base_dir=under_dagster_home(config_value["base_dir"]))


class HomeArtifactStorage(LocalArtifactStorage):
    """Dagster's local artifact storage (asset values, MLflow's local store), under ``$DAGSTER_HOME``."""

    @classmethod
    def from_config_value(cls, inst_data, config_value):  # type: ignore[override]
        return cls(inst_data=inst_data, base_dir=under_dagster_home(config_value["base_dir"]))


class HomeComputeLogManager(LocalComputeLogManager):
    """Dagster's local compute logs (each step's stdout/stderr), under ``$DAGSTER_HOME``."""

    @classmethod
    def from_config_value(cls, inst_data, config_value):  # type: ignore[override]
        return cls(inst_data=inst_data, **{**config_value, "base_dir": under_dagster_home(config_value["base_dir"])})


if _BASES[0] is _Moved:  # Dagster moved them: each names what to do instead
    HomeSqliteStorage = HomeArtifactStorage = HomeComputeLogManager = _Moved  # type: ignore[misc]
