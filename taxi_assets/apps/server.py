"""The online inference server: ``taxi-assets serve``.

Two protocols over the same model:

* MLflow's scoring protocol: ``POST /invocations`` with ``{"dataframe_records": [...]}``,
  ``{"dataframe_split": {"columns": [...], "data": [[...]]}}`` or ``{"inputs": ...}`` answers
  ``{"predictions": [minutes, ...]}`` as ``mlflow models serve`` does (the same predictions as
  ``mlflow.pyfunc.load_model`` of the serving version); ``GET /ping`` and ``GET /version``.
* This project's: ``POST /predict`` with ``{"inputs": [trip, ...]}`` answers
  ``{"predictions": [...], "model": {"name", "partition", "version", "run_id"}}``; ``GET /health``.

Predicting needs ``Authorization: Bearer <token>`` with the token from ``TAXI_API_TOKEN``
(compared in constant time). Every trip is checked against the one trip schema (TripRecord). The
server serves the newest month's production decision and switches to a new one without a restart:
a background task polls the Dagster instance, loads the new model beside the old one and swaps a
single reference, so requests already running finish on the model they started with.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taxi_assets.model_store import LoadedModel

logger = logging.getLogger("taxi_assets.server")

MAX_BATCH = 50_000
MAX_BODY_BYTES = 8 * 1024 * 1024
MIN_TOKEN_CHARACTERS = 16
PREDICT_SHAPE = 'body must be a JSON object {"inputs": [{"PULocationID": .., "DOLocationID": .., "trip_distance": ..}]}'
INVOCATION_SHAPE = (
    'body must be a JSON object with one of "dataframe_records" (a list of records), "dataframe_split" '
    '({"columns": [...], "data": [[...]]}) or "inputs" (a list of records or a dict of columns)'
)
NO_MODEL = (
    "no production model is materialized yet; retrain a month first, e.g. `taxi-assets materialize --partition "
    "2024-02 --select raw_trips,cleaned_trips,training_set,sklearn_models,xgboost_model,production_model`; this "
    "server picks it up without a restart"
)


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _adapters():
    """The request schemas, built once: pydantic parses and validates a body in one pass, and its
    JSON parser stops at 200 levels of nesting, so no body can exhaust the stack."""
    from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

    from taxi_assets.ml.trip_record import TripRecord

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inputs: list[TripRecord] = Field(min_length=1, max_length=MAX_BATCH)

    class DataframeSplit(BaseModel):
        model_config = ConfigDict(extra="forbid")
        columns: list[str]
        data: list[list[Any]] = Field(max_length=MAX_BATCH)
        index: list[Any] | None = None

    class InvocationRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        dataframe_records: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_BATCH)
        dataframe_split: DataframeSplit | None = None
        inputs: list[dict[str, Any]] | dict[str, list[Any]] | None = Field(default=None)
        params: dict[str, Any] | None = None

    return TypeAdapter(PredictRequest), TypeAdapter(InvocationRequest)


_ADAPTERS = None


def adapters():
    global _ADAPTERS
    if _ADAPTERS is None:
        _ADAPTERS = _adapters()
    return _ADAPTERS


def _refused(error, shape: str, key: str) -> BadRequest:
    """A ValidationError of a whole body as the 4xx that names the problem."""
    from taxi_assets.ml.trip_record import describe

    problems = error.errors(include_url=False, include_input=False)
    first = problems[0]
    if first["type"] == "json_invalid":
        detail = str(first.get("ctx", {}).get("error", first["msg"]))
        hint = " (nested too deeply: a trip record is two levels down)" if "recursion limit" in detail else ""
        return BadRequest(400, f"invalid JSON: {detail}{hint}")
    if first["loc"] == () and first["type"] in ("model_type", "dict_type", "model_attributes_type"):
        return BadRequest(422, shape)
    too_long = [problem for problem in problems if problem["type"] == "too_long"]
    if too_long:
        where = ".".join(str(part) for part in too_long[0]["loc"]) or key
        return BadRequest(413, f'"{where}" has too many records; at most {MAX_BATCH} per request')
    if first["type"] == "too_short" and first["loc"] == (key,):
        return BadRequest(422, f'"{key}" is empty')
    return BadRequest(422, describe(error))


def _size_checked(body: bytes) -> bytes:
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(413, f"request body over {MAX_BODY_BYTES} bytes")
    return body


def parse_inputs(body: bytes):
    """The trips of a ``{"inputs": [...]}`` body (``/predict``); BadRequest names the problem."""
    from pydantic import ValidationError

    try:
        return adapters()[0].validate_json(_size_checked(body)).inputs
    except ValidationError as error:
        raise _refused(error, PREDICT_SHAPE, "inputs") from None


def parse_invocation(body: bytes):
    """The trips of an MLflow scoring request (``/invocations``); BadRequest names the problem."""
    from pydantic import ValidationError

    from taxi_assets.ml.trip_record import TripError, records_from_columns, validate_records

    try:
        request = adapters()[1].validate_json(_size_checked(body))
    except ValidationError as error:
        raise _refused(error, INVOCATION_SHAPE, "dataframe_records") from None
    given = [key for key in ("dataframe_records", "dataframe_split", "inputs") if getattr(request, key) is not None]
    if len(given) != 1:
        raise BadRequest(422, INVOCATION_SHAPE + (f"; got {', '.join(given)}" if given else ""))
    key = given[0]
    try:
        if key == "dataframe_split":
            split = request.dataframe_split
            assert split is not None
            records = [dict(zip(split.columns, row, strict=True)) for row in split.data]
        elif isinstance(request.inputs, dict):
            records = records_from_columns(request.inputs)
        else:
            records = getattr(request, key)
        if not records:
            raise BadRequest(422, f'"{key}" is empty')
        if len(records) > MAX_BATCH:
            raise BadRequest(413, f'"{key}" has too many records; at most {MAX_BATCH} per request')
        return validate_records(records, prefix=key)
    except ValueError as error:  # TripError, or a row of dataframe_split with the wrong length
        message = str(error) if isinstance(error, TripError) else f"{key}: every row needs one value per column"
        raise BadRequest(422, message) from None


class ModelHolder:
    """The model being served, replaced atomically when a newer production model appears."""

    def __init__(self, instance, loader):
        self.instance = instance
        self.loader = loader  # (instance, known storage id or None) -> LoadedModel | None
        self.current: LoadedModel | None = None

    def refresh(self) -> bool:
        fresh = self.loader(self.instance, self.current.storage_id if self.current else None)
        if fresh is None:
            return False
        self.current = fresh  # one reference swap: in-flight requests keep the old object
        logger.info("serving %s", fresh.describe())
        return True


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("taxi_assets")
    except PackageNotFoundError:
        return "unknown"


def create_app(holder: ModelHolder, token: str, reload_interval: float = 5.0):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    expected = token.encode()

    def authorized(request: Request) -> bool:
        # RFC 7235: the scheme is case-insensitive ("bearer", "Bearer", "BEARER").
        scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), expected)

    def error(status: int, message: str) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def mlflow_error(status: int, message: str) -> Response:
        # MLflow's scoring server answers errors as {"error_code": ..., "message": ...}.
        code = {
            401: "UNAUTHENTICATED",
            413: "REQUEST_LIMIT_EXCEEDED",
            415: "BAD_REQUEST",
            503: "TEMPORARILY_UNAVAILABLE",
        }
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        body = {"error_code": code.get(status, "BAD_REQUEST"), "message": message}
        return JSONResponse(body, status_code=status, headers=headers)

    async def read_body(request: Request) -> bytes:
        """The body, refusing more than MAX_BODY_BYTES before reading it all (chunked uploads
        have no Content-Length to check up front)."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise BadRequest(413, f"request body over {MAX_BODY_BYTES} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise BadRequest(413, f"request body over {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def json_response(body: dict) -> Response:
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    async def predict(request: Request) -> Response:
        if not authorized(request):
            return error(401, "missing or wrong bearer token")
        model = holder.current
        if model is None:
            return error(503, NO_MODEL)
        try:
            records = parse_inputs(await read_body(request))
        except BadRequest as bad:
            return error(bad.status, bad.message)
        predictions = model.predictor.predict_records(records)
        return json_response(
            {"predictions": [round(float(value), 4) for value in predictions], "model": model.describe()}
        )

    async def invocations(request: Request) -> Response:
        if not authorized(request):
            return mlflow_error(401, "missing or wrong bearer token")
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if content_type != "application/json":
            return mlflow_error(415, f"content type {content_type!r} is not supported; send application/json")
        model = holder.current
        if model is None:
            return mlflow_error(503, NO_MODEL)
        try:
            records = parse_invocation(await read_body(request))
        except BadRequest as bad:
            return mlflow_error(bad.status, bad.message)
        # Unrounded, as MLflow's pyfunc of the same version answers (a compiled table returns
        # exactly the booster's float32 values).
        return json_response({"predictions": [float(value) for value in model.predictor.predict_records(records)]})

    async def health(request: Request) -> Response:
        model = holder.current
        if model is None:
            return JSONResponse({"status": "no model", "model": None, "how": NO_MODEL}, status_code=503)
        return JSONResponse({"status": "ok", "model": model.describe()})

    async def ping(request: Request) -> Response:
        return PlainTextResponse("\n", status_code=200 if holder.current is not None else 503)

    async def version(request: Request) -> Response:
        return PlainTextResponse(package_version())

    async def watch():
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(reload_interval)
            try:
                # Loading reads the model's files: in a thread, so requests keep flowing meanwhile.
                await loop.run_in_executor(None, holder.refresh)
            except Exception:  # a bad new model must not take the server down
                logger.exception("could not load the new production model; keeping the current one")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(watch()) if reload_interval > 0 else None
        yield
        if task:
            task.cancel()

    routes = [
        Route("/invocations", invocations, methods=["POST"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def listening_socket(host: str, port: int):
    """The server's socket, bound before the server starts. With port 0 the system picks a free
    port: callers (tests, benchmarks, a supervisor) read it from the line this server prints or
    from ``--port-file`` instead of guessing a free port and racing other processes for it."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise SystemExit(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return sock


def _write_port_file(path: str, port: int) -> None:
    """The bound port, written whole (a reader never sees a partial number)."""
    target = os.path.abspath(path)
    temporary = f"{target}.{os.getpid()}.tmp"
    with open(temporary, "w") as file:
        file.write(f"{port}\n")
    os.replace(temporary, target)


def serve(host: str = "127.0.0.1", port: int = 8000, reload_interval: float = 5.0, port_file: str | None = None) -> int:
    import dagster as dg
    import uvicorn

    from taxi_assets.model_store import load_production_model

    token = os.environ.get("TAXI_API_TOKEN", "").strip()
    if not token:
        raise SystemExit("TAXI_API_TOKEN is not set: the server needs a bearer token to check requests against")
    if len(token) < MIN_TOKEN_CHARACTERS:
        raise SystemExit(
            f"TAXI_API_TOKEN has {len(token)} characters; use at least {MIN_TOKEN_CHARACTERS}, e.g. "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    instance = dg.DagsterInstance.get()
    holder = ModelHolder(instance, load_production_model)
    holder.refresh()
    if holder.current is None:
        logger.warning(NO_MODEL)
    sock = listening_socket(host, port)
    bound = sock.getsockname()[1]
    if port_file:
        _write_port_file(port_file, bound)
    print(f"taxi-assets serve: listening on http://{host}:{bound}", flush=True)
    config = uvicorn.Config(create_app(holder, token, reload_interval), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
