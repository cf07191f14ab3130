"""The code location: one ``Definitions`` object, ``defs``."""

import dagster as dg

from taxi_assets import checks
from taxi_assets.alerts import EmailAlerts, alerts_from_env
from taxi_assets.assets import ingest, models, observability, prepare, production
from taxi_assets.jobs import data_preparation_job, model_training_job, observability_job, retraining_job
from taxi_assets.predict import predict
from taxi_assets.resources import (
    LocalPickleIOManager,
    TripSource,
    check_production_environment,
    is_production,
    production_io_manager,
    trip_source_from_env,
)
from taxi_assets.sensors import (
    daily_health_schedule,
    email_on_failure,
    hourly_retraining_schedule,
    mlflow_runs_of_canceled_runs,
    mlflow_runs_of_failed_runs,
    new_trip_data_sensor,
)
from taxi_assets.tracking import MlflowTracking


def build_defs(
    trip_source: TripSource | None = None,
    io_manager: dg.ConfigurableIOManagerFactory | None = None,
    mlflow: MlflowTracking | None = None,
    alerts: EmailAlerts | None = None,
) -> dg.Definitions:
    """The whole graph with its resources; arguments replace the environment's choices.

    ``TAXI_ENV=production`` selects the shared resources: asset values in S3, trip files from S3,
    MLflow from ``MLFLOW_TRACKING_URI`` (its server keeps runs in PostgreSQL and artifacts in S3).
    Without it: local pickles under the instance, the local trip source, a local MLflow store.
    """
    if is_production():
        check_production_environment()
        io_manager = io_manager or production_io_manager()
        mlflow = mlflow or MlflowTracking(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"))
    return dg.Definitions(
        assets=dg.load_assets_from_modules([ingest, prepare, models, production, observability]),
        asset_checks=dg.load_asset_checks_from_modules([checks]),
        jobs=[data_preparation_job, model_training_job, retraining_job, observability_job, predict],
        sensors=[new_trip_data_sensor, email_on_failure, mlflow_runs_of_failed_runs, mlflow_runs_of_canceled_runs],
        schedules=[hourly_retraining_schedule, daily_health_schedule],
        resources={
            "trip_source": trip_source or trip_source_from_env(),
            "io_manager": io_manager or LocalPickleIOManager(),
            "mlflow": mlflow or MlflowTracking(),
            "alerts": alerts or alerts_from_env(),
        },
        # Steps run in the launching process: data preparation is a few hundred milliseconds of
        # pandas per step, and a process per step would spend more on imports than on work.
        executor=dg.in_process_executor,
    )


defs = build_defs()
