"""The ``predict`` job: the course's "predict" pipeline, launched from the Launchpad, the CLI or GraphQL."""

import json

import dagster as dg
from pydantic import Field


class TripRecord(dg.Config):
    """One trip, as the course's interaction form takes it."""

    PULocationID: int = Field(ge=1, description="Pickup TLC zone id.")
    DOLocationID: int = Field(ge=1, description="Drop-off TLC zone id.")
    trip_distance: float = Field(ge=0, le=500, description="Trip distance in miles.")


class PredictConfig(dg.Config):
    """One trip in the three fields, or several in ``records`` (or both)."""

    PULocationID: int | None = Field(default=None, ge=1, description="Pickup TLC zone id.")
    DOLocationID: int | None = Field(default=None, ge=1, description="Drop-off TLC zone id.")
    trip_distance: float | None = Field(default=None, ge=0, le=500, description="Trip distance in miles.")
    records: list[TripRecord] = Field(default_factory=list, description="More trips.")


def _records(config: PredictConfig) -> list[dict]:
    single = (config.PULocationID, config.DOLocationID, config.trip_distance)
    records = [record.model_dump() for record in config.records]
    if any(value is not None for value in single):
        if any(value is None for value in single):
            missing = [name for name, value in zip(("PULocationID", "DOLocationID", "trip_distance"), single) if value is None]
            raise dg.Failure(description=f"predict: give all three fields of a trip; missing {', '.join(missing)}")
        records.insert(0, dict(zip(("PULocationID", "DOLocationID", "trip_distance"), single)))
    if not records:
        raise dg.Failure(description="predict: no trips given (fill PULocationID, DOLocationID, trip_distance or records)")
    return records


@dg.op(description="Predict trip durations (minutes) with the production model.")
def predict_trip_durations(context: dg.OpExecutionContext, config: PredictConfig) -> list[float]:
    from taxi_assets.serving import load_production_model

    records = _records(config)
    model = load_production_model(context.instance, None)
    if model is None:
        raise dg.Failure(description="predict: no production_model is materialized yet; run the retraining first")
    predictions = [round(float(value), 4) for value in model.predictor.predict(records)]
    for record, minutes in zip(records, predictions):
        context.log.info(f"{record} -> {minutes} min")
    context.add_output_metadata(
        {
            "predictions": dg.MetadataValue.json([{**record, "minutes": minutes} for record in records][:1000]),
            "count": len(predictions),
            "model": json.dumps(model.describe()),
            "first_prediction_minutes": predictions[0],
        }
    )
    return predictions


@dg.job(
    executor_def=dg.in_process_executor,
    description="Predict trip durations for the trips in the config with the production model.",
    tags={"kind": "inference"},
)
def predict():
    predict_trip_durations()
