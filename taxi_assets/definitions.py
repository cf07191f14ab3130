"""The code location: the definitions in ``defs/`` (one folder per stage), and the executor."""

from __future__ import annotations

import functools
from pathlib import Path

import dagster as dg


def build_defs(**resources) -> dg.Definitions:
    """Everything in ``taxi_assets/defs``; keyword arguments replace resources by key (tests pass
    their own trip source, IO manager, tracking store or SMTP server)."""
    loaded = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    if resources:
        loaded = dg.Definitions(
            assets=loaded.assets,
            asset_checks=loaded.asset_checks,
            jobs=loaded.jobs,
            sensors=loaded.sensors,
            schedules=loaded.schedules,
            resources={**(loaded.resources or {}), **resources},
        )
    # Steps run in the launching process: data preparation is a few hundred milliseconds of pandas
    # per step, and a process per step would spend more on imports than on work. The jobs that
    # train (model_training, retraining) use the multiprocess executor.
    return dg.Definitions.merge(loaded, dg.Definitions(executor=dg.in_process_executor))


@functools.cache
def _project_defs() -> dg.Definitions:
    return build_defs()


@dg.definitions
def defs() -> dg.Definitions:
    # Dagster calls this entry point each time it reconstructs the repository: six times in one
    # `dagster asset materialize` (CLI, job reconstruction, each step's context), each a full walk
    # of defs/ (about 0.3 s). One build per process; a reload starts a new process anyway.
    return _project_defs()
