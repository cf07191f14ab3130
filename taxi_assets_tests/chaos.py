"""The chaos soak (issue 21): an asset backfill of the whole graph on the production-like stack
(``production_stack.py``) while run workers, step processes, the daemon, the code server, the
MLflow server and PostgreSQL are killed with SIGKILL at random moments. A supervisor restarts a
dead service a few seconds later, as ECS restarts a task; PostgreSQL comes back after 20 s, as an
RDS failover looks to its clients. At the end, what must hold is checked from the stores
themselves (PostgreSQL, S3, the MLflow server, the inference server) and returned as a table.

The fault schedule (which kind, when) comes from a seed, so a failing soak can be replayed; which
run worker or step process a "run" fault hits depends on what is running at that moment.

Used by ``benchmarks/bench_chaos.py`` (the whole history, with and without faults) and by
``production/test_chaos.py`` (a few months, a few faults, in CI).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES

from taxi_assets.defs.automation import RETRAINING_RUN_TAGS
from taxi_assets.lib.months import next_month
from taxi_assets_tests.helpers import DATA_DIR
from taxi_assets_tests.production_stack import TRIPS_BUCKET, ProductionStack, sql
from taxi_assets_tests.servers import SmtpServer

# What the issue asks of the whole soak: kills per kind.
SOAK_FAULTS = {"run": 10, "daemon": 3, "code-server": 2, "mlflow": 2, "postgres": 1}
SUPERVISED = ("mlflow", "code-server", "webserver", "daemon", "serve")
RESTART_DELAY_SECONDS = 3.0  # "a few seconds", as ECS replaces a stopped task
POSTGRES_DOWN_SECONDS = 20.0
BUDGET_SLACK_SECONDS = 20.0  # the step budget's promise (docs/retraining-and-serving.md)
STEP_BUDGETS = {"xgboost_model": 30.0, "sklearn_models.tune_and_train": 30.0}
# Small budgets: the soak is about faults, not models. Asset backfill runs get this run config
# whichever subset of the graph each run holds.
SMALL_BUDGETS = {
    "ops": {
        "sklearn_models": {
            "ops": {
                "load_models": {
                    "config": {
                        "models": ["LinearRegression"],
                        "max_evaluations": 2,
                        "timeout_seconds": STEP_BUDGETS["sklearn_models.tune_and_train"],
                    }
                }
            }
        },
        "xgboost_model": {"config": {"max_evaluations": 2, "timeout_seconds": STEP_BUDGETS["xgboost_model"]}},
    }
}
PREPARED = ("raw_trips", "cleaned_trips")  # every month, the first one included
TRAINED = ("training_set", "sklearn_models", "xgboost_model", "production_model", "trip_predictions")
BACKFILL_ENDED = {status.value for status in BULK_ACTION_TERMINAL_STATUSES}  # Dagster's own list
ACTIVE = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
COURSE_BODY = {
    "inputs": [
        {"DOLocationID": "239", "PULocationID": "236", "trip_distance": 1.98},
        {"DOLocationID": "170", "PULocationID": "65", "trip_distance": 6.54},
    ]
}


@dataclass
class Fault:
    at: float  # seconds after the backfill was launched
    kind: str
    target: str = ""  # what was hit, filled in when injected
    injected_at: float | None = None


def fault_schedule(seed: int, counts: dict[str, int], gap: tuple[float, float]) -> list[Fault]:
    """The kinds in a seeded random order, each a seeded random gap after the previous one."""
    rng = random.Random(seed)
    kinds = [kind for kind, count in counts.items() for _ in range(count)]
    rng.shuffle(kinds)
    faults, at = [], 0.0
    for kind in kinds:
        at += rng.uniform(*gap)
        faults.append(Fault(round(at, 1), kind))
    return faults


@dataclass
class Outcome:
    """What the soak saw, and the end conditions as (what, held, detail) rows."""

    seconds: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    restarts: Counter = field(default_factory=Counter)
    unplanned_deaths: list[str] = field(default_factory=list)
    retries: int = 0
    most_retries_of_a_run: int = 0  # the deepest retry of any one run (its dagster/retry_number)
    runs: int = 0
    conditions: list[tuple[str, bool, str]] = field(default_factory=list)
    backfill_status: str = ""

    @property
    def held(self) -> bool:
        return all(ok for _, ok, _ in self.conditions)

    @property
    def needed_a_person(self) -> list[str]:
        """Nothing is done by hand during a soak: what a person would have to fix is what did not hold."""
        return [f"{what}: {detail}" for what, held, detail in self.conditions if not held]


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


SPAWNED = "multiprocessing.spawn import spawn_main"  # a run worker or a step process


def run_workers() -> list[int]:
    """Run workers on this machine: the processes the code server's ``dagster api grpc`` spawned
    for runs (each run's steps are spawned by its worker in turn), oldest pid first."""
    return sorted(
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and SPAWNED in _command_line(int(entry.name))
        and " api grpc" in _command_line(_parent(int(entry.name)))
    )


FORKSERVER = "multiprocessing.forkserver import main"  # forks the training jobs' step processes


def step_processes(worker: int) -> list[int]:
    """A run worker's step processes: spawned by it, or forked by its forkserver (the executor of
    the retraining and model_training jobs)."""
    found = []
    for child in _children(worker):
        line = _command_line(child)
        found += [child] if SPAWNED in line else _children(child) if FORKSERVER in line else []
    return sorted(found)


class Supervisor(threading.Thread):
    """Restarts a supervised service whose process is gone, RESTART_DELAY_SECONDS later (again
    and again while it cannot start, e.g. while PostgreSQL is down). A death the injector did not
    cause is recorded as unplanned: the soak reports it."""

    def __init__(self, stack: ProductionStack, outcome: Outcome):
        super().__init__(daemon=True, name="supervisor")
        self.stack, self.outcome = stack, outcome
        self.expected: set[str] = set()  # killed by the injector, not a crash
        self.stopping = threading.Event()
        self.lock = threading.Lock()  # the injector and the supervisor both start and kill
        self.postgres_back: threading.Timer | None = None

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            for service in SUPERVISED:
                process = self.stack.processes.running.get(service)
                if process is not None and process.poll() is None:
                    continue
                if service not in self.expected and process is not None:
                    self.outcome.unplanned_deaths.append(f"{service} exited {process.returncode}")
                self.expected.discard(service)
                self.stopping.wait(RESTART_DELAY_SECONDS)
                with self.lock:
                    try:
                        self.stack.processes.running.pop(service, None)
                        self.stack.start(service, timeout=240)
                        self.outcome.restarts[service] += 1
                    except (RuntimeError, TimeoutError) as error:  # tried again on the next pass
                        self.outcome.unplanned_deaths.append(f"{service} did not restart: {str(error)[:200]}")

    def kill(self, service: str) -> None:
        with self.lock:
            self.expected.add(service)
            self.stack.kill(service)


def _inject(fault: Fault, stack: ProductionStack, supervisor: Supervisor, rng: random.Random, running) -> bool:
    """One fault; False when a "run" fault found no run worker before the backfill ended.
    PostgreSQL comes back POSTGRES_DOWN_SECONDS later, on a timer: other faults go on meanwhile."""
    if fault.kind == "postgres":
        stack.kill("postgres")
        fault.target = f"PostgreSQL down {POSTGRES_DOWN_SECONDS:.0f} s"
        supervisor.postgres_back = threading.Timer(POSTGRES_DOWN_SECONDS, lambda: stack.restart("postgres"))
        supervisor.postgres_back.start()
        return True
    if fault.kind == "code-server-under-a-run":
        # Killed while a run worker is alive, so the run is lost with it: run monitoring must fail
        # it (lib/run_launcher.py asks the restarted server) and run retries re-execute it.
        while running() and not run_workers():
            time.sleep(0.2)
        supervisor.kill("code-server")
        fault.target = "code-server (with a run worker alive)"
        return True
    if fault.kind != "run":
        supervisor.kill(fault.kind)
        fault.target = fault.kind
        return True
    while running():
        workers = run_workers()
        if workers:
            worker = rng.choice(workers)
            steps = step_processes(worker)
            if steps and rng.random() < 0.5:  # one step process (an OOM kill)
                victim = rng.choice(sorted(steps))
                fault.target = f"step process {victim} of run worker {worker}"
                os.kill(victim, signal.SIGKILL)
            else:  # the run worker and its step processes (the task lost)
                fault.target = f"run worker {worker} and {len(steps)} step process(es)"
                for pid in [worker, *steps]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            return True
        time.sleep(0.5)
    return False


def first_month(asset: str, months: list[str]) -> str:
    """Where the backfill starts for ``asset``: data preparation from the first month, training
    from the second (the first has no previous month), the month's predictions from the third
    (the first month with an earlier decision to score it; Dagster counts an asset the run did not
    output as failed)."""
    return months[0] if asset in PREPARED else months[2] if asset == "trip_predictions" else months[1]


# Faults that can fail a run: every one of them may land on the same month's runs (a run kill, then
# its retry caught by the code server's kill, then by MLflow down...). CI's short soak saw one
# month's run fail three times, past the two retries the retraining job ships with.
RUN_FAILING = ("run", "code-server", "code-server-under-a-run", "mlflow", "postgres")


def soak_run_tags(faults: dict[str, int]) -> dict[str, str]:
    """The retraining job's run tags, with retries enough that the soak's own schedule cannot use
    them up: what the soak tests is that every fault is noticed and recovered from. What a month
    whose retries run out gets (one email, for its last attempt) is test_observability's;
    production keeps the job's two retries."""
    retries = max(int(RETRAINING_RUN_TAGS["dagster/max_retries"]), sum(faults.get(kind, 0) for kind in RUN_FAILING))
    return {**RETRAINING_RUN_TAGS, "dagster/max_retries": str(retries)}


def launch_backfill(stack: ProductionStack, months: list[str], run_config: dict, tags: dict[str, str]) -> str:
    """The whole graph for ``months`` through GraphQL, as the UI's "Materialize all" does."""
    by_asset = [
        {
            "assetKey": {"path": [asset]},
            "partitions": {"range": {"start": first_month(asset, months), "end": months[-1]}},
        }
        for asset in (*PREPARED, *TRAINED)
    ]
    answer = stack.graphql(
        """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
             __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message }
             ... on InvalidStepError { invalidStepKey } ... on InvalidOutputError { invalidOutputName } } }""",
        {
            "params": {
                "partitionsByAssets": by_asset,
                "runConfigData": run_config,
                "tags": [{"key": key, "value": value} for key, value in tags.items()],
                "title": "chaos soak",
            }
        },
    )["launchPartitionBackfill"]
    if answer["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"backfill not launched: {answer}")
    return answer["backfillId"]


def backfill_status(stack: ProductionStack, backfill: str) -> str | None:
    try:
        rows = sql(stack.pg, "SELECT status FROM bulk_actions WHERE key = %s", backfill)
    except Exception:  # PostgreSQL down: not known now
        return None
    return rows[0][0] if rows else None


def runs_of(stack: ProductionStack) -> list[tuple[str, str, dict]]:
    """(run id, status, tags) of every run, oldest first."""
    rows = sql(stack.pg, "SELECT run_id, status FROM runs ORDER BY create_timestamp")
    tags: dict[str, dict] = {run_id: {} for run_id, _ in rows}
    for run_id, key, value in sql(stack.pg, "SELECT run_id, key, value FROM run_tags"):
        tags.setdefault(run_id, {})[key] = value
    return [(run_id, status, tags[run_id]) for run_id, status in rows]


def _wait(condition, timeout: float, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # a store restarting: ask again
            value = None
        if value:
            return value
        time.sleep(interval)
    return None


def months_between(first: str, last: str) -> list[str]:
    months = [first]
    while months[-1] != last:
        months.append(next_month(months[-1]))
    return months


def soak(root: Path, first: str, last: str, faults: dict[str, int], seed: int, gap: tuple[float, float]) -> Outcome:
    """Upload the months' files, start the stack (with the inference server and an SMTP server
    for failure alerts), launch the backfill, inject the seeded faults while it runs, wait until
    everything settles, and check the end conditions."""
    months = months_between(first, last)
    smtp_dir = root / "smtp"
    smtp_dir.mkdir(parents=True, exist_ok=True)
    outcome, password = Outcome(), secrets.token_hex(8)
    with SmtpServer(smtp_dir, user="alerts@taxi", password=password) as smtp:
        environment = {
            "TAXI_API_TOKEN": secrets.token_hex(16),
            "TAXI_SMTP_HOST": "127.0.0.1",
            "TAXI_SMTP_PORT": str(smtp.port),
            "TAXI_SMTP_USER": "alerts@taxi",
            "TAXI_SMTP_PASSWORD": password,
            "TAXI_ALERT_TO": "ml-oncall@example.com",
            "TAXI_SMTP_CA_FILE": str(smtp.cert),
        }
        with ProductionStack(root, environment) as stack:
            stack.graphql.stop_schedule("daily_health_schedule")
            # The backfill is the only trainer here: neither new files nor decay start a retraining
            # (the whole soak's fault-free baseline saw the decay sensor retrain 2024-02, small budgets
            # making its model look decayed, a second training of the month's file).
            stop_sensor(stack, "new_trip_data_sensor")
            stop_sensor(stack, "model_decay_sensor")
            for month in months:
                year, number = month.split("-")
                key = f"taxi/green/{year}/{number}.parquet"
                stack.s3.upload_file(str(DATA_DIR / year / f"{number}.parquet"), TRIPS_BUCKET, key)
            stack.start("serve")
            supervisor = Supervisor(stack, outcome)
            supervisor.start()
            try:
                started = time.monotonic()
                backfill = launch_backfill(stack, months, SMALL_BUDGETS, soak_run_tags(faults))
                outcome.faults = fault_schedule(seed, faults, gap)
                _inject_all(stack, supervisor, outcome, seed, backfill)
                outcome.backfill_status = _settle(stack, backfill) or "still running"
                outcome.seconds = time.monotonic() - started
            finally:
                supervisor.stopping.set()
                supervisor.join(timeout=300)
            outcome.conditions = end_conditions(stack, months, smtp, outcome)
            if not outcome.held:
                print("chaos: what each run went through:\n" + run_story(stack), flush=True)
    return outcome


def stop_sensor(stack: ProductionStack, name: str) -> None:
    """What the UI's sensor toggle sends."""
    selector = {"repositoryLocationName": "taxi_assets", "repositoryName": "__repository__", "sensorName": name}
    sensor = stack.graphql(
        "query($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) { "
        "__typename ... on Sensor { id jobOriginId sensorState { selectorId } } } }",
        {"selector": selector},
    )["sensorOrError"]
    assert sensor["__typename"] == "Sensor", sensor
    stopped = stack.graphql(
        "mutation($origin: String!, $selector: String!) { stopSensor(jobOriginId: $origin, jobSelectorId: $selector)"
        " { __typename } }",
        {"origin": sensor["jobOriginId"], "selector": sensor["sensorState"]["selectorId"]},
    )["stopSensor"]
    assert stopped["__typename"] == "StopSensorMutationResult", stopped


def _inject_all(stack: ProductionStack, supervisor: Supervisor, outcome: Outcome, seed: int, backfill: str) -> None:
    """Each fault at its time while the backfill runs; the ones still due when it has ended are
    not injected (the report counts what was)."""
    rng, started = random.Random(seed + 1), time.monotonic()
    running = lambda: backfill_status(stack, backfill) not in BACKFILL_ENDED  # noqa: E731 - None (unknown) counts as running
    for fault in outcome.faults:
        while time.monotonic() - started < fault.at:
            time.sleep(0.5)
        if not running():
            break
        if _inject(fault, stack, supervisor, rng, running):
            fault.injected_at = round(time.monotonic() - started, 1)
            print(f"chaos: +{fault.injected_at:.0f} s {fault.kind}: {fault.target}", flush=True)
    if supervisor.postgres_back:
        supervisor.postgres_back.join()


_idle_since: dict[int, float] = {}


def _quiet_for(stack: ProductionStack, seconds: float) -> bool:
    """No run active in the instance for ``seconds`` (asked of PostgreSQL)."""
    try:
        active = sql(stack.pg, "SELECT count(*) FROM runs WHERE status = ANY(%s)", list(ACTIVE))[0][0]
    except Exception:
        return False
    key = id(stack)
    if active:
        _idle_since.pop(key, None)
        return False
    return time.monotonic() - _idle_since.setdefault(key, time.monotonic()) >= seconds


def _settle(stack: ProductionStack, backfill: str) -> str | None:
    """Wait for the backfill to end, then for every run to end (run monitoring fails a run whose
    worker died within its poll interval, or its start timeout for a run that never started)."""

    def ended() -> str | None:
        status = backfill_status(stack, backfill)
        return status if status in BACKFILL_ENDED else None

    status = _wait(ended, 5400)
    _wait(lambda: _quiet_for(stack, 60), 1200)
    return status


STORY_EVENTS = ("RUN_FAILURE", "STEP_FAILURE", "ENGINE_EVENT", "RUN_START", "RUN_SUCCESS")


def run_story(stack: ProductionStack) -> str:
    """Every run with its partition, status, parent and retry tag, and the failure and engine
    messages Dagster recorded for it: what a failed soak needs to be understood from CI's log."""
    lines = []
    for run_id, status, tags in runs_of(stack):
        lines.append(
            f"{run_id[:8]} {tags.get('dagster/partition', '-')} {status} parent={tags.get('dagster/parent_run_id', '-')[:8]}"
            f" retry={tags.get('dagster/retry_number', '0')} will_retry={tags.get('dagster/will_retry', '-')}"
            f" reason={tags.get('dagster/failure_reason', '-')}"
        )
        rows = sql(
            stack.pg,
            "SELECT dagster_event_type, extract(epoch from timestamp), event FROM event_logs "
            "WHERE run_id = %s AND dagster_event_type = ANY(%s) ORDER BY id",
            run_id,
            list(STORY_EVENTS),
        )
        for kind, at, event in rows:
            entry = json.loads(event)
            error = ((entry.get("dagster_event") or {}).get("event_specific_data") or {}).get("error") or {}
            message = f"{entry.get('user_message') or ''} {error.get('message', '')}".replace("\n", " ")[:400]
            lines.append(f"    {time.strftime('%H:%M:%S', time.gmtime(float(at)))} {kind} {message}")
    return "\n".join(lines)


# End conditions ---------------------------------------------------------------------------------

Condition = tuple[str, bool, str]


def end_conditions(stack: ProductionStack, months: list[str], smtp: SmtpServer, outcome: Outcome) -> list[Condition]:
    runs = runs_of(stack)
    outcome.runs = len(runs)
    outcome.retries = sum("dagster/parent_run_id" in tags for _, _, tags in runs)
    outcome.most_retries_of_a_run = max((int(tags.get("dagster/retry_number", 0)) for _, _, tags in runs), default=0)
    try:
        view = consumer_view(stack, months, predict_once(stack))
        seen = [_every_value_loads(view), _decisions_agree(stack, view, months[-1])]
    except Exception as error:  # no model to serve, a surface down: the condition fails, the soak goes on
        failed = f"{type(error).__name__}: {str(error)[:1500]}"
        print("chaos: the consumer checks failed:\n" + traceback.format_exc(), flush=True)
        seen = [("every stored value of every month loads", False, failed), ("the surfaces agree", False, failed)]
    return [
        _faults_injected(outcome),
        (
            "the backfill completed, every partition materialized (Dagster's own status)",
            outcome.backfill_status == "COMPLETED_SUCCESS",
            outcome.backfill_status,
        ),
        _every_month_decided(stack, months),
        _no_run_left_active(runs),
        _no_mlflow_run_running(stack),
        *seen,
        _trained_once_per_file(stack, runs),
        _emails_match_final_failures(stack, smtp),
        _steps_within_budget(stack),
    ]


def _faults_injected(outcome: Outcome) -> Condition:
    planned = Counter(fault.kind for fault in outcome.faults)
    injected = Counter(fault.kind for fault in outcome.faults if fault.injected_at is not None)
    shown = ", ".join(f"{kind} {injected[kind]}/{planned[kind]}" for kind in planned) or "none planned"
    return "every planned fault injected while the backfill ran", injected == planned, shown


def materialized(stack: ProductionStack) -> dict[str, set[str]]:
    rows = sql(
        stack.pg, "SELECT asset_key, partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
    )
    found: dict[str, set[str]] = {}
    for key, partition in rows:
        found.setdefault(json.loads(key)[0], set()).add(partition)
    return found


def _every_month_decided(stack: ProductionStack, months: list[str]) -> Condition:
    found = materialized(stack)
    missing = [month for month in months[1:] if month not in found.get("production_model", set())]
    first_prepared = all(months[0] in found.get(asset, set()) for asset in PREPARED)
    first_only = months[0] not in found.get("training_set", set())
    ok = not missing and first_prepared and first_only
    detail = f"production_model for {len(months) - 1 - len(missing)}/{len(months) - 1} months"
    detail += f"; missing {', '.join(missing)}" if missing else ""
    detail += f"; {months[0]} prepared only: {first_prepared and first_only}"
    return f"every month {months[1]}..{months[-1]} decided, {months[0]} prepared only", ok, detail


def _no_run_left_active(runs: list[tuple[str, str, dict]]) -> Condition:
    statuses = Counter(status for _, status, _ in runs)
    active = {status: count for status, count in statuses.items() if status in ACTIVE}
    shown = ", ".join(f"{status} {count}" for status, count in sorted(statuses.items()))
    return "no Dagster run left queued, starting, started or canceling", not active, shown


def _no_mlflow_run_running(stack: ProductionStack) -> Condition:
    import mlflow

    client = mlflow.MlflowClient(stack.mlflow_uri)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    running = client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=1000)
    total = len(client.search_runs(experiments, "", max_results=5000))
    return "no MLflow run left RUNNING", not running, f"{len(running)} RUNNING of {total} runs"


def _every_value_loads(view: dict) -> Condition:
    failures = [
        f"{asset}/{month}: {error}"
        for asset, months in view["values"].items()
        for month, error in months.items()
        if error
    ]
    loaded = sum(not error for months in view["values"].values() for error in months.values())
    detail = f"{loaded} values loaded" + (f"; failed: {'; '.join(failures)[:600]}" if failures else "")
    return "every stored value of every month loads", not failures, detail


def _server(stack: ProductionStack, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.ports['serve']}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {stack.env['TAXI_API_TOKEN']}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _decisions_agree(stack: ProductionStack, view: dict, month: str) -> Condition:
    """The champion alias, load_model(), the predict job and the server: one model, one answer."""
    served = _wait(lambda: _server(stack, "/health")["model"], 120) or {}
    server_minutes = [round(value, 4) for value in _server(stack, "/invocations", COURSE_BODY)["predictions"]]
    loaded, job, champion = view["load_model"], view["predict_job"], view["champion"]
    models = {
        "load_model()": (loaded["model"]["name"], loaded["model"]["version"]),
        "predict job": (job["model"]["name"], job["model"]["version"]),
        "server": (served.get("name"), served.get("version")),
        "champion alias": (champion["name"], champion["version"]),
    }
    answers = {
        "load_model()": loaded["minutes"],
        "predict job": job["minutes"],
        "server": server_minutes,
        "champion alias": champion["minutes"],
    }
    ok = len(set(models.values())) == 1 and len({tuple(v) for v in answers.values()}) == 1
    ok = ok and loaded["decided_for"] == month
    name, version = models["load_model()"]
    detail = f"{name} version {version}, decided for {loaded['decided_for']}, course request -> {loaded['minutes']}"
    if not ok:
        detail += f"; models {models}; answers {answers}"
    return f"champion alias, load_model(), predict job and server agree on {month}", ok, detail


def _trained_once_per_file(stack: ProductionStack, runs: list[tuple[str, str, dict]]) -> Condition:
    """Every run that started a month's XGBoost step descends from one first run (retries only)."""
    tags = {run_id: run_tags for run_id, _, run_tags in runs}
    started = sql(
        stack.pg,
        "SELECT DISTINCT run_id FROM event_logs WHERE dagster_event_type = 'STEP_START' AND step_key = 'xgboost_model'",
    )
    roots: dict[str, set[str]] = {}
    for (run_id,) in started:
        roots.setdefault(tags[run_id].get("dagster/partition", "?"), set()).add(
            tags[run_id].get("dagster/root_run_id", run_id)
        )
    twice = sorted(month for month, first_runs in roots.items() if len(first_runs) > 1)
    detail = f"{len(roots)} months trained, {len(started)} training runs" + (
        f"; twice: {', '.join(twice)}" if twice else ""
    )
    return "no month trained twice for the same file except by a retry", not twice, detail


def final_failures(runs: list[tuple[str, str, dict]]) -> set[str]:
    """Failed runs no retry followed (the ones a person must hear about)."""
    parents = {tags.get("dagster/parent_run_id") for _, _, tags in runs}
    return {run_id for run_id, status, _ in runs if status == "FAILURE" and run_id not in parents}


def _emails_match_final_failures(stack: ProductionStack, smtp: SmtpServer) -> Condition:
    def emailed() -> set[str]:
        texts = [
            part.get_payload(decode=True).decode()
            for message in smtp.messages
            for part in message.walk()
            if not part.is_multipart()
        ]
        return {line.split()[-1] for text in texts for line in text.splitlines() if line.startswith("Run id:")}

    # The alert sensor ticks every 30 s: give it a few ticks to catch up with the last failures.
    _wait(lambda: final_failures(runs_of(stack)) <= emailed(), 180, interval=5)
    expected, sent = final_failures(runs_of(stack)), emailed()
    ok = expected == sent and len(smtp.messages) == len(sent)
    detail = f"{len(smtp.messages)} emails, {len(expected)} runs failed after their last retry"
    if not ok:
        detail += f"; not emailed {sorted(expected - sent)}; emailed without cause {sorted(sent - expected)}"
    return "failure emails equal the runs that failed after their last retry", ok, detail


def _steps_within_budget(stack: ProductionStack) -> Condition:
    """Every model step that ended (killed ones did not) ended within its budget plus the slack."""
    rows = sql(
        stack.pg,
        "SELECT run_id, step_key, dagster_event_type, extract(epoch from timestamp) FROM event_logs "
        "WHERE dagster_event_type IN ('STEP_START', 'STEP_SUCCESS', 'STEP_FAILURE') "
        "AND (step_key = 'xgboost_model' OR step_key LIKE 'sklearn_models.tune_and_train%%')",
    )
    starts = {(run, step): float(at) for run, step, kind, at in rows if kind == "STEP_START"}
    worst: tuple[float, str] = (0.0, "none")
    for run, step, kind, at in rows:
        if kind != "STEP_START" and (run, step) in starts:
            worst = max(worst, (float(at) - starts[run, step], step))
    limit = max(STEP_BUDGETS.values()) + BUDGET_SLACK_SECONDS
    return (
        f"every model step within its budget + {BUDGET_SLACK_SECONDS:.0f} s (MLflow down included)",
        worst[0] <= limit,
        f"longest {worst[0]:.1f} s ({worst[1]}), limit {limit:.0f} s",
    )


def predict_once(stack: ProductionStack) -> str:
    """The course's request through the predict job (GraphQL), as a user of the Launchpad sends it."""
    trips = [{key: value for key, value in trip.items()} for trip in COURSE_BODY["inputs"]]
    run_id = stack.graphql.launch("predict", {}, {"ops": {"predict_trip_durations": {"config": {"trips": trips}}}})
    status = _wait(
        lambda: stack.graphql.status(run_id) in ("SUCCESS", "FAILURE", "CANCELED") and stack.graphql.status(run_id), 600
    )
    if status != "SUCCESS":
        raise RuntimeError(f"the predict job ended {status}:\n{stack.log('daemon', 'code-server')}")
    return run_id


def consumer_view(stack: ProductionStack, months: list[str], predict_run: str) -> dict:
    """What a user's own process sees (``python -m taxi_assets_tests.chaos view``, on the stack's
    environment): every stored value loaded, load_model(), the predict job's answer, the champion."""
    request = {
        "values": {asset: sorted(found) for asset, found in materialized(stack).items()},
        "predict_run": predict_run,
    }
    done = subprocess.run(
        [sys.executable, "-m", "taxi_assets_tests.chaos", "view"],
        input=json.dumps(request), env=stack.env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the consumer view failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load_everything(instance, values: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    from taxi_assets.apps.api import predictions
    from taxi_assets.lib.model_store import read_value

    loaded: dict[str, dict[str, str]] = {}
    for asset, months in values.items():
        for month in months:
            if asset not in (*PREPARED, *TRAINED) or month is None:
                continue
            try:
                predictions(month, instance) if asset == "trip_predictions" else read_value(instance, asset, month)
                loaded.setdefault(asset, {})[month] = ""
            except Exception as error:  # reported, not raised: the soak lists every value that fails
                loaded.setdefault(asset, {})[month] = f"{type(error).__name__}: {error}"[:300]
    return loaded


def _view(request: dict) -> dict:
    import dagster as dg
    import mlflow
    import pandas as pd

    from taxi_assets.apps.api import load_model
    from taxi_assets.lib.model_store import serving_model
    from taxi_assets.ml.trip_record import validate_records

    instance = dg.DagsterInstance.get()
    records = validate_records(COURSE_BODY["inputs"], prefix="inputs")
    serving = serving_model(instance)
    minutes = [round(float(value), 4) for value in load_model(instance=instance).predict_records(records)]
    output = next(
        event.dagster_event.step_output_data.metadata
        for event in instance.all_logs(request["predict_run"])
        if event.dagster_event and event.dagster_event.is_successful_output
    )
    job_minutes = [trip["minutes"] for trip in cast(list, output["predictions"].value)]
    registered = f"taxi-duration-{serving.name}"
    version = mlflow.MlflowClient().get_model_version_by_alias(registered, "champion")
    frame = pd.DataFrame([record.model_dump() for record in records])
    champion = [
        round(float(value), 4) for value in mlflow.pyfunc.load_model(f"models:/{registered}@champion").predict(frame)
    ]
    return {
        "values": _load_everything(instance, request["values"]),
        "load_model": {"model": serving.describe(), "decided_for": serving.decided_for, "minutes": minutes},
        "predict_job": {"model": json.loads(cast(str, output["model"].value)), "minutes": job_minutes},
        "champion": {"name": serving.name, "version": version.version, "minutes": champion},
    }


if __name__ == "__main__" and sys.argv[1:] == ["view"]:
    print(json.dumps(_view(json.loads(sys.stdin.read()))))
