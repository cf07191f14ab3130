"""Where asset values are stored: archives of plain files (``taxi_assets.ml.value_files``), on
the local disk (written atomically) or in S3. Nothing is pickled."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from taxi_assets.ml.value_files import dump_value, load_value


def _where(context: dg.InputContext | dg.OutputContext, path) -> str:
    """The value's name in messages: asset and partition when there are, and the path."""
    name = "/".join(context.asset_key.path) if context.has_asset_key else "op output"
    partition = f" partition {context.partition_key}" if context.has_asset_partitions else ""
    return f"{name}{partition} ({path})"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``: a reader
    sees the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class _AtomicArchiveIOManager(dg.UPathIOManager):
    """Value archives in files, each written to a temporary file renamed over the old value.

    A step that dies while writing (killed, disk full, a value it cannot store) leaves the
    previous good value in place instead of a truncated file. Same layout as Dagster's
    ``FilesystemIOManager``: ``<base_dir>/<asset>/<partition>``.
    """

    def __init__(self, base_dir: str):
        from upath import UPath

        super().__init__(base_path=UPath(base_dir))

    def load_from_path(self, context: dg.InputContext, path) -> Any:
        return load_value(Path(str(path)).read_bytes(), _where(context, path))

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path) -> None:
        write_atomically(Path(str(path)), dump_value(obj))


def _instance(context: dg.InitResourceContext) -> dg.DagsterInstance:
    if context.instance is None:
        raise RuntimeError("asset values live under a Dagster instance; build the resource with one")
    return context.instance


class LocalValueIOManager(dg.ConfigurableIOManagerFactory):
    """Asset values on the local disk (under the Dagster instance by default), as archives of
    plain files: Parquet, NumPy and SciPy arrays, XGBoost's and skops' model formats, JSON."""

    base_dir: str | None = Field(default=None, description="Folder for asset values; default: the instance's storage.")

    def create_io_manager(self, context: dg.InitResourceContext) -> _AtomicArchiveIOManager:
        base_dir = self.base_dir or _instance(context).storage_directory()
        return _AtomicArchiveIOManager(base_dir=base_dir)


class S3ValueIOManager(dg.ConfigurableIOManager):
    """Asset values in S3 as the same archives: s3://<bucket>/<prefix>/<asset>/<month>.

    dagster-aws's S3 IO manager (its layout and paths) with its pickling replaced. S3 writes an
    object whole or not at all, so a failed run never replaces a good value."""

    s3_bucket: str = Field(description="Bucket for asset values.")
    s3_prefix: str = Field(default="taxi_assets/assets", description="Key prefix of asset values.")
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, moto); None for AWS.")
    region_name: str | None = Field(default=None, description="AWS region.")
    _manager: Any = PrivateAttr(default=None)

    def _s3(self):
        if self._manager is None:
            from dagster_aws.s3 import S3Resource
            from dagster_aws.s3.io_manager import PickledObjectS3IOManager

            class ArchiveS3IOManager(PickledObjectS3IOManager):
                def load_from_path(self, context, path) -> Any:
                    try:
                        data = self.s3.get_object(Bucket=self.bucket, Key=path.as_posix())["Body"].read()
                    except self.s3.exceptions.NoSuchKey:
                        raise FileNotFoundError(f"Could not find file {path} in S3 bucket {self.bucket}") from None
                    return load_value(data, _where(context, self._uri_for_path(path)))

                def dump_to_path(self, context, obj: Any, path) -> None:
                    self.s3.put_object(Bucket=self.bucket, Key=path.as_posix(), Body=dump_value(obj))

            client = S3Resource(endpoint_url=self.endpoint_url, region_name=self.region_name).get_client()
            self._manager = ArchiveS3IOManager(self.s3_bucket, client, self.s3_prefix)
        return self._manager

    def load_input(self, context: dg.InputContext) -> Any:
        return self._s3().load_input(context)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        self._s3().handle_output(context, obj)


def production_io_manager() -> dg.ConfigurableIOManager:
    """Asset values in S3: s3://$TAXI_S3_BUCKET/$TAXI_S3_PREFIX/<asset>/<month>."""
    return S3ValueIOManager(
        s3_bucket=dg.EnvVar("TAXI_S3_BUCKET"),
        s3_prefix=os.getenv("TAXI_S3_PREFIX", "taxi_assets/assets"),
        endpoint_url=os.getenv("AWS_ENDPOINT_URL"),
        region_name=os.getenv("AWS_REGION"),
    )


def io_manager_from_env() -> dg.ConfigurableIOManagerFactory | dg.ConfigurableIOManager:
    """The IO manager the environment selects: S3 under TAXI_ENV=production, local files
    under the instance otherwise. The code location and every client read values through it."""
    from taxi_assets.lib.settings import is_production

    if is_production():
        if not os.getenv("TAXI_S3_BUCKET"):
            from taxi_assets.lib.settings import ProductionConfigError

            raise ProductionConfigError("TAXI_ENV=production needs TAXI_S3_BUCKET (bucket for asset values)")
        return production_io_manager()
    return LocalValueIOManager()
