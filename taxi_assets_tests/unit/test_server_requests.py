"""The inference server's request handling, in-process: the ASGI application called directly (no
socket: generated bodies run hundreds a second this way), with a real model and a real lookup table.
The same server as a process, over real HTTP, is in integration/test_serving.py; thousands of
hostile requests over sockets in benchmarks/bench_fuzz.py.

The property tests use Hypothesis with a fixed seed (``derandomize=True``) and no example database,
so every run tries the same bodies."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taxi_assets.apps import server
from taxi_assets.lib.model_store import LoadedModel
from taxi_assets.ml.predictor import DistanceLookup, TripDurationPredictor
from taxi_assets.ml.trip_record import FIELDS, TripError, plain_pairs, validate_records

TOKEN = "unit-test-token-0123456789"
TRIP = {"PULocationID": 236, "DOLocationID": 239, "trip_distance": 1.98}
PROPERTY = settings(
    derandomize=True,  # the same examples on every run
    database=None,
    deadline=None,  # a busy machine is slow, not wrong
    max_examples=400,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def lookup_predictor() -> TripDurationPredictor:
    """An XGBoost-shaped predictor served from a lookup table: 6 zone pairs (and the unseen row)
    over 5 distance thresholds, minutes a smooth function of both."""
    pairs = [f"{pu}_{do}" for pu in (65, 236) for do in (170, 239, 1)]
    thresholds = np.array([0.5, 1.0, 1.98, 6.54, 20.0], dtype=np.float32)
    table = np.add.outer(np.arange(len(pairs) + 1) * 0.37, np.arange(len(thresholds) + 1) * 2.5) + 4.0
    lookup = DistanceLookup({pair: row for row, pair in enumerate(pairs)}, thresholds, table.astype(np.float32))
    return TripDurationPredictor(name="xgboost", kind="xgboost", model=None, vectorizer=None, lookup=lookup)


def serving_app(token: str | None = TOKEN, body_timeout: float = 30.0) -> server.ServingApp:
    model = LoadedModel(lookup_predictor(), "xgboost", "2024-02", "2024-02", "1", storage_id=1, run_id="run")
    holder = server.ModelHolder(None, lambda instance, known: model if known is None else None)
    holder.refresh()
    return server.create_app(holder, token, reload_interval=0, body_timeout=body_timeout)


def call(app, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, receive=None):
    """One request through the ASGI application: (status, headers, body bytes), or None when it
    sent nothing."""
    if headers is None:
        headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(name.lower().encode(), value.encode("latin-1")) for name, value in headers.items()],
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def whole_body():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive or whole_body, send))
    if not sent:
        return None
    start, answer = sent
    return start["status"], dict(start["headers"]), answer["body"]


def message_of(status: int, body: bytes) -> str:
    answer = json.loads(body)
    return answer["error"] if "error" in answer else answer["message"]


# Words a refusal names: a field, a format, or a limit.
NAMED = (*FIELDS, "inputs", "instances", "dataframe_records", "dataframe_split", "columns", "data", "params")
NAMED += ("JSON", "body", "bytes", "at most", "content type", "token", "record")


def assert_refusal_names_the_problem(status: int, body: bytes):
    assert 400 <= status < 500, (status, body)
    message = message_of(status, body)
    assert message.strip(), body
    assert any(word in message for word in NAMED), message


# --- Plain requests -----------------------------------------------------------------------------


def test_predict_and_invocations_answer_from_the_lookup():
    app = serving_app()
    expected = [float(value) for value in app.holder.current.predictor.predict([TRIP, {**TRIP, "PULocationID": 9}])]
    status, _, body = call(
        app, "POST", "/predict", json.dumps({"inputs": [TRIP, {**TRIP, "PULocationID": 9}]}).encode()
    )
    assert status == 200 and json.loads(body)["predictions"] == [round(value, 4) for value in expected]
    assert json.loads(body)["model"] == {"name": "xgboost", "partition": "2024-02", "version": "1", "run_id": "run"}
    for key in ("dataframe_records", "inputs", "instances"):
        status, _, body = call(
            app, "POST", "/invocations", json.dumps({key: [TRIP, {**TRIP, "PULocationID": 9}]}).encode()
        )
        assert status == 200 and json.loads(body) == {"predictions": expected}, key


def test_instances_is_an_alias_of_inputs_as_in_mlflow():
    """MLflow's scoring server takes "instances" (TensorFlow Serving's name) as "inputs": records or columns."""
    app = serving_app()
    columns = {name: [TRIP[name], TRIP[name]] for name in FIELDS}
    as_inputs = call(app, "POST", "/invocations", json.dumps({"inputs": columns}).encode())
    as_instances = call(app, "POST", "/invocations", json.dumps({"instances": columns}).encode())
    assert as_inputs[0] == as_instances[0] == 200 and as_inputs[2] == as_instances[2]
    status, _, body = call(app, "POST", "/invocations", json.dumps({"instances": [TRIP], "inputs": [TRIP]}).encode())
    assert status == 422 and "got inputs, instances" in message_of(status, body)
    status, _, body = call(
        app, "POST", "/invocations", json.dumps({"instances": [{**TRIP, "PULocationID": 0}]}).encode()
    )
    assert status == 422 and "instances[0].PULocationID: must be a location id" in message_of(status, body)


def test_a_huge_integer_distance_is_a_422_not_a_crash():
    """Found by fuzzing: an integer of hundreds of digits overflowed float() inside the schema (a 500)."""
    app = serving_app()
    trip = b'{"PULocationID": 236, "DOLocationID": 239, "trip_distance": ' + b"9" * 400 + b"}"
    for path, key in (("/predict", b"inputs"), ("/invocations", b"dataframe_records")):
        status, _, body = call(app, "POST", path, b'{"' + key + b'": [' + trip + b"]}")
        assert status == 422 and "trip_distance: must be between 0 and 500 miles" in message_of(status, body)
    with pytest.raises(TripError, match="trip_distance: must be between 0 and 500 miles, got a huge integer"):
        validate_records([{**TRIP, "trip_distance": 10**400}])


def test_an_empty_body_says_so():
    status, _, body = call(serving_app(), "POST", "/predict", b"")
    assert status == 400 and "the body is empty" in message_of(status, body) and '{"inputs"' in message_of(status, body)


def test_unknown_paths_and_methods_name_what_the_server_serves():
    app = serving_app()
    status, _, body = call(app, "GET", "/nope")
    assert status == 404 and "POST /predict" in message_of(status, body)
    status, headers, body = call(app, "GET", "/predict")
    assert status == 405 and headers[b"allow"] == b"POST" and "takes POST" in message_of(status, body)
    assert call(app, "HEAD", "/health", headers={})[0] == 200


def test_content_types_and_tokens():
    app = serving_app()
    status, _, body = call(
        app, "POST", "/invocations", b"a,b", {"authorization": f"Bearer {TOKEN}", "content-type": "text/csv"}
    )
    assert status == 415 and "'text/csv' is not supported" in message_of(status, body)
    status, _, body = call(
        app, "POST", "/invocations", b"{}", {"authorization": f"Bearer {TOKEN}", "content-type": "x" * 10_000}
    )
    assert status == 415 and len(body) < 300  # the header is not echoed whole
    body = json.dumps({"inputs": [TRIP]}).encode()
    # /predict takes any content type (curl -d sends a form's), /invocations none but JSON; neither a missing one.
    assert call(app, "POST", "/predict", body, {"authorization": f"Bearer {TOKEN}"})[0] == 200
    assert call(app, "POST", "/invocations", body, {"authorization": f"Bearer {TOKEN}"})[0] == 200
    for header in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"}):
        status, headers, answer = call(app, "POST", "/predict", body, header)
        assert (
            status == 401 and headers[b"www-authenticate"] == b"Bearer" and "bearer token" in message_of(status, answer)
        )
    assert call(app, "POST", "/predict", body, {"authorization": f"bEaReR   {TOKEN} "})[0] == 200


def test_without_a_token_anyone_may_predict():
    app = serving_app(token=None)
    assert call(app, "POST", "/invocations", json.dumps({"inputs": [TRIP]}).encode(), {})[0] == 200


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.7", False),
        ("128.0.0.1", False),
        ("", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_no_auth_only_on_loopback(host, loopback, monkeypatch):
    monkeypatch.delenv("TAXI_API_TOKEN", raising=False)
    assert server.is_loopback(host) is loopback
    if loopback:
        assert server.api_token(no_auth=True, host=host) is None
    else:
        with pytest.raises(SystemExit) as refused:
            server.api_token(no_auth=True, host=host)
        assert "--no-auth" in str(refused.value) and "loopback" in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(SystemExit, match="TAXI_API_TOKEN is not set"):
        server.api_token(no_auth=False, host=host)


# --- Clients that stop or leave -------------------------------------------------------------------


def test_a_client_that_leaves_mid_body_gets_no_answer_and_no_error_logged(caplog):
    async def first_half_then_gone():
        if not sent_half:
            sent_half.append(True)
            return {"type": "http.request", "body": b'{"inputs": [', "more_body": True}
        return {"type": "http.disconnect"}

    sent_half: list[bool] = []
    with caplog.at_level("WARNING", logger="taxi_assets.server"):
        assert call(serving_app(), "POST", "/predict", receive=first_half_then_gone) is None
    assert not caplog.records


def test_a_body_that_stops_arriving_gets_408_and_the_connection_closed():
    """The deadline sweep cancels the read; nothing but the client's silence is waited for."""
    app = serving_app(body_timeout=0.2)

    async def half_then_silence():
        if not sent_half:
            sent_half.append(True)
            return {"type": "http.request", "body": b'{"inputs": [', "more_body": True}
        await asyncio.Event().wait()  # never sends the rest

    sent_half: list[bool] = []

    async def scenario():
        sweeper = asyncio.create_task(app.deadlines.sweep())
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/predict",
            "headers": [(b"authorization", f"Bearer {TOKEN}".encode())],
        }
        await asyncio.wait_for(app(scope, half_then_silence, send), timeout=120)
        sweeper.cancel()
        return sent

    start, body = asyncio.run(scenario())
    assert start["status"] == 408 and (b"connection", b"close") in start["headers"]
    assert "request body not received within 0.2 s" in json.loads(body["body"])["error"]
    assert not app.deadlines.pending and not app.deadlines.expired


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    async def never():
        raise AssertionError("the body must not be read")

    headers = {"authorization": f"Bearer {TOKEN}", "content-length": str(server.MAX_BODY_BYTES + 1)}
    status, sent_headers, body = call(serving_app(), "POST", "/predict", headers=headers, receive=never)
    assert status == 413 and "request body over 8388608 bytes" in message_of(status, body)


# --- Generated bodies -------------------------------------------------------------------------------

ids = st.one_of(
    st.integers(min_value=-3, max_value=300),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.from_regex(r"\A ?[0-9]{1,20} ?\Z"),
    st.text(max_size=8),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([236.0, 1.5, True, False, None, [], {}, [1], {"a": 1}]),
)
miles = st.one_of(
    st.floats(min_value=-1, max_value=600),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.integers(min_value=0, max_value=500),
    st.sampled_from(["6.54", "1e999", "NaN", "far", "", True, None, [1.5], {"miles": 1}]),
)
field_names = st.sampled_from([*FIELDS, *FIELDS, "tip", "", "pulocationid", "PULocationID ", "inputs"])


@st.composite
def trips(draw):
    """A record: usually the three fields, sometimes one missing, renamed or extra."""
    record = {"PULocationID": draw(ids), "DOLocationID": draw(ids), "trip_distance": draw(miles)}
    for _ in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            record.pop(draw(st.sampled_from(FIELDS)), None)
        else:
            record[draw(field_names)] = draw(st.one_of(ids, miles))
    return record


records = st.lists(trips(), max_size=4) | st.lists(st.just(TRIP), min_size=1, max_size=3)
json_junk = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def split_of(draw, rows):
    """dataframe_split of some records: columns, rows (sometimes ragged), maybe an index."""
    columns = draw(st.lists(field_names, min_size=0, max_size=4))
    data = [[row.get(name, None) for name in columns] for row in rows]
    if data and draw(st.booleans()):
        data[draw(st.integers(0, len(data) - 1))].append(draw(ids))
    split = {"columns": columns, "data": data}
    if draw(st.booleans()):
        split["index"] = draw(st.one_of(st.just(list(range(len(data)))), json_junk))
    return split


def columns_of(rows):
    return {name: [row.get(name) for row in rows] for name in {key for row in rows for key in row}}


@st.composite
def documents(draw):
    """A body as a Python value: each of MLflow's formats and /predict's, right or wrong."""
    rows = draw(records)
    form = draw(st.sampled_from(["inputs", "instances", "dataframe_records", "dataframe_split", "columns", "junk"]))
    if form == "dataframe_split":
        document = {"dataframe_split": draw(split_of(rows))}
    elif form == "columns":
        document = {draw(st.sampled_from(["inputs", "instances"])): columns_of(rows)}
    elif form == "junk":
        return draw(json_junk)
    else:
        document = {form: rows}
    extra = draw(st.sampled_from([None, "params", "inputs", "dataframe_records", "debug"]))
    if extra:
        document[extra] = draw(st.one_of(st.dictionaries(st.text(max_size=4), json_junk, max_size=2), json_junk))
    return document


@st.composite
def bodies(draw):
    """Bytes: a document as JSON (NaN and Infinity included), maybe cut short, spliced, or nested deep."""
    text = json.dumps(draw(documents())).encode()
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "splice", "duplicate key", "deep", "bytes"]))
    if damage == "truncate":
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if damage == "splice":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.binary(min_size=1, max_size=4)) + text[at:]
    if damage == "duplicate key" and text.startswith(b"{") and len(text) > 2:
        return b'{"inputs": [], ' + text[1:]
    if damage == "deep":
        depth = draw(st.integers(150, 3000))
        return b'{"inputs": ' + b"[" * depth + json.dumps(TRIP).encode() + b"]" * depth + b"}"
    if damage == "bytes":
        return draw(st.binary(max_size=40))
    return text


APP = serving_app()


@PROPERTY
@given(body=bodies(), path=st.sampled_from(["/predict", "/invocations"]))
def test_no_body_gets_a_5xx_and_every_refusal_names_the_problem(body, path):
    status, _, answer = call(APP, "POST", path, body)
    if status == 200:
        predictions = json.loads(answer)["predictions"]
        assert predictions and all(isinstance(value, float) and math.isfinite(value) for value in predictions)
    else:
        assert_refusal_names_the_problem(status, answer)


@PROPERTY
@given(rows=st.lists(trips(), min_size=1, max_size=4))
def test_the_plain_path_accepts_nothing_the_schema_refuses_and_gives_its_values(rows):
    plain = plain_pairs(rows)
    if plain is None:
        return
    valid = validate_records(rows)  # raises if the plain path accepted a trip the schema refuses
    assert plain == ([record.pu_do for record in valid], [record.trip_distance for record in valid])


@PROPERTY
@given(rows=st.lists(trips(), min_size=1, max_size=4), form=st.sampled_from(["inputs", "dataframe_records", "split"]))
def test_the_server_answers_what_the_predictor_answers_or_the_schemas_error(rows, form):
    if form == "split" and all(list(row) == list(rows[0]) for row in rows):
        columns = list(rows[0])  # the same records, as columns and rows
        document = {"dataframe_split": {"columns": columns, "data": [[row[name] for name in columns] for row in rows]}}
    else:
        document = {"inputs" if form == "split" else form: rows}
    status, _, answer = call(APP, "POST", "/invocations", json.dumps(document).encode())
    try:
        expected = [float(value) for value in APP.holder.current.predictor.predict(rows)]
    except TripError:
        assert_refusal_names_the_problem(status, answer)
    else:
        assert status == 200 and json.loads(answer) == {"predictions": expected}


@PROPERTY
@given(distance=st.floats(min_value=0, max_value=500) | st.sampled_from([0.5, 1.0, 1.98, 6.54, 20.0, 500.0]))
def test_one_trip_lookup_equals_the_tables_vectorized_lookup(distance):
    lookup = lookup_predictor().lookup
    assert lookup is not None
    for value in (distance, float(np.nextafter(np.float32(distance), np.float32(0))), float(np.float32(distance))):
        for pair in ("236_239", "65_1", "7_7"):
            assert lookup.minutes_of(pair, value) == float(lookup.predict([pair], np.asarray([value]))[0])
