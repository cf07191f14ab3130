"""Real servers on 127.0.0.1 for tests: a static file server with scripted failures, moto's S3 (in
this process, or every AWS service moto has as its own ``moto_server`` process), an ECS agent's
task metadata endpoint, an SMTP server, and the inference server as its own process.

No port is guessed and then handed to a server: between the guess and the server's bind, any other
process (an outgoing connection's ephemeral port, another test) can take it. Servers in this
process and the ones we start ourselves bind port 0 and report what they got; servers that cannot
(Dagster's, MLflow's, PostgreSQL) are started by ``stack.Processes.start_on_a_free_port``,
which retries on another port when the server says its port was taken."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def unused_port() -> int:
    """A port nobody listens on now, below the kernel's ephemeral range: outgoing connections
    never take it, so only a process that binds it on purpose can. For servers that cannot bind
    port 0 and report theirs; always started through ``Processes.start_on_a_free_port``, which
    retries if the port was taken all the same."""
    import random

    low = max(1024, min(_ephemeral_ports()[0], 32768) - 12000)
    high = min(_ephemeral_ports()[0], 32768) - 1
    for _ in range(200):
        port = random.randint(low, high)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between {low} and {high}")


PORT_TAKEN = ("address already in use", "errno 98", "eaddrinuse", "could not bind", "port is already in use")


def port_was_taken(log: str) -> bool:
    """Whether a server's output says it could not bind its port."""
    text = log.lower()
    return any(phrase in text for phrase in PORT_TAKEN)


class FileServer:
    """Serves ``root`` over HTTP (GET and HEAD); ``fail_first[path] = n`` answers 503 to the first
    n requests for a path. ``requests`` counts them as "GET path" / "HEAD path"."""

    def __init__(self, root: Path):
        self.root = root
        self.fail_first: dict[str, int] = {}
        self.requests: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                self._answer(send_body=True)

            def do_HEAD(self):  # noqa: N802
                self._answer(send_body=False)

            def _answer(self, send_body: bool):
                path = self.path.lstrip("/")
                server.requests[f"{self.command} {path}"] += 1
                server.attempts[path] += 1
                if server.attempts[path] <= server.fail_first.get(path, 0):
                    self.send_error(503, "Service Unavailable")
                    return
                file = (server.root / path).resolve()
                if server.root.resolve() not in file.parents or not file.is_file():
                    self.send_error(404, "Not Found")
                    return
                data = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{file.stat().st_mtime_ns}"')
                self.end_headers()
                if send_body:
                    self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FileServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _reset_moto(endpoint: str) -> None:
    """moto keeps its buckets in module state, shared by every server in this process: start each
    server empty (the chaos soak's files reached the next test's sensor before this)."""
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30).close()


@contextmanager
def moto_s3_server():
    """moto's standalone S3 on 127.0.0.1 (port 0: the system picks it), empty; yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    try:
        _reset_moto(endpoint)
        yield endpoint
    finally:
        server.stop()


# moto 5.2's RunTask adds up the containers' own memory and fails (a TypeError, HTTP 500) when a
# container has none, as Fargate allows: the task-level memory is enough there. The server runs
# with that fix and the ECS agent's side below; everything else is moto's own.
_MOTO_SERVER = """
import sys
from moto.ecs.models import EC2ContainerServiceBackend as Backend

requirements = Backend._calculate_task_resource_requirements
_MEMORY = ("memory", "memoryReservation", "Memory", "MemoryReservation")


def fargate_aware(task_definition):
    shadow = type(task_definition).__new__(type(task_definition))
    shadow.__dict__.update(task_definition.__dict__)
    shadow.container_definitions = [
        c if any(c.get(k) is not None for k in _MEMORY) else {**c, "memoryReservation": 0}
        for c in task_definition.container_definitions
    ]
    return requirements(shadow)


Backend._calculate_task_resource_requirements = staticmethod(fargate_aware)

# ECS's agent side, which moto leaves out (it starts no containers): the tests' agent
# (taxi_assets_tests/ecs_agent.py) runs the tasks and reports their state with the action the
# real agent uses, SubmitTaskStateChange. StopTask then does what it does on ECS: the desired
# status becomes STOPPED, and the task is STOPPED once the agent has stopped its container and
# reported its exit code (moto marked it STOPPED at once, exit code 0). A container has no exit
# code before it stops (moto gave every one 0).
from moto.core.responses import ActionResult
from moto.core.utils import utcnow
from moto.ecs.exceptions import InvalidParameterException
from moto.ecs.models import Container
from moto.ecs.responses import EC2ContainerServiceResponse as Responses


def find_task(backend, cluster, task):
    tasks = backend.tasks.get(backend._get_cluster(cluster).name, {})
    found = [t for arn, t in tasks.items() if task in (arn, arn.rsplit("/", 1)[-1])]
    if not found:
        raise InvalidParameterException(f"The referenced task was not found: {task}")
    return found[0]


def stop_task(self, cluster_str, task_str, reason):
    task = find_task(self, cluster_str, task_str)
    if task.desired_status != "STOPPED":
        task.desired_status, task.stopping_at = "STOPPED", utcnow()
        task.stop_code, task.stopped_reason = "UserInitiated", reason or "Task stopped by user"
    return task


def submit_task_state_change(self):
    task = find_task(self.ecs_backend, self._get_param("cluster", "default"), self._get_param("task"))
    for change in self._get_param("containers") or []:
        for container in task.containers:
            if container.name == change["containerName"]:
                container.last_status = change.get("status", container.last_status)
                container.exitCode = change.get("exitCode")
                container.reason = change.get("reason")
                container.runtime_id = change.get("runtimeId", getattr(container, "runtime_id", None))
    status, now = self._get_param("status"), utcnow()
    if status == "RUNNING" and task.last_status != "STOPPED":
        task.last_status, task.started_at = "RUNNING", now
    elif status == "STOPPED":
        task.last_status, task.desired_status, task.stopped_at = "STOPPED", "STOPPED", now
        task.execution_stopped_at = self._get_param("executionStoppedAt") or now
        if not getattr(task, "stop_code", None):  # not StopTask's: the container exited, or never started
            exited = any(getattr(container, "exitCode", None) is not None for container in task.containers)
            task.stop_code = "EssentialContainerExited" if exited else "TaskFailedToStart"
            task.stopped_reason = self._get_param("reason") or ""
    return ActionResult({"acknowledgment": "ACK"})


container_init = Container.__init__


def no_exit_code_yet(self, *args, **kwargs):
    container_init(self, *args, **kwargs)
    self.exitCode = None


# RunTask is idempotent on ECS: a request repeated with the same clientToken (dagster-aws sends
# one, so that botocore's retry of a timed-out or 5xx RunTask starts nothing twice) gets the tasks
# the first one started. moto ignores the token and started a second run worker for one launch.
import threading

run_task, started_by_token, token_lock = Responses.run_task, {}, threading.Lock()


def idempotent_run_task(self):
    token = self._get_param("clientToken")
    if not token:
        return run_task(self)
    with token_lock:
        if token in started_by_token:
            print(f"RunTask repeated with clientToken {token}: the tasks it started", flush=True)
        else:
            started_by_token[token] = run_task(self)
        return started_by_token[token]


Backend.stop_task = stop_task
Responses.submit_task_state_change = submit_task_state_change
Responses.run_task = idempotent_run_task
Container.__init__ = no_exit_code_yet

# moto's own server (moto.server.main), bound to port 0 first; the port goes to the file in argv[1].
import os
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

app = DomainDispatcherApplication(create_backend_app)
server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
os.environ["MOTO_PORT"] = str(server.port)  # moto builds some URLs with it
with open(sys.argv[1] + ".tmp", "w") as file:
    file.write(str(server.port))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
server.serve_forever()
"""


@contextmanager
def moto_server_process(log_directory: Path, settings: dict[str, str] | None = None):
    """moto's standalone server (every service it emulates: ECS, IAM, STS, EC2, S3, Secrets Manager,
    CloudWatch Logs, ...) as its own process on 127.0.0.1, on a port it binds itself; yields the
    endpoint URL. ``settings``: moto's environment variables (``MOTO_IAM_LOAD_MANAGED_POLICIES``,
    ...). Its output goes to ``moto.log`` in ``log_directory``; the process group is killed at exit."""
    port_file = log_directory / f"moto-{os.getpid()}-{time.monotonic_ns()}.port"
    with open(log_directory / "moto.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _MOTO_SERVER, str(port_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=os.environ | (settings or {}),
        )
    try:
        port = wait_for_port_file(port_file, process, lambda: (log_directory / "moto.log").read_text(), "moto_server")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=10):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto_server did not answer: {(log_directory / 'moto.log').read_text()}"
                    ) from None
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def wait_for_port_file(path: Path, process: subprocess.Popen, log: Callable[[], str], what: str, timeout=180) -> int:
    """The port a server wrote to ``path`` once it was bound; fails with its log if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            text = path.read_text().strip()
            if text:
                return int(text)
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before listening:\n{log()[-4000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not report a port within {timeout} s:\n{log()[-4000:]}")
        time.sleep(0.1)


@contextmanager
def inference_server(env: dict[str, str], cwd: Path, *args: str, log: Path | None = None):
    """``taxi-assets serve`` as its own process on a port it binds itself (``--port 0``);
    yields ``(process, port)`` once it listens, and stops it at exit. Its output goes to ``log``
    (or nowhere)."""
    import shutil
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="taxi-serve-"))  # not in cwd: tests check nothing lands there
    port_file = scratch / "port"
    output = open(log, "ab") if log else subprocess.DEVNULL
    command = [str(Path(sys.executable).parent / "taxi-assets"), "serve", "--port", "0", "--port-file", str(port_file)]
    process = subprocess.Popen([*command, *args], env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
    try:
        port = wait_for_port_file(
            port_file, process, lambda: log.read_text(errors="replace") if log else "(no log)", "taxi-assets serve"
        )
        yield process, port
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
        if log:
            output.close()  # type: ignore[union-attr]


def moto_api(endpoint: str, path: str, body: dict | str) -> dict:
    """POST to moto's own control API (``/moto-api/...``): ``reset-auth`` (a plain-text count),
    ``state-manager/set-transition`` (JSON)."""
    data = body if isinstance(body, str) else json.dumps(body)
    request = urllib.request.Request(
        f"{endpoint}/moto-api/{path}", data=data.encode(), headers={"Content-Type": "text/plain"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return json.loads(text) if text.strip() else {}


class EcsMetadataServer:
    """The ECS agent's task metadata endpoint, version 4, for one container of one task:
    ``GET /v4/<id>`` answers ``container()`` and ``GET /v4/<id>/task`` answers ``task()``
    (callables, so they may read the task's state when asked). Set ``uri`` as the container's
    ``ECS_CONTAINER_METADATA_URI_V4``. ``requests`` counts the paths asked for."""

    def __init__(self, container: Callable[[], dict], task: Callable[[], dict]):
        self.requests: Counter[str] = Counter()
        server = self
        prefix = "/v4/" + os.urandom(8).hex()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                path = self.path.split("?")[0].rstrip("/")
                server.requests[path.removeprefix(prefix) or "/"] += 1
                if path == prefix:
                    body = container()
                elif path == f"{prefix}/task":
                    body = task()
                else:
                    self.send_error(404, "Not Found")
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}{prefix}"

    def __enter__(self) -> EcsMetadataServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for ``host`` (also its own CA) and its key, as PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class SmtpServer:
    """aiosmtpd on 127.0.0.1 that requires STARTTLS and AUTH (``user``/``password``) and keeps
    every delivered message in ``messages`` (``email.message.Message``); ``logins`` records
    (user, accepted) per AUTH attempt. ``tls=False`` gives a plaintext server without STARTTLS."""

    def __init__(self, directory: Path, user: str, password: str, tls: bool = True):
        import email
        import ssl

        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.messages: list = []
        self.logins: list[tuple[str, bool]] = []
        # Bound here, on port 0, and handed to aiosmtpd: the port is ours before anyone learns it.
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.cert, key = self_signed_certificate(directory)
        server = self

        class Handler:
            async def handle_DATA(self, smtp, session, envelope):  # noqa: N802 - aiosmtpd's API
                message = email.message_from_bytes(envelope.content)
                message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
                message["X-Was-Encrypted"] = str(session.ssl is not None)
                server.messages.append(message)
                return "250 OK"

        def authenticate(smtp, session, envelope, mechanism, auth_data):
            ok = isinstance(auth_data, LoginPassword) and (auth_data.login.decode(), auth_data.password.decode()) == (
                user,
                password,
            )
            self.logins.append((auth_data.login.decode() if isinstance(auth_data, LoginPassword) else "?", ok))
            return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd replies 535

        options = {}
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.cert, key)
            options = {"tls_context": context, "require_starttls": True, "auth_require_tls": True}
        bound = self.socket

        class BoundController(Controller):
            def _create_server(self):
                return self.loop.create_server(self._factory_invoker, sock=bound, ssl=self.ssl_context)

        self.controller = BoundController(
            Handler(),
            hostname="127.0.0.1",
            port=self.port,
            authenticator=authenticate,
            auth_required=tls,
            ready_timeout=120,  # a busy machine may take seconds to start a thread and its loop
            **options,
        )

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()
        self.socket.close()
