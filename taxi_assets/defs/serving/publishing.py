"""``serving_publisher``: finishes any publication of the decision that serves (the pointer the
server reads, MLflow's ``champion`` alias) that a killed step or an outage left behind.
production_model's own hook publishes each new decision (``defs/serving/assets.py``)."""

import dagster as dg

from taxi_assets.lib.publishing import publish
from taxi_assets.lib.serving_pointer import serving_store
from taxi_assets.lib.tracking import MlflowTracking


@dg.sensor(
    name="serving_publisher",
    description="Brings what serves (the pointer the inference server reads, MLflow's champion alias) up to the "
    "newest recorded production decision, when a killed step or an outage left it behind.",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def serving_publisher(context: dg.SensorEvaluationContext, mlflow: MlflowTracking) -> dg.SkipReason:
    plan = publish(context.instance, serving_store(context.instance), mlflow, context.log)
    return dg.SkipReason(plan.reason)
