"""The code location: the definitions in ``defs/`` (one folder per stage), and the executor."""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path

import dagster as dg

from taxi_assets.lib.dagster_private import keep_code_server_cleanup_alive


def build_defs(**resources) -> dg.Definitions:
    """Everything in ``taxi_assets/defs``; keyword arguments replace resources by key (tests pass
    their own trip source, IO manager, tracking store or SMTP server), every other field kept."""
    quiet_location_name()
    loaded = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    if resources:
        fields = [name for name in inspect.signature(dg.Definitions.__new__).parameters if name != "cls"]
        kept = {name: getattr(loaded, name) for name in fields}
        loaded = dg.Definitions(**{**kept, "resources": {**(loaded.resources or {}), **resources}})
    # Steps run in the launching process: data preparation is a few hundred milliseconds of pandas
    # per step, and a process per step would spend more on imports than on work. The jobs that
    # train (model_training, retraining) have their own (defs/automation.py: a process per step,
    # or an ECS task per step with TAXI_STEP_EXECUTOR=ecs).
    return dg.Definitions.merge(loaded, dg.Definitions(executor=dg.in_process_executor))


class _LocationNameNote(logging.Filter):
    """Drops Dagster's note that the code location is registered under another name than
    pyproject.toml's (``taxi_assets.definitions`` when a CLI loads it with ``-m``): the name only
    matters for app-managed (UI-built) components, and this project has none."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "configured on this project does not match the name" not in record.getMessage()


@functools.cache
def quiet_location_name() -> None:
    logging.getLogger("dagster.components.core.component_tree").addFilter(_LocationNameNote())


@functools.cache
def _project_defs() -> dg.Definitions:
    return build_defs()


@dg.definitions
def defs() -> dg.Definitions:
    # Dagster calls this entry point each time it reconstructs the repository: six times in one
    # `dagster asset materialize` (CLI, job reconstruction, each step's context), each a full walk
    # of defs/ (about 0.3 s). One build per process; a reload starts a new process anyway.
    # In a code server, its run-worker check must outlive a storage outage (see the function).
    keep_code_server_cleanup_alive()
    return _project_defs()
