"""The code location: one ``Definitions`` object, ``defs``."""

import dagster as dg

from taxi_assets import checks
from taxi_assets.assets import ingest, models, prepare, production
from taxi_assets.jobs import data_preparation_job, model_training_job, retraining_job
from taxi_assets.predict import predict
from taxi_assets.resources import LocalPickleIOManager, TripSource, trip_source_from_env
from taxi_assets.sensors import hourly_retraining_schedule, new_trip_data_sensor
from taxi_assets.tracking import MlflowTracking


def build_defs(
    trip_source: TripSource | None = None,
    io_manager: dg.ConfigurableIOManagerFactory | None = None,
    mlflow: MlflowTracking | None = None,
) -> dg.Definitions:
    """The whole graph with its resources; arguments replace the environment's choices."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules([ingest, prepare, models, production]),
        asset_checks=dg.load_asset_checks_from_modules([checks]),
        jobs=[data_preparation_job, model_training_job, retraining_job, predict],
        sensors=[new_trip_data_sensor],
        schedules=[hourly_retraining_schedule],
        resources={
            "trip_source": trip_source or trip_source_from_env(),
            "io_manager": io_manager or LocalPickleIOManager(),
            "mlflow": mlflow or MlflowTracking(),
        },
        # Steps run in the launching process: data preparation is a few hundred milliseconds of
        # pandas per step, and a process per step would spend more on imports than on work.
        executor=dg.in_process_executor,
    )


defs = build_defs()
