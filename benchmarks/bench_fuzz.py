"""Hostile clients against a real `taxi-assets serve`.

A trained instance (2024-02; small budgets, so the serving model is XGBoost answering from its
compiled lookup table, as in production), the server as its own process on 127.0.0.1 (port 0,
`--body-timeout 2` so that stalled bodies are answered within the run), and at least 10,000
generated requests over real sockets (seeded; 16 at a time), in the categories of the table:
valid trips in every body form; wrong types; NaN and Infinity; huge numbers; duplicated keys; deep
nesting; truncated, oversized and random bodies; wrong and missing content types and content
lengths; bad tokens; slow senders that stop mid-body (and wait, or leave); broken HTTP; unknown
paths; WebSocket upgrades; and 200 idle connections (half silent, half stopped inside their
headers) held open through the whole run.

It shows:
- no 5xx, and no traceback in the server's log;
- every 4xx names the problem: a non-empty message that mentions a field, a format or a limit
  (uvicorn's own 400 for broken HTTP framing, "Invalid HTTP request received.", and the websockets
  library's for a malformed handshake key, counted apart);
- valid requests get the in-process model's predictions (`taxi_assets.load_model`);
- the server's RSS (VmRSS, /proc) after the run within 1.2x of before (after a warm-up);
- the course's literal request (ids as strings) answered afterwards exactly as before the run.

Usage: python benchmarks/bench_fuzz.py [--requests 10000] [--seed 7] [--home DIR]
  --home: a DAGSTER_HOME with 2024-02's production_model already materialized (else a fresh one
  is trained, about two minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_DIR, append_results, table, write_scratch_instance  # noqa: E402

BIN = Path(sys.executable).parent
MONTH = "2024-02"
BODY_TIMEOUT = 2
FIELDS = ("PULocationID", "DOLocationID", "trip_distance")
# What a refusal names: a field, a format, or a limit.
NAMED = (*FIELDS, "inputs", "instances", "dataframe_records", "dataframe_split", "columns", "data", "params")
NAMED += ("JSON", "body", "bytes", "at most", "content type", "token", "record", "path", "takes", "WebSocket")
COURSE = {
    "inputs": [
        {"DOLocationID": "239", "PULocationID": "236", "trip_distance": 1.98},
        {"DOLocationID": "170", "PULocationID": "65", "trip_distance": 6.54},
    ]
}
SMALL_BUDGETS = """
ops:
  sklearn_models:
    ops:
      load_models:
        config: {models: [LinearRegression], max_evaluations: 1, timeout_seconds: 3600}
  xgboost_model:
    config: {max_evaluations: 1, fixed_params: {max_depth: 6, learning_rate: 0.5}, timeout_seconds: 3600}
  production_model:
    config: {timeout_seconds: 3600}
"""


# --- Requests ----------------------------------------------------------------------------------------


@dataclass
class Case:
    category: str
    request: bytes
    mode: str = "answer"  # "answer": read the reply; "leave": send, then close; "trickle": send byte by byte
    trips: list | None = None  # valid trips: the predictions to expect
    path: str = "/predict"
    replies: int = 1  # pipelined requests: one reply each


def http(path: str, body: bytes, token: str, content_type: str | None = "application/json", extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    return f"{head}Content-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def trip(rng: random.Random) -> dict:
    """A valid trip: ids as numbers or strings of digits, a plausible distance."""
    ids = [rng.choice([236, 65, 7, 132, 264, rng.randint(1, 265)]) for _ in range(2)]
    ids = [str(value) if rng.random() < 0.4 else value for value in ids]
    return {
        "PULocationID": ids[0],
        "DOLocationID": ids[1],
        "trip_distance": round(rng.uniform(0, 30), rng.randint(0, 3)),
    }


def body_of(form: str, trips: list) -> dict:
    """The trips as a body of each form MLflow (and /predict) takes."""
    columns = {name: [row.get(name) for row in trips] for name in FIELDS}
    return {
        "predict": {"inputs": trips},
        "dataframe_records": {"dataframe_records": trips},
        "dataframe_split": {
            "dataframe_split": {"columns": list(FIELDS), "data": [[row.get(n) for n in FIELDS] for row in trips]}
        },
        "inputs records": {"inputs": trips},
        "inputs columns": {"inputs": columns},
        "instances records": {"instances": trips},
        "instances columns": {"instances": columns},
    }[form]


FORMS = [
    "predict",
    "dataframe_records",
    "dataframe_split",
    "inputs records",
    "inputs columns",
    "instances records",
    "instances columns",
]
JUNK = [None, True, False, [], {}, [1], {"a": 1}, "", "abc", "1.5", "-3", 0, -1, 1.5, 1e300, "x" * 300, "２３６"]


def path_of(form: str) -> str:
    return "/predict" if form == "predict" else "/invocations"


def valid(rng, token):
    form, trips = rng.choice(FORMS), [trip(rng) for _ in range(rng.randint(1, 5))]
    return Case(
        "valid trips, every body form",
        http(path_of(form), json.dumps(body_of(form, trips)).encode(), token),
        trips=trips,
        path=path_of(form),
    )


def wrong_types(rng, token):
    trips = [trip(rng) for _ in range(rng.randint(1, 3))]
    victim = rng.choice(trips)
    victim[rng.choice(FIELDS)] = rng.choice(JUNK)
    if rng.random() < 0.2:
        victim.pop(rng.choice(FIELDS))
    if rng.random() < 0.2:
        victim[rng.choice(["tip", "fare", "PUlocationID"])] = 1
    form = rng.choice(FORMS)
    document = (
        body_of(form, trips) if rng.random() < 0.85 else rng.choice([[trips], "inputs", 3, None, {"inputs": trips[0]}])
    )
    return Case("wrong types and fields", http(path_of(form), json.dumps(document).encode(), token))


def special_floats(rng, token):
    form, trips = rng.choice(FORMS), [trip(rng) for _ in range(rng.randint(1, 3))]
    text = json.dumps(body_of(form, trips))
    token_text = rng.choice(["NaN", "Infinity", "-Infinity"])
    text = text.replace(json.dumps(trips[0][rng.choice(FIELDS)]), token_text, 1)
    return Case("NaN and Infinity", http(path_of(form), text.encode(), token))


def huge_numbers(rng, token):
    form, trips = rng.choice(FORMS), [trip(rng) for _ in range(rng.randint(1, 3))]
    number = rng.choice(
        [
            "9" * 400,
            "9" * 4300,
            "9" * 5000,
            "-" + "9" * 400,
            "1e308",
            "1e999",
            "-1e999",
            "1e-400",
            "123456789012345678901",
        ]
    )
    text = json.dumps(body_of(form, trips)).replace(json.dumps(trips[0][rng.choice(FIELDS)]), number, 1)
    return Case("huge numbers", http(path_of(form), text.encode(), token))


def duplicated_keys(rng, token):
    form = rng.choice(FORMS)
    one, two = trip(rng), trip(rng)
    record = json.dumps(one)[:-1] + ", " + json.dumps(two)[1:]  # every field twice: the last one counts
    texts = {
        "predict": f'{{"inputs": [{record}]}}',
        "dataframe_records": f'{{"dataframe_records": [{record}]}}',
        "dataframe_split": f'{{"dataframe_split": {{"columns": ["PULocationID", "DOLocationID", "trip_distance"], "data": [[1, 2, 3]], "data": [[{one["PULocationID"]!r}, 2, 3]]}}}}'.replace(
            "'", '"'
        ),
    }
    text = texts.get(form, f'{{"inputs": [{record}], "inputs": [{record}]}}')
    if rng.random() < 0.3:
        text = text[:-1] + ', "dataframe_records": [' + record + "]}"
    return Case("duplicated keys", http(path_of(form), text.encode(), token))


def deep_nesting(rng, token):
    depth = rng.choice([150, 199, 200, 201, 1000, 10_000, 100_000])
    where = rng.choice(["body", "inputs", "record", "distance", "split"])
    inner = {
        "body": b"[" * depth,
        "inputs": b'{"inputs": ' + b"[" * depth,
        "record": b'{"inputs": [' + b'{"a":' * depth + b"1" + b"}" * depth + b"]}",
    }
    inner["distance"] = (
        b'{"inputs": [{"PULocationID": 1, "DOLocationID": 2, "trip_distance": ' + b"[" * depth + b"]" * depth + b"}]}"
    )
    inner["split"] = b'{"dataframe_split": {"columns": ["a"], "data": ' + b"[" * depth + b"]" * depth + b"}}"
    path = rng.choice(["/predict", "/invocations"])
    return Case("deep nesting", http(path, inner[where], token))


def truncated(rng, token):
    form, trips = rng.choice(FORMS), [trip(rng) for _ in range(rng.randint(1, 4))]
    text = json.dumps(body_of(form, trips)).encode()
    return Case("truncated bodies", http(path_of(form), text[: rng.randint(0, len(text) - 1)], token))


def oversized(rng, token):
    kind = rng.choice(["declared", "chunked", "records"])
    if kind == "records":
        body = json.dumps({"inputs": [trip(rng)] * 50_001}).encode()
        return Case("oversized bodies", http(rng.choice(["/predict", "/invocations"]), body, token))
    if kind == "declared":  # a Content-Length over the limit: refused before the body is sent
        head = f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 9000000\r\n\r\n"
        return Case("oversized bodies", head.encode() + b'{"inputs": [')
    chunk = b"[" + b"1," * 32_000 + b"1]"
    head = f"POST /invocations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(9 * 1024 * 1024 // len(chunk)))
    return Case("oversized bodies", head.encode() + chunks + b"0\r\n\r\n")


def content_types(rng, token):
    body = json.dumps(body_of("inputs records", [trip(rng)])).encode()
    kind = rng.choice(
        [
            "text/csv",
            "application/x-www-form-urlencoded",
            "text/plain",
            "application/jsonx",
            "",
            "\x7f",
            "a" * 5000,
            None,
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
        ]
    )
    return Case(
        "wrong or missing content types",
        http(rng.choice(["/invocations", "/predict"]), body, token, content_type=kind),
        trips=None,
    )


def content_lengths(rng, token):
    body = json.dumps(body_of("predict", [trip(rng)])).encode()
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
    kind = rng.choice(
        ["longer, then leave", "shorter", "not a number", "negative", "twice, different", "with chunked", "missing"]
    )
    if kind == "longer, then leave":
        return Case(
            "wrong content lengths", f"{head}Content-Length: {len(body) + 50}\r\n\r\n".encode() + body, mode="leave"
        )
    length = {"shorter": str(len(body) // 2), "not a number": "abc", "negative": "-5"}.get(kind)
    if length is not None:
        return Case("wrong content lengths", f"{head}Content-Length: {length}\r\n\r\n".encode() + body)
    if kind == "twice, different":
        return Case(
            "wrong content lengths", f"{head}Content-Length: {len(body)}\r\nContent-Length: 3\r\n\r\n".encode() + body
        )
    if kind == "with chunked":
        return Case(
            "wrong content lengths",
            f"{head}Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + body,
        )
    return Case("wrong content lengths", f"{head}Connection: close\r\n\r\n".encode() + body)


def slow_senders(rng, token):
    body = json.dumps(body_of("predict", [trip(rng)])).encode()
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    kind = rng.choice(["stops and waits", "stops and leaves", "trickles"])
    if kind == "trickles":
        return Case("slow senders", head + body, mode="trickle", trips=json.loads(body)["inputs"])
    cut = rng.randint(0, len(body) - 1)
    return Case("slow senders", head + body[:cut], mode="answer" if kind == "stops and waits" else "leave")


def bad_tokens(rng, token):
    body = json.dumps(body_of("predict", [trip(rng)])).encode()
    header = rng.choice(
        [
            None,
            "Bearer",
            "Bearer ",
            f"Basic {token}",
            f"Bearer {token}x",
            f"Bearer {token[:-1]}",
            "Bearer " + "A" * 60_000,
            "Bearer \u00e9\u00e9\u00e9",
            f"Token {token}",
        ]
    )
    extra = "" if header is None else f"Authorization: {header}\r\n"
    return Case(
        "bad tokens",
        http(rng.choice(["/predict", "/invocations"]), body, "", extra=extra).replace(b"\xc3\xa9", b"\xe9"),
    )


def random_bodies(rng, token):
    body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
    return Case("random bodies", http(rng.choice(["/predict", "/invocations"]), body, token))


def broken_http(rng, token):
    kind = rng.choice(["junk", "bad method", "http/1.0", "pipelined", "bad header", "huge header"])
    body = json.dumps(body_of("predict", [trip(rng)])).encode()
    if kind == "junk":
        return Case("broken HTTP", bytes(rng.randrange(256) for _ in range(rng.randint(1, 100))) + b"\r\n\r\n")
    if kind == "bad method":
        return Case(
            "broken HTTP",
            http("/predict", body, token).replace(b"POST", rng.choice([b"PUT", b"DELETE", b"GET", b"FOO"]), 1),
        )
    if kind == "http/1.0":
        return Case(
            "broken HTTP",
            http("/predict", body, token).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
            trips=json.loads(body)["inputs"],
        )
    if kind == "pipelined":
        return Case("broken HTTP", http("/predict", body, token) * 3, trips=json.loads(body)["inputs"], replies=3)
    if kind == "bad header":
        return Case("broken HTTP", http("/predict", body, token, extra="Bad Header\r\n"))
    return Case("broken HTTP", http("/predict", body, token, extra=f"X-Filler: {'x' * 200_000}\r\n"))


def unknown_paths(rng, token):
    path = rng.choice(
        ["/", "/predict/", "/PREDICT", "/invocations/x", "/%00", "/" + "a" * 3000, "/health?x=1", "/../etc/passwd"]
    )
    method = rng.choice(["GET", "POST", "OPTIONS"])
    return Case(
        "unknown paths and methods", f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
    )


def websocket(rng, token):
    path = rng.choice(["/predict", "/invocations", "/ws"])
    key = base64.b64encode(rng.randbytes(16)).decode() if rng.random() < 0.8 else secrets.token_urlsafe(16)
    return Case(
        "WebSocket upgrades",
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode(),
    )


# (generator, share of the requests)
GENERATORS = [
    (valid, 0.20), (wrong_types, 0.14), (special_floats, 0.05), (huge_numbers, 0.05), (duplicated_keys, 0.05),
    (deep_nesting, 0.04), (truncated, 0.08), (oversized, 0.004), (content_types, 0.06), (content_lengths, 0.07),
    (slow_senders, 0.02), (bad_tokens, 0.06), (random_bodies, 0.06), (broken_http, 0.06), (unknown_paths, 0.04),
    (websocket, 0.016),
]  # fmt: skip


def generate(total: int, seed: int, token: str) -> list[Case]:
    rng = random.Random(seed)
    cases = [generator(rng, token) for generator, share in GENERATORS for _ in range(max(10, round(total * share)))]
    rng.shuffle(cases)
    return cases


# --- Sending them ---------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int | None  # None: the server closed without answering
    content_type: str = ""
    body: bytes = b""


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    status_line = await reader.readline()
    if not status_line:
        return Reply(None)
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return Reply(int(status_line.split()[1]), headers.get("content-type", ""), body)


async def exchange(port: int, case: Case) -> list[Reply]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    replies: list[Reply] = []
    try:
        if case.mode == "trickle":
            for index in range(len(case.request)):
                writer.write(case.request[index : index + 1])
                await writer.drain()
                await asyncio.sleep(0.001)
        else:
            writer.write(case.request)
        if case.mode == "leave":
            return []
        sending = asyncio.ensure_future(writer.drain())  # big bodies: the reply may come before all is sent
        for _ in range(case.replies):
            reply = await asyncio.wait_for(read_reply(reader), BODY_TIMEOUT + 120)
            replies.append(reply)
            if reply.status is None:
                break
        sending.cancel()
    except (ConnectionError, asyncio.IncompleteReadError) as error:
        replies.append(Reply(None, body=repr(error).encode()))
    finally:
        writer.close()
    return replies


def named(reply: Reply) -> bool:
    try:
        answer = json.loads(reply.body)
        message = answer.get("error") or answer.get("message") or ""
    except (ValueError, AttributeError):
        return False
    return bool(message.strip()) and any(word in message for word in NAMED)


@dataclass
class Tally:
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    unnamed: list = field(default_factory=list)
    wrong_predictions: list = field(default_factory=list)


def judge(case: Case, replies: list[Reply], tally: Tally, expected: dict) -> None:
    tally.requests += 1
    for reply in replies:
        if reply.status is None:
            tally.statuses["closed, no reply"] += 1
            continue
        if (
            reply.status == 400
            and reply.content_type.startswith("text/plain")
            and b"Invalid HTTP request" in reply.body
        ):
            tally.statuses["400 from uvicorn's HTTP parser"] += 1
            continue
        if reply.status == 400 and b"Failed to open a WebSocket connection: invalid Sec-WebSocket-Key" in reply.body:
            tally.statuses["400 from the WebSocket handshake"] += 1
            continue
        tally.statuses[reply.status] += 1
        if 400 <= reply.status < 500 and not named(reply):
            tally.unnamed.append((case.category, reply.status, reply.body[:200]))
        if reply.status == 200 and case.trips is not None:
            got = json.loads(reply.body)["predictions"]
            want = expected_predictions(case, expected)
            if got != want:
                tally.wrong_predictions.append((case.category, got, want))


def expected_predictions(case: Case, expected: dict) -> list[float]:
    minutes = [
        expected[(int(t["PULocationID"]), int(t["DOLocationID"]), float(t["trip_distance"]))] for t in case.trips or []
    ]
    return [round(value, 4) for value in minutes] if case.path == "/predict" else minutes


async def run_all(port: int, cases: list[Case], expected: dict, concurrency: int = 16) -> dict[str, Tally]:
    tallies: dict[str, Tally] = defaultdict(Tally)
    queue = list(reversed(cases))

    async def worker():
        while queue:
            case = queue.pop()
            judge(case, await exchange(port, case), tallies[case.category], expected)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tallies


async def hold_idle(port: int, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Connections that send nothing, or stop inside their headers, and stay open."""
    connections = []
    for index in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if index % 2:
            writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le")
        connections.append((reader, writer))
    return connections


# --- The run ------------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def train(home: Path) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(home), "TAXI_DATA_DIR": str(DATA_DIR)}
    (home / "budgets.yaml").write_text(SMALL_BUDGETS)
    for args in (
        ["--partition", MONTH],
        [
            "--partition",
            MONTH,
            "--select",
            "sklearn_models,xgboost_model,production_model",
            "--config",
            str(home / "budgets.yaml"),
        ],
    ):
        subprocess.run([BIN / "taxi-assets", "materialize", *args], env=env, cwd=home, check=True, capture_output=True)


def start_server(home: Path, token: str, log: Path) -> tuple[subprocess.Popen, int]:
    port_file = log.parent / "port"  # beside the log, in the run's scratch folder
    env = {**os.environ, "DAGSTER_HOME": str(home), "TAXI_API_TOKEN": token}
    command = [
        BIN / "taxi-assets",
        "serve",
        "--port",
        "0",
        "--port-file",
        port_file,
        "--reload-interval",
        "0",
        "--body-timeout",
        str(BODY_TIMEOUT),
    ]
    process = subprocess.Popen(command, env=env, cwd=home, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (port_file.exists() and port_file.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start: {log.read_text()[-3000:]}")
        time.sleep(0.1)
    port = int(port_file.read_text())
    while True:  # bound, but listening only once uvicorn has started
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=10):
                return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer: {log.read_text()[-3000:]}") from None
            time.sleep(0.2)


def ask(port: int, token: str, document: dict, path: str = "/predict") -> tuple[int, dict]:
    async def once():
        replies = await exchange(port, Case("check", http(path, json.dumps(document).encode(), token)))
        return replies[0]

    reply = asyncio.run(once())
    return reply.status or 0, json.loads(reply.body) if reply.body else {}


def expected_minutes(home: Path, cases: list[Case]) -> dict:
    """Every valid trip's minutes from the serving model, loaded in this process."""
    import dagster as dg

    import taxi_assets

    trips = {
        (int(t["PULocationID"]), int(t["DOLocationID"]), float(t["trip_distance"]))
        for c in cases
        for t in c.trips or []
    }
    trips |= {(int(t["PULocationID"]), int(t["DOLocationID"]), float(t["trip_distance"])) for t in COURSE["inputs"]}
    keys = sorted(trips)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        model = taxi_assets.load_model(instance=instance)
    minutes = model.predict([{"PULocationID": a, "DOLocationID": b, "trip_distance": c} for a, b, c in keys])
    return {key: float(value) for key, value in zip(keys, minutes)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--home", type=Path, help="a DAGSTER_HOME where 2024-02's production_model is materialized")
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as scratch:
        home = args.home or Path(scratch)
        if args.home is None:
            write_scratch_instance(home)
            train(home)
        cases = generate(args.requests, args.seed, token)
        expected = expected_minutes(home, cases)
        log = Path(scratch) / "serve.log"
        process, port = start_server(home, token, log)
        try:
            run = fuzz(process, port, token, cases, expected)
        finally:
            process.terminate()
            process.wait(timeout=60)
        server_log = log.read_text(errors="replace")
    body = report(run, server_log, len(cases))
    print(body)
    append_results("bench_fuzz: hostile clients against taxi-assets serve", body)


def report(run: dict, server_log: str, requests: int) -> str:
    """The table and the verdicts, as RESULTS.md gets them."""
    rows, failures = summary(run["tallies"], run["elapsed"])
    exceptions = Counter(re.findall(r"^(\w[\w.]*(?:Error|Exception|Disconnect|Interrupt))\b", server_log, re.M))
    ratio = run["rss_after"] / run["rss_before"]
    course_ok = (
        run["course_after"] == run["course_before"] and run["course_after"][1]["predictions"] == run["course_model"]
    )
    notes = [
        f"16 requests at a time, with 200 idle connections open throughout ({run['idle_open']} still open at the end: uvicorn has no timeout for a connection that never finishes its headers).",
        f"RSS {run['rss_before']:.0f} MiB before, {run['rss_after']:.0f} MiB after: {ratio:.2f}x (goal <= 1.2x): {'PASS' if ratio <= 1.2 else 'FAIL'}.",
        f"The course's request (ids as strings) afterwards: {run['course_after'][1].get('predictions')}, as before the run and as load_model() answers: {'PASS' if course_ok else 'FAIL'}.",
        f"Stalled bodies are answered 408 after --body-timeout {BODY_TIMEOUT} s.",
        f"Tracebacks in the server's log: {server_log.count('Traceback')} ({dict(exceptions) or 'none'}).",
    ]
    ok = not failures and ratio <= 1.2 and course_ok and "Traceback" not in server_log and requests >= 10_000
    return "\n\n".join(
        [
            table(["category", "requests", "answers", "5xx", "4xx not naming the problem", "wrong predictions"], rows),
            " ".join(notes),
            f"Overall: {'PASS' if ok else 'FAIL'}. Timing figures (the run's seconds) depend on the machine's load.",
            "Command: `python benchmarks/bench_fuzz.py`",
        ]
    )


def fuzz(process, port: int, token: str, cases: list[Case], expected: dict) -> dict:
    """Warm up, measure RSS, hold idle connections while every case is sent, warm up again,
    measure RSS again, and ask the course's request before and after."""
    course_before = ask(port, token, COURSE)
    assert course_before[0] == 200, course_before
    warm = [Case("warm-up", http("/predict", json.dumps({"inputs": [trip(random.Random(n))]}).encode(), token)) for n in range(2000)]  # fmt: skip
    asyncio.run(run_all(port, warm, expected))
    rss_before = rss_mib(process.pid)

    async def with_idle_connections():
        idle = await hold_idle(port, 200)
        started = time.monotonic()
        tallies = await run_all(port, cases, expected)
        elapsed = time.monotonic() - started
        still_open = sum(not reader.at_eof() for reader, _ in idle)  # the server closed none of them
        for _, writer in idle:
            writer.close()
        return tallies, elapsed, still_open

    tallies, elapsed, idle_open = asyncio.run(with_idle_connections())
    asyncio.run(run_all(port, warm, expected))  # the same warm-up again: what the server holds when serving
    course = [(int(t["PULocationID"]), int(t["DOLocationID"]), float(t["trip_distance"])) for t in COURSE["inputs"]]
    return {
        "tallies": tallies, "elapsed": elapsed, "idle_open": idle_open, "rss_before": rss_before,
        "rss_after": rss_mib(process.pid), "course_before": course_before, "course_after": ask(port, token, COURSE),
        "course_model": [round(expected[key], 4) for key in course],
    }  # fmt: skip


def summary(tallies: dict[str, Tally], elapsed: float) -> tuple[list, int]:
    """The table's rows, one per category and the total, and how many answers failed."""
    rows, fivexx, unnamed, wrong = [], 0, 0, 0
    for category, tally in sorted(tallies.items()):
        errors = sum(n for status, n in tally.statuses.items() if isinstance(status, int) and status >= 500)
        fivexx, unnamed, wrong = fivexx + errors, unnamed + len(tally.unnamed), wrong + len(tally.wrong_predictions)
        answers = ", ".join(
            f"{status}: {n}" for status, n in sorted(tally.statuses.items(), key=lambda item: str(item[0]))
        )
        rows.append(
            [category, f"{tally.requests:,}", answers, errors, len(tally.unnamed), len(tally.wrong_predictions)]
        )
        for sample in (tally.unnamed + tally.wrong_predictions)[:3]:
            print("  example:", category, sample)
    total = sum(t.requests for t in tallies.values())
    rows.append(["**all**", f"**{total:,}**", f"in {elapsed:.0f} s", f"**{fivexx}**", f"**{unnamed}**", f"**{wrong}**"])
    return rows, fivexx + unnamed + wrong


if __name__ == "__main__":
    main()
