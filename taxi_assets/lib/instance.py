"""Local instance storage whose relative paths mean "inside ``$DAGSTER_HOME``".

Dagster resolves a relative ``base_dir`` in ``dagster.yaml`` against the working directory, so a
command started in another folder (a notebook in a subfolder, ``dagster dev`` from ``~``) saw an
empty instance and created a new ``.dagster_home/`` where it stood. Dagster's YAML cannot join an
environment variable with a path, hence these three thin subclasses: the project's
``dagster.yaml`` names them with ``base_dir: .dagster_home``, and every process that reads that
file (CLI, webserver, daemon, code server, run and step workers) finds the same state. Absolute
paths are used as given. Nothing here imports the code location.
"""

from __future__ import annotations

import os

from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
from dagster._core.storage.root import LocalArtifactStorage
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage


def under_dagster_home(path: str) -> str:
    """``path`` if absolute, else inside ``$DAGSTER_HOME`` (where this dagster.yaml was read)."""
    if os.path.isabs(path):
        return path
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise RuntimeError(f"{path!r} is relative to DAGSTER_HOME, which is not set")
    return os.path.join(os.path.abspath(os.path.expanduser(home)), path)


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
