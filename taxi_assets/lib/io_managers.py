"""Where asset values are stored: pickles on the local disk (atomically) or in S3."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field


class _AtomicPickleIOManager(dg.UPathIOManager):
    """Pickles values to files, writing to a temporary file renamed over the old value.

    A step that dies while writing (killed, disk full, unpicklable value) leaves the previous
    good value in place instead of a truncated file. Same layout as Dagster's
    ``FilesystemIOManager``: ``<base_dir>/<asset>/<partition>``.
    """

    def __init__(self, base_dir: str):
        from upath import UPath

        super().__init__(base_path=UPath(base_dir))

    def load_from_path(self, context: dg.InputContext, path) -> Any:
        with Path(str(path)).open("rb") as file:
            return pickle.load(file)

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path) -> None:
        path = Path(str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                pickle.dump(obj, file, pickle.HIGHEST_PROTOCOL)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _instance(context: dg.InitResourceContext) -> dg.DagsterInstance:
    if context.instance is None:
        raise RuntimeError("asset values live under a Dagster instance; build the resource with one")
    return context.instance


class LocalPickleIOManager(dg.ConfigurableIOManagerFactory):
    """Pickled asset values on the local disk (under the Dagster instance by default)."""

    base_dir: str | None = Field(default=None, description="Folder for asset values; default: the instance's storage.")

    def create_io_manager(self, context: dg.InitResourceContext) -> _AtomicPickleIOManager:
        base_dir = self.base_dir or _instance(context).storage_directory()
        return _AtomicPickleIOManager(base_dir=base_dir)


def production_io_manager() -> dg.ConfigurableIOManager:
    """Pickled asset values in S3 (dagster-aws): s3://$TAXI_S3_BUCKET/$TAXI_S3_PREFIX/<asset>/<month>.

    S3 writes an object whole or not at all, so a failed run never replaces a good value."""
    from dagster_aws.s3 import S3PickleIOManager, S3Resource

    return S3PickleIOManager(
        s3_resource=S3Resource(endpoint_url=os.getenv("AWS_ENDPOINT_URL"), region_name=os.getenv("AWS_REGION")),
        s3_bucket=dg.EnvVar("TAXI_S3_BUCKET"),
        s3_prefix=os.getenv("TAXI_S3_PREFIX", "taxi_assets/assets"),
    )


def io_manager_from_env() -> dg.ConfigurableIOManagerFactory | dg.ConfigurableIOManager:
    """The IO manager the environment selects: S3 under TAXI_ENV=production, local pickles
    under the instance otherwise. The code location and every client read values through it."""
    from taxi_assets.lib.settings import is_production

    if is_production():
        if not os.getenv("TAXI_S3_BUCKET"):
            from taxi_assets.lib.settings import ProductionConfigError

            raise ProductionConfigError("TAXI_ENV=production needs TAXI_S3_BUCKET (bucket for asset values)")
        return production_io_manager()
    return LocalPickleIOManager()
