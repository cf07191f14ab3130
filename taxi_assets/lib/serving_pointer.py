"""The published decision: what the server, ``load_model()`` and the predict job read.

After Dagster records a production decision, its model files are written to an immutable key
(``models/<decision id>``) and then a small pointer (``current.json``) is replaced to name them:
locally under the instance (``.dagster_home/serving``), in production under a prefix of the
bucket of asset values, so the public server needs read access to that prefix only, not
Dagster's database. This module is the readers' side and the stores; ``publishing`` writes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import dagster as dg

from taxi_assets.ml.serving import ServedDecision, read_pointer

POINTER = "current.json"
logger = logging.getLogger("taxi_assets.serving")


class ServingStore(Protocol):
    """Where the published decision lives: small reads and whole-object writes by name."""

    where: str

    def read(self, name: str) -> bytes | None: ...

    def write(self, name: str, data: bytes) -> None: ...


class LocalServingStore:
    """Files under a folder, each written to a temporary file renamed into place."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.where = str(self.folder)

    def read(self, name: str) -> bytes | None:
        try:
            return (self.folder / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        from taxi_assets.lib.io_managers import write_atomically

        write_atomically(self.folder / name, data)


class S3ServingStore:
    """Objects under s3://<bucket>/<prefix>/ (S3 replaces an object whole or not at all)."""

    def __init__(self, bucket: str, prefix: str, client: Any):
        self.bucket, self.prefix, self.client = bucket, prefix.strip("/"), client
        self.where = f"s3://{bucket}/{self.prefix}"
        self.denied_once = False

    def read(self, name: str) -> bytes | None:
        """The object, or None when there is none. A role that may list only this prefix (the
        inference role) gets AccessDenied, not NoSuchKey, for a missing key: None too, said once."""
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}")["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("AccessDenied", "403"):
                raise
            if not self.denied_once:
                self.denied_once = True
                logger.warning(
                    "%s/%s: access denied: not published yet, or this role may not read it", self.where, name
                )
            return None

    def write(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}", Body=data)


def serving_store(instance: dg.DagsterInstance | None = None) -> ServingStore:
    """S3 under TAXI_ENV=production (TAXI_S3_BUCKET, TAXI_SERVING_PREFIX); otherwise ``serving/``
    beside the instance's storage folder (the instance at DAGSTER_HOME unless one is given)."""
    from taxi_assets.lib.settings import ProductionConfigError, is_production

    if is_production():
        bucket = os.getenv("TAXI_S3_BUCKET")
        if not bucket:
            raise ProductionConfigError("TAXI_ENV=production needs TAXI_S3_BUCKET (the published model lives there)")
        from dagster_aws.s3 import S3Resource

        client = S3Resource(endpoint_url=os.getenv("AWS_ENDPOINT_URL"), region_name=os.getenv("AWS_REGION"))
        return S3ServingStore(bucket, os.getenv("TAXI_SERVING_PREFIX", "taxi_assets/serving"), client.get_client())
    instance = instance or dg.DagsterInstance.get()
    return LocalServingStore(Path(instance.storage_directory()).resolve().parent / "serving")


def read_published(store: ServingStore) -> tuple[ServedDecision, str] | None:
    """The published decision and its model key, or None before the first publication."""
    data = store.read(POINTER)
    if data is None:
        return None
    where = f"{store.where}/{POINTER}"
    try:
        document = json.loads(data)
    except ValueError as error:
        from taxi_assets.ml.serving import PointerError

        raise PointerError(f"{where}: not JSON ({error})") from None
    return read_pointer(document, where)


def load_published_value(store: ServingStore, key: str) -> Any:
    """The published decision's value (a ProductionModel) from its model files."""
    from taxi_assets.ml.value_files import load_value

    data = store.read(key)
    if data is None:
        raise FileNotFoundError(f"{store.where}/{key}: the published model's files are missing")
    return load_value(data, f"{store.where}/{key}")
