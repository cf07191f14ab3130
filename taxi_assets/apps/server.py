"""The online inference server: ``taxi-assets serve``.

Two protocols over the same model:

* MLflow's scoring protocol: ``POST /invocations`` with ``{"dataframe_records": [...]}``,
  ``{"dataframe_split": {"columns": [...], "data": [[...]]}}``, ``{"inputs": ...}`` or its alias
  ``{"instances": ...}`` answers ``{"predictions": [minutes, ...]}`` as ``mlflow models serve``
  does (the same predictions as ``mlflow.pyfunc.load_model`` of the serving version); ``GET /ping``
  and ``GET /version``.
* This project's: ``POST /predict`` with ``{"inputs": [trip, ...]}`` answers
  ``{"predictions": [...], "model": {"name", "partition", "version", "run_id"}}``; ``GET /health``.

Predicting needs ``Authorization: Bearer <token>`` with the token from ``TAXI_API_TOKEN``
(compared in constant time), unless the server runs with ``--no-auth``, which it allows on a
loopback address only. Every trip is checked against the one trip schema (TripRecord). The server
serves the published production decision (``serving_pointer``: a small pointer beside the
instance, or under a prefix of the bucket in production; never Dagster's database) and switches
to a new one without a restart: a background task polls the pointer, loads the new model beside
the old one and swaps a single reference, so requests already running finish on the model they
started with.

The application is plain ASGI: one table of routes (``ROUTES``) of module-level handlers. A
one-trip request is most of the traffic, and at that size a framework's request and response
objects cost more than validating and predicting the trip, so the handlers read the few headers
they need and answer with bytes.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import ValidationError
from pydantic_core import from_json

from taxi_assets.ml.trip_record import TripError, describe, plain_pairs, records_from_columns, validate_records

if TYPE_CHECKING:
    from taxi_assets.lib.model_store import LoadedModel

logger = logging.getLogger("taxi_assets.server")

MAX_BATCH = 50_000
MAX_BODY_BYTES = 8 * 1024 * 1024
MIN_TOKEN_CHARACTERS = 16
BODY_TIMEOUT_SECONDS = 30.0
# A body above this many bytes (a few hundred trips) is parsed and scored in the scoring threads, so
# the event loop keeps answering /ping and other requests meanwhile; below it, a thread hop would
# cost more than the work.
INLINE_BODY_BYTES = 16 * 1024
RELOAD_INTERVAL_SECONDS = 1.0  # how often the server looks for a new production decision
FORMATS = ("dataframe_records", "dataframe_split", "inputs", "instances")
PREDICT_SHAPE = 'body must be a JSON object {"inputs": [{"PULocationID": .., "DOLocationID": .., "trip_distance": ..}]}'
INVOCATION_SHAPE = (
    'body must be a JSON object with one of "dataframe_records" (a list of records), "dataframe_split" '
    '({"columns": [...], "data": [[...]]}), "inputs" or its alias "instances" (a list of records or a dict of '
    "columns)"
)
NO_MODEL = (
    "no production model is published yet; retrain a month first, e.g. `taxi-assets materialize --partition "
    "2024-02 --select raw_trips,cleaned_trips,training_set,sklearn_models,xgboost_model,production_model`; this "
    "server picks it up without a restart"
)
LOOPBACK_ONLY = "--no-auth serves predictions to anyone who can connect, so it binds only a loopback address"

Trips = tuple[list[str], list[float]]  # validated trips: "<PU>_<DO>" pairs and miles


class BadRequest(Exception):
    """A request refused with ``status`` and a message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The client closed the connection before sending its whole body: nobody to answer."""


# --- Request bodies: plain functions of bytes -----------------------------------------------------


@cache
def adapters():
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
        inputs: list[dict[str, Any]] | dict[str, list[Any]] | None = None
        instances: list[dict[str, Any]] | dict[str, list[Any]] | None = None  # MLflow's alias of "inputs"
        params: dict[str, Any] | None = None

    return TypeAdapter(PredictRequest), TypeAdapter(InvocationRequest)


def _refused(error: ValidationError, shape: str, key: str) -> BadRequest:
    """A ValidationError of a whole body as the 4xx that names the problem."""
    problems = error.errors(include_url=False, include_input=False)
    first = problems[0]
    if first["type"] == "json_invalid":
        detail = str(first.get("ctx", {}).get("error", first["msg"]))
        if detail.startswith("EOF while parsing a value at line 1 column 0"):
            return BadRequest(400, f"invalid JSON: the body is empty; {shape}")
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
    if first["type"] == "extra_forbidden" and len(first["loc"]) == 1:
        return BadRequest(422, f"{describe(error)}; {shape}")
    if len(first["loc"]) >= 2 and first["loc"][0] in ("inputs", "instances") and "[" in str(first["loc"][1]):
        # A union's branch name ("list[dict[str,any]]") means neither records nor columns.
        return BadRequest(422, f'"{first["loc"][0]}" must be a list of records or a dict of columns (lists)')
    return BadRequest(422, describe(error))


def _quick_json(body: bytes) -> Any:
    """The body as Python values, or None when it is not valid JSON (the full parse then says why)."""
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(413, f"request body over {MAX_BODY_BYTES} bytes")
    try:
        return from_json(body)  # the parser pydantic validates with: same numbers, same limits
    except ValueError:
        return None


def parse_inputs(body: bytes) -> Trips:
    """The trips of a ``/predict`` body, ``{"inputs": [trip, ...]}``; BadRequest names the problem.

    Plain bodies are checked once, in plain Python (:func:`plain_pairs`); anything else goes
    through the pydantic schema, which accepts it with the same values or says what is wrong.
    """
    document = _quick_json(body)
    if type(document) is dict and len(document) == 1:
        records = document.get("inputs")
        if type(records) is list and 0 < len(records) <= MAX_BATCH:
            trips = plain_pairs(records)
            if trips is not None:
                return trips
    try:
        records = adapters()[0].validate_json(body).inputs
    except ValidationError as error:
        raise _refused(error, PREDICT_SHAPE, "inputs") from None
    return [record.pu_do for record in records], [record.trip_distance for record in records]


def parse_invocation(body: bytes) -> Trips:
    """The trips of an MLflow scoring request (``/invocations``); BadRequest names the problem.
    As :func:`parse_inputs`: plain bodies in one pass, the rest through the schema."""
    document = _quick_json(body)
    if type(document) is dict:
        records = _plain_records(document)
        if records is not None and 0 < len(records) <= MAX_BATCH:
            trips = plain_pairs(records)
            if trips is not None:
                return trips
    return _validated_invocation(body)


def _plain_records(document: dict) -> list | None:
    """The records of a plain scoring request: one format holding a list (or dataframe_split's
    string columns and rows of their length), maybe ``params`` as an object; else None."""
    params = document.get("params")
    keys = [key for key in document if key != "params"]
    if (params is not None and type(params) is not dict) or len(keys) != 1:
        return None
    value = document[keys[0]]
    if keys[0] in ("dataframe_records", "inputs", "instances"):
        return value if type(value) is list else None
    if keys[0] != "dataframe_split" or type(value) is not dict or not set(value) <= {"columns", "data", "index"}:
        return None
    columns, rows, index = value.get("columns"), value.get("data"), value.get("index")
    if type(columns) is not list or type(rows) is not list or not (index is None or type(index) is list):
        return None
    if any(type(name) is not str for name in columns):
        return None
    if any(type(row) is not list or len(row) != len(columns) for row in rows):
        return None
    return [dict(zip(columns, row, strict=True)) for row in rows]


def _validated_invocation(body: bytes) -> Trips:
    """An MLflow scoring request through the schema: the trips, or the BadRequest naming the problem."""
    try:
        request = adapters()[1].validate_json(body)
    except ValidationError as error:
        raise _refused(error, INVOCATION_SHAPE, "dataframe_records") from None
    given = [key for key in FORMATS if getattr(request, key) is not None]
    if len(given) != 1:
        raise BadRequest(422, INVOCATION_SHAPE + (f"; got {', '.join(given)}" if given else ""))
    key = given[0]
    try:
        if key == "dataframe_split":
            split = request.dataframe_split
            assert split is not None
            records = [dict(zip(split.columns, row, strict=True)) for row in split.data]
        elif isinstance(getattr(request, key), dict):
            records = records_from_columns(getattr(request, key))
        else:
            records = getattr(request, key)
        if not records:
            raise BadRequest(422, f'"{key}" is empty')
        if len(records) > MAX_BATCH:
            raise BadRequest(413, f'"{key}" has too many records; at most {MAX_BATCH} per request')
        valid = validate_records(records, prefix=key)
    except ValueError as error:  # TripError, or a row of dataframe_split with the wrong length
        message = str(error) if isinstance(error, TripError) else f"{key}: every row needs one value per column"
        raise BadRequest(422, message) from None
    return [record.pu_do for record in valid], [record.trip_distance for record in valid]


# --- Answers ----------------------------------------------------------------------------------------

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
_compact = json.JSONEncoder(separators=(",", ":")).encode


class Reply(NamedTuple):
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()


def _challenge(status: int) -> tuple[tuple[bytes, bytes], ...]:
    """401 asks for the bearer token; 408 closes the connection of a client that stopped sending.
    (A 413 leaves it open: most clients send the whole body before they read the answer, and a
    closed connection would reach them as a reset instead of the message; uvicorn discards the
    rest of the body.)"""
    if status == 401:
        return ((b"www-authenticate", b"Bearer"),)
    if status == 408:
        return ((b"connection", b"close"),)
    return ()


def taxi_error(status: int, message: str) -> Reply:
    """This project's error shape: ``{"error": message}``."""
    return Reply(status, _compact({"error": message}).encode(), headers=_challenge(status))


MLFLOW_ERROR_CODES = {
    401: "UNAUTHENTICATED",
    413: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    503: "TEMPORARILY_UNAVAILABLE",
}


def mlflow_error(status: int, message: str) -> Reply:
    """MLflow's scoring server's error shape: ``{"error_code": ..., "message": ...}``."""
    body = {"error_code": MLFLOW_ERROR_CODES.get(status, "BAD_REQUEST"), "message": message}
    return Reply(status, _compact(body).encode(), headers=_challenge(status))


class Served(NamedTuple):
    """The model that serves and its ``"model"`` answer, serialized once."""

    model: LoadedModel
    described: bytes


class ModelHolder:
    """The model being served, replaced atomically when a newer production model appears."""

    def __init__(self, store, loader):
        self.store = store  # where the decision that serves is published (serving_pointer)
        self.loader = loader  # (store, known storage id or None) -> LoadedModel | None
        self.served: Served | None = None

    @property
    def current(self) -> LoadedModel | None:
        return self.served.model if self.served else None

    def refresh(self) -> bool:
        fresh = self.loader(self.store, self.served.model.storage_id if self.served else None)
        if fresh is None:
            return False
        # One reference swap: in-flight requests keep the old object (model and description together).
        self.served = Served(fresh, _compact(fresh.describe()).encode())
        version = f" v{fresh.version}" if fresh.version else ""
        logger.info(
            "serving %s%s (trained for %s, chosen for %s), published at %s",
            fresh.name, version, fresh.partition, fresh.decided_for, getattr(self.store, "where", self.store),
        )  # fmt: skip
        return True


# --- Handlers: (app, lower-cased headers, ASGI receive) -> Reply; BadRequest for a refusal ---------


async def predict(app: ServingApp, headers: dict[bytes, bytes], receive) -> Reply:
    """``POST /predict``: minutes rounded to 4 decimals, and which model answered."""
    app.check_token(headers)
    served = app.holder.served  # read once: this request's model, whatever a reload does meanwhile
    if served is None:
        raise BadRequest(503, NO_MODEL)
    body = await app.read_body(headers, receive)

    def score() -> bytes:
        pairs, miles = parse_inputs(body)
        return _compact([round(value, 4) for value in served.model.predictor.minutes(pairs, miles)]).encode()

    minutes = await app.scored(len(body), score)
    return Reply(200, b'{"predictions":' + minutes + b',"model":' + served.described + b"}")


async def invocations(app: ServingApp, headers: dict[bytes, bytes], receive) -> Reply:
    """``POST /invocations``: MLflow's scoring protocol, unrounded minutes as the pyfunc answers
    (a compiled table returns exactly the booster's float32 values)."""
    app.check_token(headers)
    content_type = headers.get(b"content-type", JSON).split(b";")[0].strip().lower()
    if content_type != JSON:
        shown = content_type[:60].decode("latin-1")
        raise BadRequest(415, f"content type {shown!r} is not supported; send application/json")
    served = app.holder.served
    if served is None:
        raise BadRequest(503, NO_MODEL)
    body = await app.read_body(headers, receive)

    def score() -> bytes:
        pairs, miles = parse_invocation(body)
        return _compact(served.model.predictor.minutes(pairs, miles)).encode()

    return Reply(200, b'{"predictions":' + await app.scored(len(body), score) + b"}")


async def health(app: ServingApp, headers: dict[bytes, bytes], receive) -> Reply:
    """``GET /health``: 200 with the model that serves, 503 (saying how to make one) before there is one."""
    model = app.holder.current
    if model is None:
        return Reply(503, _compact({"status": "no model", "model": None, "how": NO_MODEL}).encode())
    return Reply(
        200,
        _compact({"status": "ok", "model": model.describe(), "scoring": app.scoring, "scored": app.finished}).encode(),
    )


async def ping(app: ServingApp, headers: dict[bytes, bytes], receive) -> Reply:
    """``GET /ping``: MLflow's readiness probe, 200 once a model serves."""
    return Reply(200 if app.holder.served is not None else 503, b"\n", TEXT)


async def version(app: ServingApp, headers: dict[bytes, bytes], receive) -> Reply:
    """``GET /version``: this package's version, as MLflow's server gives its own."""
    return Reply(200, package_version().encode(), TEXT)


@cache
def package_version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("taxi_assets")
    except PackageNotFoundError:
        return "unknown"


Handler = Callable[["ServingApp", dict[bytes, bytes], Any], Awaitable[Reply]]


@dataclass(frozen=True)
class Route:
    method: str  # a GET route answers HEAD too
    handler: Handler
    refuse: Callable[[int, str], Reply]  # how this route's protocol says no


# Everything the server serves. The load balancer's listener rules (deploy/terraform) send exactly
# these paths to the inference service; test_deploy.py holds them to this table.
ROUTES: dict[str, Route] = {
    "/invocations": Route("POST", invocations, mlflow_error),
    "/ping": Route("GET", ping, mlflow_error),
    "/version": Route("GET", version, mlflow_error),
    "/predict": Route("POST", predict, taxi_error),
    "/health": Route("GET", health, taxi_error),
}


# --- The ASGI application -------------------------------------------------------------------------


class BodyDeadlines:
    """Requests whose body is still arriving, and when it must have arrived. One sweep a second
    cancels the reads that are late, so a client that stops mid-body (or after its headers) gets
    a 408 and frees its task; a request costs a dictionary entry, not a timer."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.pending: dict[asyncio.Task, float] = {}
        self.expired: set[asyncio.Task] = set()

    async def sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, max(0.05, self.seconds / 4)))
            now = time.monotonic()
            for task, deadline in list(self.pending.items()):
                if now > deadline:
                    del self.pending[task]
                    self.expired.add(task)
                    task.cancel()


class ServingApp:
    """The ASGI application: ``ROUTES``, the token check, bounded body reads, and a lifespan that
    watches for new models (every ``reload_interval`` s; 0: never) and sweeps late bodies."""

    def __init__(self, holder: ModelHolder, token: str | None, reload_interval: float, body_timeout: float):
        self.holder = holder
        self.expected = token.encode() if token is not None else None  # None: --no-auth
        self.reload_interval = reload_interval
        self.deadlines = BodyDeadlines(body_timeout)
        self.routes = ROUTES
        # Large requests are scored here, one per core at a time, off the event loop.
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="scoring")
        self.scoring = 0  # large requests being parsed and scored in the pool now
        self.finished = 0  # large requests the pool has finished

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            reply = await self.answer(scope, receive)
            if reply is not None:
                headers = [(b"content-type", reply.content_type), (b"content-length", b"%d" % len(reply.body))]
                await send(
                    {"type": "http.response.start", "status": reply.status, "headers": headers + [*reply.headers]}
                )
                await send({"type": "http.response.body", "body": reply.body})
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        else:
            await refuse_websocket(scope, send)

    async def answer(self, scope, receive) -> Reply | None:
        """The route's reply; None when the client left before its body arrived."""
        path, method = scope["path"], scope["method"]
        route = self.routes.get(path)
        if route is None:
            known = ", ".join(f"{r.method} {p}" for p, r in self.routes.items())
            return taxi_error(404, f"no such path {path[:100]!r}; this server serves {known}")
        if method != route.method and not (method == "HEAD" and route.method == "GET"):
            reply = route.refuse(405, f"{path} takes {route.method}, not {method[:20]}")
            return reply._replace(headers=((b"allow", route.method.encode()),))
        try:
            return await route.handler(self, dict(scope["headers"]), receive)
        except BadRequest as bad:
            return route.refuse(bad.status, bad.message)
        except ClientGone:
            return None
        except Exception:  # a bug, not the client's bytes: logged, and answered in the protocol's shape
            logger.exception("%s %s failed", method, path)
            return route.refuse(500, "internal error; the server's log has the details")

    async def scored(self, size: int, score: Callable[[], bytes]) -> bytes:
        """``score()``: in this task for a body up to INLINE_BODY_BYTES, else in the scoring pool,
        so that one large request never holds up the others (a health check included)."""
        if size <= INLINE_BODY_BYTES:
            return score()
        self.scoring += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, score)
        finally:
            self.scoring -= 1
            self.finished += 1

    def check_token(self, headers: dict[bytes, bytes]) -> None:
        """RFC 7235: the scheme is case-insensitive; the token is compared in constant time."""
        if self.expected is None:
            return
        scheme, _, credentials = headers.get(b"authorization", b"").strip().partition(b" ")
        if not (scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.expected)):
            raise BadRequest(401, "missing or wrong bearer token")

    async def read_body(self, headers: dict[bytes, bytes], receive) -> bytes:
        """The body: refused over MAX_BODY_BYTES before reading it all (a chunked upload has no
        Content-Length to check up front), or when it has not all arrived within the deadline."""
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise BadRequest(413, f"request body over {MAX_BODY_BYTES} bytes")
        task = asyncio.current_task()
        assert task is not None
        self.deadlines.pending[task] = time.monotonic() + self.deadlines.seconds
        try:
            return await _receive_body(receive)
        except asyncio.CancelledError:
            if task not in self.deadlines.expired:
                raise  # the server is stopping
            self.deadlines.expired.discard(task)
            task.uncancel()
            raise BadRequest(408, f"request body not received within {self.deadlines.seconds:g} s") from None
        finally:
            self.deadlines.pending.pop(task, None)

    async def lifespan(self, receive, send) -> None:
        tasks: list[asyncio.Task] = []
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                tasks.append(asyncio.create_task(self.deadlines.sweep()))
                if self.reload_interval > 0:
                    tasks.append(asyncio.create_task(self.watch()))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in tasks:
                    task.cancel()
                self.pool.shutdown(wait=False, cancel_futures=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.reload_interval)
            try:
                # Loading reads the model's files: in a thread, so requests keep flowing meanwhile.
                await loop.run_in_executor(None, self.holder.refresh)
            except Exception:  # a bad new model must not take the server down
                logger.exception("could not load the new production model; keeping the current one")


async def refuse_websocket(scope, send) -> None:
    """A WebSocket handshake gets a 403 that says this server has no WebSocket endpoint (a bare
    403 where the server cannot send a body)."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close"})
        return
    reply = taxi_error(403, f"no WebSocket here; this server serves HTTP: {', '.join(ROUTES)}")
    headers = [(b"content-type", JSON), (b"content-length", b"%d" % len(reply.body))]
    await send({"type": "websocket.http.response.start", "status": 403, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": reply.body})


async def _receive_body(receive) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    if not message.get("more_body"):
        return message.get("body", b"")  # the usual case: the whole body in one message
    chunks, size = [message.get("body", b"")], len(message.get("body", b""))
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_BODY_BYTES:
            raise BadRequest(413, f"request body over {MAX_BODY_BYTES} bytes")
        if not message.get("more_body"):
            return b"".join(chunks)


def create_app(
    holder: ModelHolder,
    token: str | None,
    reload_interval: float = RELOAD_INTERVAL_SECONDS,
    body_timeout: float = BODY_TIMEOUT_SECONDS,
) -> ServingApp:
    """The ASGI application serving ``holder``'s model; ``token`` None serves without one (--no-auth)."""
    return ServingApp(holder, token, reload_interval, body_timeout)


# --- The process ------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_token(no_auth: bool, host: str) -> str | None:
    """The bearer token from TAXI_API_TOKEN; None with ``no_auth``, which only a loopback host may use."""
    if no_auth:
        if not is_loopback(host):
            raise SystemExit(f"{LOOPBACK_ONLY} (127.0.0.1, ::1, localhost), not --host {host!r}")
        return None
    token = os.environ.get("TAXI_API_TOKEN", "").strip()
    if not token:
        raise SystemExit("TAXI_API_TOKEN is not set: the server needs a bearer token to check requests against")
    if len(token) < MIN_TOKEN_CHARACTERS:
        raise SystemExit(
            f"TAXI_API_TOKEN has {len(token)} characters; use at least {MIN_TOKEN_CHARACTERS}, e.g. "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token


def listening_socket(host: str, port: int):
    """The server's socket, bound before the server starts. With port 0 the system picks a free
    port: callers (tests, benchmarks, a supervisor) read it from the line this server prints or
    from ``--port-file`` instead of guessing a free port and racing other processes for it."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
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


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    reload_interval: float = RELOAD_INTERVAL_SECONDS,
    port_file: str | None = None,
    no_auth: bool = False,
    body_timeout: float = BODY_TIMEOUT_SECONDS,
) -> int:
    import signal

    import uvicorn

    from taxi_assets.lib.model_store import load_production_model
    from taxi_assets.lib.serving_pointer import serving_store

    token = api_token(no_auth, host)  # first: a refused start does no work
    # The server's own lines at INFO (what it serves, from where); the libraries' (MLflow's store
    # migrations, botocore) only from WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("taxi_assets").setLevel(logging.INFO)
    if no_auth and os.environ.get("TAXI_API_TOKEN"):
        logger.warning("--no-auth: TAXI_API_TOKEN is set but not checked")
    holder = ModelHolder(serving_store(), load_production_model)
    try:
        holder.refresh()
    except Exception:  # a bad pointer or missing files: start, answer 503, and keep looking
        logger.exception("could not load the published production model from %s", holder.store.where)
    if holder.current is None:
        logger.warning(NO_MODEL)
    # Loading through Dagster leaves SIGTERM raising KeyboardInterrupt; uvicorn raises the signal
    # again after its graceful shutdown, so every stop (ECS stops tasks with SIGTERM) ended in a traceback.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sock = listening_socket(host, port)
    bound = sock.getsockname()[1]
    if port_file:
        _write_port_file(port_file, bound)
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    print(f"taxi-assets serve: listening on http://{shown}:{bound}{' (no auth)' if no_auth else ''}", flush=True)
    app = create_app(holder, token, reload_interval, body_timeout)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
    return 0
