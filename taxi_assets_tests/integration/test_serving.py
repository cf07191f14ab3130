"""The inference server as a real process on 127.0.0.1, driven with real HTTP requests."""

import http.client
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import pytest

from taxi_assets.definitions import build_defs
from taxi_assets_tests.helpers import decide, failure_messages, use_mlflow_store_of
from taxi_assets_tests.servers import inference_server
from taxi_assets_tests.stack import wait_for

TOKEN = secrets.token_urlsafe(24)  # made per test session; no token lives in the repo
GOOD = {
    "inputs": [
        {"PULocationID": 236, "DOLocationID": 239, "trip_distance": 1.98},
        {"PULocationID": 65, "DOLocationID": 170, "trip_distance": 6.54},
    ]
}


def materialize_production(instance):
    return decide(instance).run_id


class Client:
    def __init__(self, port):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method, path, body=None, token=TOKEN, raw=None, headers=None):
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        payload = raw if raw is not None else (json.dumps(body) if body is not None else None)
        self.connection.request(method, path, body=payload, headers=all_headers)
        response = self.connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None


@pytest.fixture(scope="module")
def server(served_instance, tmp_path_factory):
    trained_instance = served_instance
    first_run = served_instance.decision_result.run_id
    home = Path(trained_instance.storage_directory()).resolve().parent
    env = {**os.environ, "DAGSTER_HOME": str(home), "TAXI_API_TOKEN": TOKEN}
    folder = tmp_path_factory.mktemp("serve")
    log = folder / "serve.log"
    args = ("--reload-interval", "0.5", "--body-timeout", "2")
    with inference_server(env, folder, *args, log=log) as (process, port):

        def healthy():
            try:
                return Client(port).request("GET", "/health")[0] == 200
            except OSError:
                return False

        try:
            wait_for(healthy, 120, "the server's health")
        except TimeoutError:
            pytest.fail("server did not come up: " + log.read_text()[-3000:])
        yield {"port": port, "instance": trained_instance, "first_run": first_run, "process": process, "log": log}


def test_predicts_the_course_samples(server):
    status, body = Client(server["port"]).request("POST", "/predict", GOOD)
    assert status == 200
    short_trip, long_trip = body["predictions"]
    assert 4 < short_trip < 25 and 8 < long_trip < 45
    assert body["model"]["partition"] == "2024-02"
    assert set(body["model"]) >= {"name", "partition", "version"}
    status, health = Client(server["port"]).request("GET", "/health", token=None)
    assert status == 200 and health["status"] == "ok" and health["model"]["name"] == body["model"]["name"]


@pytest.mark.parametrize(
    "headers_token",
    [None, "wrong-token", TOKEN + "x", ""],
    ids=["none", "wrong", "token-plus-one", "empty"],  # the token is random: not in test ids
)
def test_missing_or_wrong_token_is_401(server, headers_token):
    status, body = Client(server["port"]).request("POST", "/predict", GOOD, token=headers_token)
    assert status == 401 and "bearer token" in body["error"]


def test_bearer_scheme_is_case_insensitive(server):
    for scheme in ("bearer", "BEARER", "Bearer"):
        status, _ = Client(server["port"]).request(
            "POST", "/predict", GOOD, token=None, headers={"Authorization": f"{scheme} {TOKEN}"}
        )
        assert status == 200, scheme


def test_the_courses_own_request_gets_the_integer_forms_answer(server):
    """The course sends location ids as strings (../shared/README.md)."""
    course = {
        "inputs": [
            {"DOLocationID": "239", "PULocationID": "236", "trip_distance": 1.98},
            {"DOLocationID": "170", "PULocationID": "65", "trip_distance": 6.54},
        ]
    }
    status, as_strings = Client(server["port"]).request("POST", "/predict", course)
    assert status == 200
    _, as_integers = Client(server["port"]).request("POST", "/predict", GOOD)
    assert as_strings["predictions"] == as_integers["predictions"]


def test_basic_auth_is_401(server):
    client = Client(server["port"])
    status, _ = client.request("POST", "/predict", GOOD, token=None, headers={"Authorization": f"Basic {TOKEN}"})
    assert status == 401


def record(**changes):
    base = {"PULocationID": 236, "DOLocationID": 239, "trip_distance": 1.98}
    base.update(changes)
    return {key: value for key, value in base.items() if value is not ...}


BAD = {
    "invalid JSON": (None, b"{not json", 400, "invalid JSON"),
    "invalid UTF-8": (
        None,
        b'{"inputs": [{"PULocationID": "\xff", "DOLocationID": 1, "trip_distance": 1}]}',
        400,
        "invalid JSON",
    ),
    "not an object": ([1, 2], None, 422, 'body must be a JSON object {"inputs"'),
    "no inputs": ({"records": []}, None, 422, "inputs: missing field"),
    "inputs not a list": ({"inputs": {"PULocationID": 1}}, None, 422, "inputs: Input should be a valid array"),
    "empty batch": ({"inputs": []}, None, 422, "is empty"),
    "oversized batch": ({"inputs": [record()] * 50_001}, None, 413, "at most 50000"),
    "missing field": ({"inputs": [record(trip_distance=...)]}, None, 422, "inputs[0].trip_distance: missing field"),
    "string id": ({"inputs": [record(PULocationID="abc")]}, None, 422, "inputs[0].PULocationID: must be a location id"),
    "zero id": (
        {"inputs": [record(PULocationID=0)]},
        None,
        422,
        "inputs[0].PULocationID: must be a location id (a positive integer), got 0",
    ),
    "float id": ({"inputs": [record(DOLocationID=1.5)]}, None, 422, "inputs[0].DOLocationID: must be a location id"),
    "boolean distance": (
        {"inputs": [record(trip_distance=True)]},
        None,
        422,
        "trip_distance: must be a number of miles, not a boolean",
    ),
    "string distance": (
        {"inputs": [record(), record(trip_distance="far")]},
        None,
        422,
        "inputs[1].trip_distance: must be a number of miles",
    ),
    "negative distance": ({"inputs": [record(trip_distance=-1)]}, None, 422, "between 0 and 500"),
    "absurd distance": ({"inputs": [record(trip_distance=1e9)]}, None, 422, "between 0 and 500"),
    "NaN distance": (
        None,
        b'{"inputs": [{"PULocationID": 1, "DOLocationID": 2, "trip_distance": NaN}]}',
        422,
        "between 0 and 500",
    ),
    "unknown field": ({"inputs": [record(tip=3)]}, None, 422, "inputs[0].tip: unknown field"),
    "unknown top-level field": ({"inputs": [record()], "debug": True}, None, 422, "debug: unknown field"),
    "record is a list": (None, b'{"inputs": [[[[1]]]]}', 422, "inputs[0]: must be an object"),
    # Hostile nesting: the parser stops at 200 levels, before the stack can run out.
    "100,000 nested lists": (None, b"[" * 100_000, 400, "nested too deeply"),
    "inputs nested 5,000 deep": (None, b'{"inputs":' + b"[" * 5_000, 400, "nested too deeply"),
    "closed deep nesting": (None, b'{"inputs":' + b"[" * 5_000 + b"]" * 5_000 + b"}", 400, "nested too deeply"),
    "body over 8 MB": (None, b"[" + b"1," * (4_300_000) + b"1]", 413, "over 8388608 bytes"),
    "empty body": (None, b"", 400, "the body is empty"),
    # Found by fuzzing: a distance of 400 digits overflowed float() inside the schema (a 500).
    "400-digit distance": (
        None,
        b'{"inputs": [{"PULocationID": 1, "DOLocationID": 2, "trip_distance": ' + b"9" * 400 + b"}]}",
        422,
        "inputs[0].trip_distance: must be between 0 and 500 miles",
    ),
    "deep object in a record": (
        None,
        b'{"inputs": [{"PULocationID": ' + b'{"a":' * 3_000 + b"1" + b"}" * 3_000 + b"}]}",
        400,
        "nested too deeply",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_a_4xx_naming_the_problem(server, case):
    body, raw, expected_status, fragment = BAD[case]
    status, answer = Client(server["port"]).request("POST", "/predict", body, raw=raw)
    assert status == expected_status, answer
    assert fragment in answer["error"]


def test_unknown_location_pair_still_predicts(server):
    status, body = Client(server["port"]).request(
        "POST", "/predict", {"inputs": [record(PULocationID=264, DOLocationID=1)]}
    )
    assert status == 200 and len(body["predictions"]) == 1


@pytest.mark.production  # the long tier: a retraining while the server serves
def test_hot_reload_while_a_client_keeps_sending(server):
    answers: list[tuple[int, str | None]] = []  # (status, the run whose model answered)
    stop = threading.Event()

    def keep_sending():
        client = Client(server["port"])
        while not stop.is_set():
            status, body = client.request("POST", "/predict", GOOD)
            answers.append((status, body["model"]["run_id"] if status == 200 else None))

    def answered_by(run_id):
        return sum(1 for _, run in answers if run == run_id)

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        # Events, not seconds: answers from the old model, the switch, then answers from the new one.
        wait_for(lambda: len(answers) >= 20, 120, "20 answers before the new model")
        old_runs = {run for _, run in answers}
        new_run = materialize_production(server["instance"])
        wait_for(lambda: answered_by(new_run) >= 20, 180, "20 answers from the new model")
    finally:
        stop.set()
        sender.join(timeout=60)
    assert len(old_runs) == 1 and new_run not in old_runs  # one model before, the new one after
    assert {run for _, run in answers} == old_runs | {new_run}  # switched without a restart
    assert {status for status, _ in answers} == {200}  # no request failed meanwhile
    assert server["process"].poll() is None


def test_server_refuses_to_start_without_a_token(trained_instance):
    home = Path(trained_instance.storage_directory()).resolve().parent
    env = {key: value for key, value in os.environ.items() if key != "TAXI_API_TOKEN"}
    env["DAGSTER_HOME"] = str(home)
    result = subprocess.run(
        [Path(sys.executable).parent / "taxi-assets", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0 and "TAXI_API_TOKEN is not set" in result.stderr


# One list of trips through every surface that takes trips -------------------------------------


@pytest.fixture(scope="module")
def surfaces(server):
    """The four ways to ask for a prediction, each returning (minutes, None) or (None, error)."""
    import mlflow.pyfunc

    import taxi_assets
    from taxi_assets.lib.model_store import serving_model

    instance = server["instance"]
    serving = serving_model(instance)
    use_mlflow_store_of(instance)
    # The registered version that serves (other tests here move the champion alias around).
    registered = mlflow.pyfunc.load_model(f"models:/taxi-duration-{serving.name}/{serving.version}")
    predict_job = build_defs().resolve_job_def("predict")
    model = taxi_assets.load_model(instance=instance)

    def via_server(trip):
        status, body = Client(server["port"]).request("POST", "/predict", {"inputs": [trip]})
        return (body["predictions"][0], None) if status == 200 else (None, f"{status} {body['error']}")

    def via_load_model(trip):
        try:
            return float(model.predict([trip])[0]), None
        except ValueError as error:
            return None, str(error)

    def via_mlflow(trip):
        try:
            return float(registered.predict([trip])[0]), None
        except Exception as error:  # MLflow wraps the schema's error in an MlflowException
            return None, str(error)

    def via_predict_job(trip):
        config = {"ops": {"predict_trip_durations": {"config": {"trips": [trip]}}}}
        try:
            result = predict_job.execute_in_process(instance=instance, run_config=config, raise_on_error=False)
        except dg.DagsterInvalidConfigError as error:  # refused at launch by the config schema
            return None, str(error)
        if result.success:
            return result.output_for_node("predict_trip_durations")[0], None
        return None, failure_messages(result)

    return {
        "server": via_server,
        "load_model": via_load_model,
        "MLflow model": via_mlflow,
        "predict job": via_predict_job,
    }


from taxi_assets_tests.trip_cases import CASES  # noqa: E402


@pytest.mark.parametrize("case", list(CASES))
def test_every_surface_gives_the_same_answer_or_the_same_error(surfaces, case):
    trip, expected, error = CASES[case]
    answers = {name: ask(trip) for name, ask in surfaces.items()}
    if expected is not None:
        minutes = {name: value for name, (value, problem) in answers.items()}
        assert all(value is not None for value in minutes.values()), answers
        reference = minutes["load_model"]
        assert all(value == pytest.approx(reference, abs=1e-3) for value in minutes.values()), minutes
        # ...and the same answer as the trip written the canonical way.
        assert surfaces["load_model"](expected)[0] == pytest.approx(reference, abs=1e-6)
    else:
        assert all(value is None for value, _ in answers.values()), answers
        for name, (_, problem) in answers.items():
            field = error.split(":")[0]
            if name == "predict job" and case in ("missing distance", "an extra field"):
                # Dagster's config schema refuses these at launch, in its own words, naming the field.
                assert field in problem, (name, problem)
            elif name == "MLflow model":
                # MLflow reports the schema's own error in pydantic's layout: field, then message.
                message = {"missing field": "Field required", "unknown field": "Extra inputs are not permitted"}.get(
                    error.split(": ", 1)[1], error.split(": ", 1)[1]
                )
                assert field in problem and message in problem, problem
            else:
                assert error in problem, (name, problem)


def test_server_starts_in_production_with_only_the_published_prefix(server, tmp_path):
    """TAXI_ENV=production: the server reads the published decision from the serving prefix of
    the bucket and needs nothing else (no Dagster instance or database, no trip bucket, no
    tracking server): here its DAGSTER_HOME is an empty folder."""
    import boto3

    from taxi_assets_tests.servers import moto_s3_server

    instance = server["instance"]
    month = max(instance.get_materialized_partitions(dg.AssetKey("production_model")))
    published = Path(instance.storage_directory()).resolve().parent / "serving"
    with moto_s3_server() as endpoint:
        s3 = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
        )
        s3.create_bucket(Bucket="assets")
        files = [path for path in published.rglob("*") if path.is_file() and not path.name.startswith(".")]
        assert any(path.name == "current.json" for path in files), files
        for path in files:
            key = f"taxi_assets/serving/{path.relative_to(published).as_posix()}"
            s3.put_object(Bucket="assets", Key=key, Body=path.read_bytes())
        env = {key: value for key, value in os.environ.items() if not key.startswith(("TAXI_", "MLFLOW_", "AWS_"))} | {
            "TAXI_ENV": "production",
            "TAXI_S3_BUCKET": "assets",
            "TAXI_API_TOKEN": TOKEN,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "DAGSTER_HOME": str(tmp_path / "empty"),
        }
        (tmp_path / "empty").mkdir()
        log = tmp_path / "serve.log"
        with inference_server(env, tmp_path, "--reload-interval", "0", log=log) as (_, port):

            def answer():
                try:
                    return Client(port).request("POST", "/predict", GOOD)
                except OSError:
                    return None

            status, body = wait_for(answer, 120, "the production server")
        output = log.read_text(errors="replace")
    assert status == 200 and body["model"]["partition"] == month, output[-2000:]
    _, local_answer = Client(server["port"]).request("POST", "/predict", GOOD)
    assert body["predictions"] == local_answer["predictions"]


# MLflow's scoring protocol ----------------------------------------------------------------------


def test_invocations_speak_mlflows_protocol_with_the_pyfuncs_predictions(server, surfaces):
    import mlflow.pyfunc
    import pandas as pd

    from taxi_assets.lib.model_store import serving_model

    instance = server["instance"]
    serving = serving_model(instance)
    use_mlflow_store_of(instance)
    pyfunc = mlflow.pyfunc.load_model(f"models:/taxi-duration-{serving.name}/{serving.version}")
    trips = [
        record(),
        record(PULocationID=65, DOLocationID=170, trip_distance=6.54),
        record(PULocationID=999, DOLocationID=1),
    ]
    expected = [float(value) for value in pyfunc.predict(pd.DataFrame(trips))]
    columns = ["PULocationID", "DOLocationID", "trip_distance"]
    bodies = {
        "dataframe_records": {"dataframe_records": trips},
        "dataframe_split": {"dataframe_split": {"columns": columns, "data": [[t[c] for c in columns] for t in trips]}},
        "dataframe_split with index": {
            "dataframe_split": {
                "index": [0, 1, 2],
                "columns": columns,
                "data": [[t[c] for c in columns] for t in trips],
            }
        },
        "inputs as records": {"inputs": trips},
        "inputs as columns": {"inputs": {c: [t[c] for t in trips] for c in columns}},
        # MLflow's alias of "inputs" (TensorFlow Serving's name), as records and as columns.
        "instances as records": {"instances": trips},
        "instances as columns": {"instances": {c: [t[c] for t in trips] for c in columns}},
        "with params": {"inputs": trips, "params": {"unused": 1}},
        "the course's strings": {
            "dataframe_records": [
                {**t, "PULocationID": str(t["PULocationID"]), "DOLocationID": str(t["DOLocationID"])} for t in trips
            ]
        },
    }
    for name, body in bodies.items():
        status, answer = Client(server["port"]).request("POST", "/invocations", body)
        assert status == 200, (name, answer)
        assert answer == {"predictions": expected}, name  # identical floats, as MLflow answers
    client = Client(server["port"])
    client.connection.request("GET", "/ping")
    ping = client.connection.getresponse()
    assert ping.status == 200 and ping.read() == b"\n"
    client.connection.request("GET", "/version")
    version = client.connection.getresponse()
    assert version.status == 200 and version.read().decode() == __import__("importlib.metadata").metadata.version(
        "taxi_assets"
    )


@pytest.mark.parametrize(
    ("body", "raw", "status", "fragment"),
    [
        (
            {"dataframe_records": [record(PULocationID=0)]},
            None,
            422,
            "dataframe_records[0].PULocationID: must be a location id",
        ),
        (
            {"dataframe_split": {"columns": ["PULocationID", "DOLocationID", "trip_distance"], "data": [[1, 2]]}},
            None,
            422,
            "one value per column",
        ),
        (
            {"inputs": {"PULocationID": [1, 2], "DOLocationID": [3], "trip_distance": [1, 2]}},
            None,
            422,
            "different lengths",
        ),
        ({"dataframe_records": [record()], "inputs": [record()]}, None, 422, "got dataframe_records, inputs"),
        ({"records": [record()]}, None, 422, "records: unknown field"),
        ({}, None, 422, 'one of "dataframe_records"'),
        ({"dataframe_records": []}, None, 422, "is empty"),
        ({"dataframe_records": [record()] * 50_001}, None, 413, "at most 50000"),
        (None, b'{"dataframe_records": ' + b"[" * 10_000, 400, "nested too deeply"),
        (None, b"not json", 400, "invalid JSON"),
    ],
    ids=[
        "bad id",
        "short row",
        "ragged columns",
        "two formats",
        "unknown format",
        "no format",
        "empty",
        "too many",
        "deep",
        "not JSON",
    ],
)
def test_invocations_refuse_bad_bodies_in_mlflows_error_shape(server, body, raw, status, fragment):
    got, answer = Client(server["port"]).request("POST", "/invocations", body, raw=raw)
    assert got == status and answer["error_code"] in ("BAD_REQUEST", "REQUEST_LIMIT_EXCEEDED"), answer
    assert fragment in answer["message"], answer


def test_invocations_need_the_token_and_json(server):
    status, answer = Client(server["port"]).request("POST", "/invocations", {"inputs": [record()]}, token=None)
    assert status == 401 and answer["error_code"] == "UNAUTHENTICATED"
    status, answer = Client(server["port"]).request(
        "POST", "/invocations", raw=b"a,b\n1,2", headers={"Content-Type": "text/csv"}
    )
    assert status == 415 and "application/json" in answer["message"]


def test_without_a_model_the_server_says_how_to_make_one(instance, tmp_path):
    home = Path(instance.storage_directory()).resolve().parent
    env = {**os.environ, "DAGSTER_HOME": str(home), "TAXI_API_TOKEN": TOKEN}
    with inference_server(env, tmp_path, "--reload-interval", "0") as (_, port):

        def answer():
            try:
                return Client(port).request("POST", "/predict", GOOD)
            except OSError:
                return None

        status, body = wait_for(answer, 120, "the server")
        assert status == 503 and "taxi-assets materialize --partition" in body["error"]
        status, body = Client(port).request("POST", "/invocations", {"inputs": GOOD["inputs"]})
        assert (
            status == 503 and body["error_code"] == "TEMPORARILY_UNAVAILABLE" and "retrain a month" in body["message"]
        )


# Hostile clients (thousands of them: benchmarks/bench_fuzz.py) ---------------------------------


def raw_exchange(port: int, request: bytes, close_after_send: bool = False) -> bytes:
    """Bytes to the server on a fresh connection; everything it sends until it closes (or nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as connection:
        connection.sendall(request)
        if close_after_send:
            return b""
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
        return received


def test_a_body_that_stops_arriving_gets_408_while_others_are_served(server):
    body = json.dumps(GOOD).encode()
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=120) as stalled:
        stalled.sendall(head.encode() + body[:10])  # and nothing more
        assert Client(server["port"]).request("POST", "/predict", GOOD)[0] == 200  # others are served meanwhile
        answer = b""
        while chunk := stalled.recv(65536):  # until the server closes the connection
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer.lower()
    assert b"request body not received within 2 s" in answer


def test_a_client_that_leaves_mid_body_costs_nothing(server):
    body = json.dumps(GOOD).encode()
    head = (
        f"POST /invocations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    for _ in range(20):
        raw_exchange(server["port"], head.encode() + body[:7], close_after_send=True)
    assert Client(server["port"]).request("POST", "/invocations", {"inputs": GOOD["inputs"]})[0] == 200
    log = server["log"].read_text(errors="replace")
    assert "Traceback" not in log and "Exception" not in log, log[-3000:]


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(server):
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 9000000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=120) as connection:
        connection.sendall(head.encode() + b'{"inputs": [')  # and no more: the answer comes all the same
        response = http.client.HTTPResponse(connection)
        response.begin()
        assert response.status == 413 and b"request body over 8388608 bytes" in response.read()


def test_a_stopped_server_leaves_no_traceback(served_instance, tmp_path):
    """Found by fuzzing's log check: loading a model through Dagster left SIGTERM raising
    KeyboardInterrupt, so every stop (ECS stops tasks with SIGTERM) logged a traceback."""
    home = Path(served_instance.storage_directory()).resolve().parent
    env = {**os.environ, "DAGSTER_HOME": str(home), "TAXI_API_TOKEN": TOKEN}
    log = tmp_path / "serve.log"
    with inference_server(env, tmp_path, "--reload-interval", "0", log=log) as (process, port):
        wait_for(lambda: _answers(port), 120, "the server")
        process.terminate()
        process.wait(timeout=120)
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")[-3000:]


def _answers(port):
    try:
        return Client(port).request("GET", "/health")[0] == 200
    except OSError:
        return False


# --no-auth: MLflow's own scoring client ----------------------------------------------------------


@pytest.fixture(scope="module")
def open_server(server, tmp_path_factory):
    """``taxi-assets serve --no-auth`` of the same instance, with no token anywhere in its environment."""
    home = Path(server["instance"].storage_directory()).resolve().parent
    env = {key: value for key, value in os.environ.items() if key != "TAXI_API_TOKEN"} | {"DAGSTER_HOME": str(home)}
    folder = tmp_path_factory.mktemp("serve-no-auth")
    with inference_server(env, folder, "--no-auth", "--reload-interval", "0", log=folder / "serve.log") as (_, port):
        yield port


def test_mlflows_scoring_client_works_against_no_auth(server, open_server):
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    from taxi_assets.lib.model_store import serving_model

    instance = server["instance"]
    serving = serving_model(instance)
    use_mlflow_store_of(instance)
    pyfunc = mlflow.pyfunc.load_model(f"models:/taxi-duration-{serving.name}/{serving.version}")
    trips = pd.DataFrame(
        [
            record(),
            record(PULocationID=65, DOLocationID=170, trip_distance=6.54),
            record(PULocationID=999, DOLocationID=1),
        ]
    )
    expected = [float(value) for value in pyfunc.predict(trips)]

    client = ScoringServerClient("127.0.0.1", open_server)
    client.wait_server_ready(timeout=120)
    client.ping()
    assert client.get_version() == __import__("importlib.metadata").metadata.version("taxi_assets")
    answer = client.invoke(trips)  # {"dataframe_split": {"index", "columns", "data"}}, no Authorization header
    assert answer["predictions"] == expected
    assert client.invoke(trips, params={"unused": 1})["predictions"] == expected
    with pytest.raises(Exception, match="error code 401"):  # the token-checking server still refuses it
        ScoringServerClient("127.0.0.1", server["port"]).invoke(trips)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
def test_no_auth_is_refused_beyond_loopback(tmp_path, host):
    env = {key: value for key, value in os.environ.items() if key != "TAXI_API_TOKEN"} | {"DAGSTER_HOME": str(tmp_path)}
    port_file = tmp_path / "port"
    result = subprocess.run(
        [
            Path(sys.executable).parent / "taxi-assets",
            "serve",
            "--no-auth",
            "--host",
            host,
            "--port",
            "0",
            "--port-file",
            str(port_file),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and not port_file.exists()  # refused before binding anything
    [line] = result.stderr.strip().splitlines()
    assert "--no-auth" in line and "loopback" in line and host in line, line


def test_one_trip_at_a_time_gives_the_boosters_own_predictions(server):
    """The server's path for a few trips (a bisect in the compiled table, trip by trip) against the
    booster itself, on 2,000 real trips of the served month."""
    import dataclasses

    import numpy as np
    import pandas as pd

    import taxi_assets
    from taxi_assets_tests.helpers import DATA_DIR

    predictor = taxi_assets.load_model(instance=server["instance"])
    assert predictor.lookup is not None, predictor.name  # the XGBoost decision serves from its table
    trips = (
        pd.read_parquet(DATA_DIR / "2024" / "02.parquet").dropna(subset=["trip_distance"]).sample(2000, random_state=1)
    )
    pairs = [f"{pickup}_{dropoff}" for pickup, dropoff in zip(trips.PULocationID, trips.DOLocationID)]
    miles = [float(value) for value in trips.trip_distance.clip(0, 500)]
    one_by_one = [predictor.minutes([pair], [distance])[0] for pair, distance in zip(pairs, miles)]
    booster = dataclasses.replace(predictor, lookup=None).predict_pairs(pairs, np.asarray(miles))
    assert one_by_one == [float(value) for value in booster]


@pytest.fixture(scope="module")
def booster_server(server, tmp_path_factory):
    """A server whose published model has no lookup table (an XGBoost model scored by the booster,
    about 300 µs a trip): the served decision copied into a fresh home without its table."""
    import dataclasses

    from taxi_assets.lib.serving_pointer import LocalServingStore, load_published_value, read_published
    from taxi_assets.ml.value_files import dump_value

    source = LocalServingStore(Path(server["instance"].storage_directory()).resolve().parent / "serving")
    published = read_published(source)
    assert published is not None
    value = load_published_value(source, published[1])
    home = tmp_path_factory.mktemp("booster-home")
    target = LocalServingStore(home / "serving")  # where a fresh home's instance looks
    assert value.predictor.lookup is not None  # the table this server goes without
    target.write(
        published[1],
        dump_value(dataclasses.replace(value, predictor=dataclasses.replace(value.predictor, lookup=None))),
    )
    target.write("current.json", source.read("current.json") or b"")
    env = {**os.environ, "DAGSTER_HOME": str(home), "TAXI_API_TOKEN": TOKEN}
    with inference_server(env, home, "--reload-interval", "0", log=home / "serve.log") as (_, port):
        wait_for(lambda: _status(port, "/ping") == 200, 120, "the booster server")
        yield port


def _status(port: int, path: str) -> int | None:
    """The status of ``GET path`` (None while nothing listens); the body is not read as JSON."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        connection.close()


def test_ping_is_answered_while_a_50000_trip_request_is_scored(booster_server):
    """Large requests are scored off the event loop. Ordering, not timing: /health says a large
    request is being scored and how many have finished; when two such reports around a /ping show
    one in progress and none finished between them, the ping was answered while it was scored.
    Clients keep sending 50,000-trip requests until that is seen (however long that takes)."""
    port = booster_server
    trips = [
        {"PULocationID": 1 + i % 263, "DOLocationID": 1 + (i * 7) % 263, "trip_distance": 0.5 + i % 30}
        for i in range(50_000)
    ]
    body = json.dumps({"inputs": trips})
    stop, answers = threading.Event(), []

    def keep_sending() -> None:
        client = Client(port)
        client.connection.timeout = 900  # however long a busy machine takes
        while not stop.is_set():
            answers.append(client.request("POST", "/predict", raw=body))

    senders = [threading.Thread(target=keep_sending) for _ in range(2)]
    for sender in senders:
        sender.start()

    def health() -> dict:
        status, document = Client(port).request("GET", "/health")
        assert status == 200 and document is not None
        return document

    def ping_during_scoring() -> bool:
        before = health()
        if before["scoring"] < 1:
            return False
        pinged = _status(port, "/ping")
        after = health()
        return pinged == 200 and after["scoring"] >= 1 and after["scored"] == before["scored"]

    try:
        wait_for(ping_during_scoring, 600, "a /ping answered while a large request is scored", interval=0.01)
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=900)
    assert answers and all(status == 200 and len(result["predictions"]) == 50_000 for status, result in answers)


def test_the_server_says_what_it_serves_not_its_libraries_chatter(server):
    """Its start names the model and where it was published; MLflow's store migrations and other
    libraries' INFO lines stay out of the log."""
    wait_for(lambda: "published at" in server["log"].read_text(errors="replace"), 60, "the serving line")
    log = server["log"].read_text(errors="replace")
    line = next(line for line in log.splitlines() if "published at" in line)
    assert " serving " in line and "trained for" in line and "serving" in line.rsplit("published at", 1)[1], line
    assert "alembic" not in log and " INFO mlflow" not in log, log[:2000]
