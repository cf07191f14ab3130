"""The resources, chosen by the environment when the code location loads (values stay EnvVars).

``TAXI_ENV=production`` selects the shared ones: asset values in S3, trip files from S3, MLflow
at ``MLFLOW_TRACKING_URI`` (its server keeps runs in PostgreSQL and artifacts in S3); missing
settings stop the code location from loading with a message that lists them. Without it: local
value archives under the instance, the local (or HTTP) trip source, a local MLflow store.
"""

import dagster as dg

from taxi_assets.lib.alerts import alerts_from_env
from taxi_assets.lib.io_managers import io_manager_from_env
from taxi_assets.lib.predictions import prediction_store_from_env
from taxi_assets.lib.settings import check_production_environment, is_production
from taxi_assets.lib.sources import trip_source_from_env
from taxi_assets.lib.tracking import MlflowTracking


@dg.definitions
def resources() -> dg.Definitions:
    if is_production():
        check_production_environment()
    mlflow = MlflowTracking(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI")) if is_production() else MlflowTracking()
    return dg.Definitions(
        resources={
            "trip_source": trip_source_from_env(),
            "io_manager": io_manager_from_env(),
            "mlflow": mlflow,
            "alerts": alerts_from_env(),
            "predictions": prediction_store_from_env(),
        }
    )
