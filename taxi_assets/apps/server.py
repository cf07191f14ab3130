"""The online inference server: ``taxi-assets serve``.

``POST /predict`` with ``{"inputs": [{"PULocationID": .., "DOLocationID": .., "trip_distance": ..}]}``
returns ``{"predictions": [minutes, ...], "model": {"name", "partition", "version"}}``;
``GET /health`` says which model is loaded. Requests need ``Authorization: Bearer <token>`` with
the token from ``TAXI_API_TOKEN`` (compared in constant time). The server serves the production
model (the newest partition of the ``production_model`` asset) and switches to a new one without a
restart: a background task polls the Dagster instance, loads the new model beside the old one and
swaps a single reference, so requests already running finish on the model they started with.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taxi_assets.model_store import LoadedModel

logger = logging.getLogger("taxi_assets.serving")

MAX_BATCH = 50_000
MAX_BODY_BYTES = 8 * 1024 * 1024
MIN_TOKEN_CHARACTERS = 16
BODY_SHAPE = 'body must be a JSON object {"inputs": [{"PULocationID": .., "DOLocationID": .., "trip_distance": ..}]}'


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _predict_request():
    from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

    from taxi_assets.ml.trip_record import TripRecord

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inputs: list[TripRecord] = Field(min_length=1, max_length=MAX_BATCH)

    return TypeAdapter(PredictRequest)


_PREDICT_REQUEST = None


def parse_inputs(body: bytes):
    """Validate a ``{"inputs": [...]}`` body in one pass (pydantic's JSON parser, which stops at
    200 levels of nesting, so no body can exhaust the stack); BadRequest names the problem."""
    global _PREDICT_REQUEST
    from pydantic import ValidationError

    from taxi_assets.ml.trip_record import describe

    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(413, f"request body over {MAX_BODY_BYTES} bytes")
    if _PREDICT_REQUEST is None:
        _PREDICT_REQUEST = _predict_request()
    try:
        return _PREDICT_REQUEST.validate_json(body).inputs
    except ValidationError as error:
        problems = error.errors(include_url=False, include_input=False)
        first = problems[0]
        if first["type"] == "json_invalid":
            detail = str(first.get("ctx", {}).get("error", first["msg"]))
            hint = " (nested too deeply: a trip record is two levels down)" if "recursion limit" in detail else ""
            raise BadRequest(400, f"invalid JSON: {detail}{hint}") from None
        if first["loc"] == () and first["type"] in ("model_type", "dict_type", "model_attributes_type"):
            raise BadRequest(
                422,
                BODY_SHAPE,
            ) from None
        if any(problem["type"] == "too_long" and problem["loc"] == ("inputs",) for problem in problems):
            raise BadRequest(413, f'"inputs" has too many records; at most {MAX_BATCH} per request') from None
        if first["type"] == "too_short" and first["loc"] == ("inputs",):
            raise BadRequest(422, '"inputs" is empty') from None
        raise BadRequest(422, describe(error)) from None


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


def create_app(holder: ModelHolder, token: str, reload_interval: float = 5.0):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    expected = token.encode()

    def authorized(request: Request) -> bool:
        # RFC 7235: the scheme is case-insensitive ("bearer", "Bearer", "BEARER").
        scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), expected)

    def error(status: int, message: str) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": message}, status_code=status, headers=headers)

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

    async def predict(request: Request) -> Response:
        if not authorized(request):
            return error(401, "missing or wrong bearer token")
        model = holder.current
        if model is None:
            return error(503, "no production model is materialized yet")
        try:
            records = parse_inputs(await read_body(request))
            # Already validated: straight to the model's features.
            pairs = [record.pu_do for record in records]
            distances = [record.trip_distance for record in records]
            predictions = model.predictor.predict_pairs(pairs, distances)
        except BadRequest as bad:
            return error(bad.status, bad.message)
        except ValueError as bad:
            return error(422, str(bad))
        body = {"predictions": [round(float(value), 4) for value in predictions], "model": model.describe()}
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    async def health(request: Request) -> Response:
        model = holder.current
        if model is None:
            return JSONResponse({"status": "no model", "model": None}, status_code=503)
        return JSONResponse({"status": "ok", "model": model.describe()})

    async def watch():
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(reload_interval)
            try:
                # Loading unpickles the model: in a thread, so requests keep flowing meanwhile.
                await loop.run_in_executor(None, holder.refresh)
            except Exception:  # a bad new model must not take the server down
                logger.exception("could not load the new production model; keeping the current one")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(watch()) if reload_interval > 0 else None
        yield
        if task:
            task.cancel()

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health)], lifespan=lifespan)


def serve(host: str = "127.0.0.1", port: int = 8000, reload_interval: float = 5.0) -> int:
    import dagster as dg
    import uvicorn

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
    from taxi_assets.model_store import load_production_model

    holder = ModelHolder(instance, load_production_model)
    holder.refresh()
    if holder.current is None:
        logger.warning("no production model yet; /predict answers 503 until one is materialized")
    uvicorn.run(create_app(holder, token, reload_interval), host=host, port=port, log_level="warning", access_log=False)
    return 0
