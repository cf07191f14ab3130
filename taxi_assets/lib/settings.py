"""The environment's choices: local or production, and the settings each needs.

Read when the code location loads (or a client starts), never at import; the one exception is
``step_op_tags``, which op definitions need (see there).
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import cast

from taxi_assets.ml.schema import DEFAULT_TRIP_TYPE, TRIP_TYPES, TripType

# Production: TAXI_ENV=production switches every resource to its shared, multi-machine form.
PRODUCTION_VARIABLES = {
    "TAXI_S3_BUCKET": "bucket for asset values (S3 IO manager)",
    "TAXI_DATA_S3_BUCKET": "bucket holding the monthly trip files",
    "MLFLOW_TRACKING_URI": "the MLflow tracking server (PostgreSQL backend, S3 artifacts)",
}


class ProductionConfigError(RuntimeError):
    """TAXI_ENV=production without the settings it needs; the message lists them."""


def is_production() -> bool:
    return os.getenv("TAXI_ENV", "local").strip().lower() == "production"


def check_production_environment() -> None:
    missing = [f"{name} ({meaning})" for name, meaning in PRODUCTION_VARIABLES.items() if not os.getenv(name)]
    if missing:
        raise ProductionConfigError("TAXI_ENV=production needs: " + "; ".join(missing))


def trip_type() -> TripType:
    """Which TLC trip files the sources read (TAXI_TRIP_TYPE: green, the default, or yellow)."""
    value = os.getenv("TAXI_TRIP_TYPE", DEFAULT_TRIP_TYPE).strip().lower()
    if value not in TRIP_TYPES:
        raise ValueError(f"TAXI_TRIP_TYPE must be one of {', '.join(TRIP_TYPES)}, got {value!r}")
    return cast(TripType, value)


def sensor_interval_seconds() -> int:
    """The new-data sensor's minimum interval (TAXI_SENSOR_INTERVAL_SECONDS). Dagster's sensor
    daemon evaluates due sensors every 5 s and measures the interval from the previous tick, so a
    5 s interval skipped about every other pass (a new file waited up to 10 s, 9.5 s in issue
    22's benchmark); the default of 2 s lets every pass tick: the sensor asks every 5 s."""
    return int(os.environ.get("TAXI_SENSOR_INTERVAL_SECONDS", "2"))


PROMOTIONS = ("automatic", "approval")


def promotion_mode() -> str:
    """TAXI_PROMOTION: automatic (the default: a winning challenger serves at once) or approval
    (it waits for `taxi-assets approve <month>`)."""
    value = os.getenv("TAXI_PROMOTION", "").strip().lower() or "automatic"
    if value not in PROMOTIONS:
        raise ValueError(f"TAXI_PROMOTION must be one of {', '.join(PROMOTIONS)}, got {value!r}")
    return value


def retraining_run_config() -> dict:
    """The run config of the retrainings the sensor and the schedule ask for (budgets, models),
    from the YAML file at TAXI_RETRAINING_RUN_CONFIG (the Launchpad's format); the defaults without it."""
    path = os.environ.get("TAXI_RETRAINING_RUN_CONFIG", "").strip()
    if not path:
        return {}
    import yaml

    try:
        with open(path) as file:
            config = yaml.safe_load(file) or {}
    except OSError as error:
        raise ValueError(f"TAXI_RETRAINING_RUN_CONFIG: cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"TAXI_RETRAINING_RUN_CONFIG: {path} is not valid YAML: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"TAXI_RETRAINING_RUN_CONFIG: {path} must hold a mapping (ops: ...), as in the Launchpad")
    return config


# Where the training jobs' steps run (TAXI_STEP_EXECUTOR): "process", a process per step in the
# run's own worker (its ECS task, on ECS), or "ecs", an ECS task per step (dagster-aws's
# ecs_executor; only under the EcsRunLauncher), sized per step class (TAXI_ECS_STEP_RESOURCES).
STEP_EXECUTORS = ("process", "ecs")
STEP_CLASSES = ("data", "xgboost", "default")
DEFAULT_STEP_RESOURCES = {
    "data": {"cpu": "1024", "memory": "4096"},
    "xgboost": {"cpu": "2048", "memory": "8192"},
    "default": {"cpu": "512", "memory": "2048"},
}
# Fargate's task sizes: CPU units -> the memory sizes (MiB) it allows with them.
FARGATE_MEMORY = {
    256: (512, 1024, 2048),
    512: range(1024, 4096 + 1, 1024),
    1024: range(2048, 8192 + 1, 1024),
    2048: range(4096, 16384 + 1, 1024),
    4096: range(8192, 30720 + 1, 1024),
    8192: range(16384, 61440 + 1, 4096),
    16384: range(32768, 122880 + 1, 8192),
}


def step_executor() -> str:
    """TAXI_STEP_EXECUTOR: process (the default) or ecs."""
    value = os.getenv("TAXI_STEP_EXECUTOR", "").strip().lower() or "process"
    if value not in STEP_EXECUTORS:
        raise ValueError(f"TAXI_STEP_EXECUTOR must be one of {', '.join(STEP_EXECUTORS)}, got {value!r}")
    return value


def parse_step_resources(text: str | None) -> dict[str, dict[str, str]]:
    """TAXI_ECS_STEP_RESOURCES (a JSON object: step class -> {"cpu": units, "memory": MiB}) with
    the defaults for the classes it leaves out. Each size must be one Fargate runs, so a typo
    stops the code location from loading instead of failing a step's RunTask mid-run."""
    name = "TAXI_ECS_STEP_RESOURCES"
    try:
        given = json.loads(text) if text and text.strip() else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} is not valid JSON: {error}") from None
    if not isinstance(given, dict):
        raise ValueError(f"{name} must be a JSON object of step classes ({', '.join(STEP_CLASSES)})")
    unknown = sorted(set(given) - set(STEP_CLASSES))
    if unknown:
        raise ValueError(f"{name}: unknown step class {', '.join(unknown)} (known: {', '.join(STEP_CLASSES)})")
    return {step: _step_size(name, step, given.get(step, DEFAULT_STEP_RESOURCES[step])) for step in STEP_CLASSES}


def _step_size(name: str, step: str, size) -> dict[str, str]:
    if not isinstance(size, dict) or set(size) != {"cpu", "memory"}:
        raise ValueError(f'{name}: {step} must be {{"cpu": "<units>", "memory": "<MiB>"}}, got {size!r}')
    cpu, memory = (_whole_number(f"{name}: {step}.{field}", size[field]) for field in ("cpu", "memory"))
    if cpu not in FARGATE_MEMORY:
        raise ValueError(f"{name}: {step}.cpu: {cpu} is not a Fargate size ({', '.join(map(str, FARGATE_MEMORY))})")
    sizes = FARGATE_MEMORY[cpu]
    if memory not in sizes:
        allowed = f"{sizes.start}-{sizes.stop - 1} in steps of {sizes.step}" if isinstance(sizes, range) else sizes
        raise ValueError(f"{name}: {step}.memory: {memory} MiB is not a Fargate size for {cpu} CPU units ({allowed})")
    return {"cpu": str(cpu), "memory": str(memory)}


def _whole_number(where: str, value) -> int:
    text = str(value).strip() if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if not text.isdigit():
        raise ValueError(f"{where}: expected a whole number as a string, got {value!r}")
    return int(text)


def step_op_tags(step: str) -> dict[str, str]:
    """The op tags that size a step of class ``step`` on the ECS executor (``ecs/cpu``,
    ``ecs/memory``); none with the process executor. Read when the asset modules are imported,
    which is when the code location loads them: op tags are fixed once an op is defined."""
    if step_executor() != "ecs":
        return {}
    size = parse_step_resources(os.getenv("TAXI_ECS_STEP_RESOURCES"))[step]
    return {"ecs/cpu": size["cpu"], "ecs/memory": size["memory"]}


def ecs_task_vcpus(timeout: float = 5.0) -> float | None:
    """The vCPUs of the ECS task this process runs in (task metadata v4, ``Limits.CPU``: RunTask's
    cpu override, else the task definition's), or None outside ECS or when the endpoint is silent."""
    uri = os.environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if not uri:
        return None
    try:
        with urllib.request.urlopen(f"{uri}/task", timeout=timeout) as response:
            limits = json.load(response).get("Limits") or {}
        vcpus = float(limits.get("CPU") or 0)
    except (OSError, ValueError, AttributeError):
        return None
    return vcpus or None


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
