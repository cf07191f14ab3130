"""The environment's choices: local or production, and the settings each needs.

Read when the code location loads (or a client starts), never at import.
"""

from __future__ import annotations

import os
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
