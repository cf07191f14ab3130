"""The production-like stack on one machine, as real processes on 127.0.0.1:

- a throwaway PostgreSQL 15 cluster (initdb/pg_ctl, as the ``postgres`` user when we are root),
- moto's S3 (trip files in one bucket; asset values, compute logs and MLflow artifacts in another),
- an MLflow tracking server (backend store in PostgreSQL, artifacts in the S3 bucket),
- the code location as ``dagster api grpc`` (as the Dockerfile runs it), ``dagster-webserver`` and ``dagster-daemon``
  on ``deploy/dagster.yaml`` with the production resources (``TAXI_ENV=production``),
- and, when asked for (``start("serve")``), the inference server ``taxi-assets serve`` on the same
  instance, with ``TAXI_API_TOKEN`` from ``environment``.

Each service can be killed and started again on the same port (what ECS does to a task: the
service's address stays), which the production test and the chaos soak use.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from taxi_assets_tests.helpers import REPO_ROOT
from taxi_assets_tests.servers import moto_s3_server, port_was_taken, unused_port
from taxi_assets_tests.stack import GraphQL, Processes, wait_for

BIN = Path(sys.executable).parent
TRIPS_BUCKET, ASSETS_BUCKET = "taxi-trips", "taxi-assets"
PG_PASSWORD = "pg-test-secret"  # a throwaway cluster's, made and deleted by the test


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its server tools as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class Postgres:
    """A fresh cluster with password (scram) auth on a port it keeps across restarts.
    ``require_tls``: TCP clients must use TLS (a self-signed certificate for 127.0.0.1), as RDS
    with ``rds.force_ssl`` (deploy/terraform/database.tf) requires."""

    def __init__(self, require_tls: bool = False):
        if not shutil.which("initdb") or not shutil.which("pg_ctl"):
            raise RuntimeError("PostgreSQL's initdb and pg_ctl must be on PATH for the production-like stack")
        self.root = Path(tempfile.mkdtemp(prefix="taxi-pg-"))
        self.data = self.root / "data"
        (self.root / "pwfile").write_text(PG_PASSWORD)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (self.root, self.root / "pwfile"):
                os.chown(path, user.pw_uid, user.pw_gid)
        subprocess.run(
            as_postgres(
                ["initdb", "-D", str(self.data), "-U", "postgres", "--auth=scram-sha-256",
                 f"--pwfile={self.root / 'pwfile'}", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
        )  # fmt: skip
        self.port = 0
        self.settings: dict = {}
        self.tls_options = self._require_tls() if require_tls else ""

    def _require_tls(self) -> str:
        """A certificate and key the server reads, and a pg_hba.conf that refuses TCP without TLS."""
        from taxi_assets_tests.servers import self_signed_certificate

        certificate, key = self_signed_certificate(self.root)
        (self.data / "pg_hba.conf").write_text(
            "local all all scram-sha-256\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "hostnossl all all 127.0.0.1/32 reject\n"
        )
        key.chmod(0o600)  # PostgreSQL refuses a key others may read
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (certificate, key, self.data / "pg_hba.conf"):
                os.chown(path, user.pw_uid, user.pw_gid)
        return f" -c ssl=on -c ssl_cert_file={certificate} -c ssl_key_file={key}"

    def _pg_ctl(self, port: int) -> subprocess.CompletedProcess:
        options = f"-p {port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off{self.tls_options}"
        log = self.root / "postgres.log"
        return subprocess.run(
            as_postgres(["pg_ctl", "-D", str(self.data), "-o", options, "-l", str(log), "-w", "-t", "300", "start"]),
            capture_output=True,
            text=True,
        )

    def start(self, attempts: int = 5) -> dict:
        """Start on the cluster's port (a free one the first time; another if it was taken
        before PostgreSQL could bind it). Returns the connection settings."""
        for _ in range(attempts if not self.port else 1):
            port = self.port or unused_port()
            started = self._pg_ctl(port)
            if started.returncode == 0:
                self.port = port
                self.settings = {"host": "127.0.0.1", "port": port, "user": "postgres", "password": PG_PASSWORD}
                return self.settings
            output = started.stdout + started.stderr + self.log()
            if self.port or not port_was_taken(output):
                raise RuntimeError(f"PostgreSQL did not start:\n{output[-4000:]}")
        raise RuntimeError(f"PostgreSQL: every port tried was taken ({attempts} tries)")

    def kill(self) -> None:
        """What a failover looks like to clients: the server gone at once, connections cut."""
        subprocess.run(as_postgres(["pg_ctl", "-D", str(self.data), "-m", "immediate", "stop"]), capture_output=True)

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def create_databases(self, *names: str) -> None:
        import psycopg2

        connection = psycopg2.connect(dbname="postgres", **self.settings)
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with connection.cursor() as cursor:
            for name in names:
                cursor.execute(f"CREATE DATABASE {name}")
        connection.close()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def sql(settings: dict, query: str, *args) -> list[tuple]:
    import psycopg2

    connection = psycopg2.connect(dbname="dagster", **settings)
    try:
        with connection.cursor() as cursor:
            cursor.execute(query, args)
            return cursor.fetchall()
    finally:
        connection.close()


class ProductionStack:
    """The whole stack (see the module's docstring), started by ``with``; ``env`` is what every
    Dagster process gets, ``graphql`` talks to the webserver, ``s3`` to the buckets."""

    SERVICES = ("mlflow", "code-server", "webserver", "daemon")  # started by ``with``; "serve" on demand

    def __init__(self, root: Path, environment: dict[str, str] | None = None):
        self.root, self.extra = root, environment or {}
        self.home = root / "dagster_home"
        self.ports: dict[str, int] = {}
        self._exit = ExitStack()

    def __enter__(self) -> ProductionStack:
        import boto3

        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / "deploy" / "dagster.yaml", self.home / "dagster.yaml")
        try:
            self.postgres = Postgres()
            self._exit.callback(self.postgres.close)
            self.pg = self.postgres.start()
            self.postgres.create_databases("dagster", "mlflow")
            self.endpoint = self._exit.enter_context(moto_s3_server())
            self.s3 = boto3.client(
                "s3", endpoint_url=self.endpoint, region_name="us-east-1",
                aws_access_key_id="test", aws_secret_access_key="test",
            )  # fmt: skip
            for bucket in (TRIPS_BUCKET, ASSETS_BUCKET):
                self.s3.create_bucket(Bucket=bucket)
            self.env = self._environment()
            self.processes = Processes(self.root, self.env)
            self._exit.callback(self.processes.stop_all)
            for service in self.SERVICES:
                self.start(service)
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._exit.close()

    def _environment(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("TAXI_", "DAGSTER_", "MLFLOW_", "AWS_"))}
        return (
            base
            | {
                "DAGSTER_HOME": str(self.home),
                "DAGSTER_PG_HOST": self.pg["host"],
                "DAGSTER_PG_PORT": str(self.pg["port"]),
                "DAGSTER_PG_DB": "dagster",
                "DAGSTER_PG_USERNAME": self.pg["user"],
                "DAGSTER_PG_PASSWORD": self.pg["password"],
                "DAGSTER_MAX_CONCURRENT_RUNS": "2",
                "DAGSTER_BACKFILL_RETRY_DEFINITION_CHANGED_ERROR": "1",  # as deploy/: see ecs.tf
                "TAXI_ENV": "production",
                "TAXI_S3_BUCKET": ASSETS_BUCKET,
                "TAXI_DATA_S3_BUCKET": TRIPS_BUCKET,
                "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                "MLFLOW_S3_ENDPOINT_URL": self.endpoint,  # where the MLflow server stores artifacts (moto)
                "TAXI_SENSOR_INTERVAL_SECONDS": "2",  # the default: every pass of the daemon (5 s)
            }
            | self.extra
        )

    # Services ------------------------------------------------------------------------------------

    def _command(self, service: str, port: int) -> list[str]:
        pg = self.pg
        return {
            "mlflow": [
                str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                "--backend-store-uri",
                f"postgresql+psycopg2://{pg['user']}:{pg['password']}@127.0.0.1:{pg['port']}/mlflow",
                "--artifacts-destination", f"s3://{ASSETS_BUCKET}/mlflow",
            ],
            "code-server": [
                str(BIN / "dagster"), "api", "grpc", "-h", "127.0.0.1", "-p", str(port),
                "-m", "taxi_assets.definitions", "--location-name", "taxi_assets",
            ],
            "webserver": [
                str(BIN / "dagster-webserver"), "-w", str(self.workspace), "-h", "127.0.0.1", "-p", str(port),
                "--db-pool-recycle", "10",  # as deploy/terraform/ecs.tf
            ],
            "serve": [str(BIN / "taxi-assets"), "serve", "--port", str(port)],
        }[service]  # fmt: skip

    def _ready(self, service: str, port: int) -> bool:
        if service == "serve":  # listening: any answer, 503 before the first decision included
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=10):
                    return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                return False
        if service == "mlflow":
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
                    return response.status == 200
            except OSError:
                return False
        if service == "code-server":
            from dagster._grpc.client import DagsterGrpcClient

            try:  # the code loaded, not only the server listening
                DagsterGrpcClient(port=port, host="127.0.0.1").list_repositories()
                return True
            except Exception:
                return False
        try:
            return GraphQL(f"http://127.0.0.1:{port}").location_loaded()
        except OSError:
            return False

    @property
    def workspace(self) -> Path:
        return self.root / "workspace.yaml"

    def start(self, service: str, timeout: float = 240) -> None:
        """Start ``service`` (again: on its port, as ECS restarts a task behind a fixed address)."""
        if service == "daemon":
            self.processes.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(self.workspace)])
            return
        if service in self.ports:
            port = self.ports[service]
            self.processes.start(service, self._command(service, port))
            wait_for(lambda: self._ready(service, port), timeout, f"{service} on port {port}")
        else:
            port = self.processes.start_on_a_free_port(
                service, lambda port: self._command(service, port), lambda port: self._ready(service, port), timeout
            )
            self.ports[service] = port
        if service == "mlflow":
            self.env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
        if service == "code-server":
            self.workspace.write_text(
                f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {port}\n"
                "      location_name: taxi_assets\n"
            )

    def kill(self, service: str) -> None:
        """SIGKILL to the service's whole process group."""
        if service == "postgres":
            self.postgres.kill()
        else:
            self.processes.kill(service)

    def restart(self, service: str) -> None:
        if service == "postgres":
            self.postgres.start()
        else:
            self.start(service)

    @property
    def graphql(self) -> GraphQL:
        return GraphQL(f"http://127.0.0.1:{self.ports['webserver']}")

    @property
    def mlflow_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    def log(self, *services: str) -> str:
        return "".join(f"--- {service}\n{self.processes.log(service)}\n" for service in services)
