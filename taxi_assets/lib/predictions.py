"""Where batch predictions live: one plain Parquet file per month, for people who read data without
our code (pandas, DuckDB, Athena). Locally under the instance (``.dagster_home/predictions/YYYY/MM.parquet``),
in production under a prefix of the bucket of asset values."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field, PrivateAttr

if TYPE_CHECKING:
    import pandas as pd


def month_path(month: str) -> str:
    year, number = month.split("-")
    return f"{year}/{number}.parquet"


class PredictionStore(dg.ConfigurableResource):
    """Reads and writes a month's batch predictions."""

    def location(self, month: str) -> str:
        """The file's path or URI (shown in the UI, so people can open it)."""
        raise NotImplementedError

    def write(self, month: str, frame: pd.DataFrame) -> str:
        """Write the month's predictions whole (a reader never sees half a file); returns where."""
        raise NotImplementedError

    def read(self, month: str) -> pd.DataFrame:
        raise NotImplementedError


class LocalPredictionStore(PredictionStore):
    """Files under base_dir (default: a predictions folder beside the Dagster instance's storage)."""

    base_dir: str | None = Field(default=None, description="Folder of the predictions; default: under the instance.")
    _root: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.base_dir is None and context.instance is None:
            raise RuntimeError("the default predictions folder lives beside a Dagster instance; give base_dir")
        self._root = self.base_dir or under_instance(context.instance)

    def _file(self, month: str) -> Path:
        root = self._root or self.base_dir
        if root is None:
            raise RuntimeError("LocalPredictionStore is used outside a Dagster run; give base_dir")
        return Path(root) / month_path(month)

    def location(self, month: str) -> str:
        return str(self._file(month))

    def write(self, month: str, frame: pd.DataFrame) -> str:
        path = self._file(month)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                frame.to_parquet(file, index=False)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return str(path)

    def read(self, month: str) -> pd.DataFrame:
        import pandas as pd

        path = self._file(month)
        if not path.is_file():
            raise FileNotFoundError(f"no batch predictions for {month} at {path}; materialize trip_predictions {month}")
        return pd.read_parquet(path)


def under_instance(instance) -> str:
    """``predictions/`` beside the instance's storage folder (``.dagster_home/predictions``)."""
    return str(Path(instance.storage_directory()).resolve().parent / "predictions")


class S3PredictionStore(PredictionStore):
    """Objects s3://<bucket>/<prefix>/YYYY/MM.parquet (S3 writes an object whole or not at all)."""

    bucket: str = Field(description="Bucket (the bucket of asset values).")
    prefix: str = Field(default="taxi_assets/predictions", description="Key prefix of the predictions.")
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, moto); None for AWS.")
    region_name: str | None = Field(default=None, description="AWS region.")

    def _client(self):
        from dagster_aws.s3 import S3Resource

        return S3Resource(endpoint_url=self.endpoint_url, region_name=self.region_name).get_client()

    def _key(self, month: str) -> str:
        return f"{self.prefix.strip('/')}/{month_path(month)}"

    def location(self, month: str) -> str:
        return f"s3://{self.bucket}/{self._key(month)}"

    def write(self, month: str, frame: pd.DataFrame) -> str:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        self._client().put_object(Bucket=self.bucket, Key=self._key(month), Body=buffer.getvalue())
        return self.location(month)

    def read(self, month: str) -> pd.DataFrame:
        import pandas as pd

        client = self._client()
        try:
            body = client.get_object(Bucket=self.bucket, Key=self._key(month))["Body"].read()
        except client.exceptions.NoSuchKey:
            raise FileNotFoundError(
                f"no batch predictions for {month} at {self.location(month)}; materialize trip_predictions {month}"
            ) from None
        return pd.read_parquet(io.BytesIO(body))


def prediction_store_from_env(instance=None) -> PredictionStore:
    """S3 under TAXI_ENV=production (the bucket of asset values), local files otherwise; with an
    ``instance``, a store clients can use outside a run."""
    from taxi_assets.lib.settings import is_production

    if is_production():
        return S3PredictionStore(
            bucket=dg.EnvVar("TAXI_S3_BUCKET") if instance is None else os.environ["TAXI_S3_BUCKET"],
            prefix=os.getenv("TAXI_PREDICTIONS_S3_PREFIX", "taxi_assets/predictions"),
            endpoint_url=os.getenv("AWS_ENDPOINT_URL"),
            region_name=os.getenv("AWS_REGION"),
        )
    return LocalPredictionStore(base_dir=under_instance(instance) if instance is not None else None)
