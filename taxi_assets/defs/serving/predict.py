"""The ``predict`` job: the course's "predict" pipeline, launched from the Launchpad, the CLI or GraphQL."""

import json
from typing import Any

import dagster as dg
from pydantic import Field

from taxi_assets.lib.model_store import ModelNotFoundError, serving_model
from taxi_assets.ml.trip_record import MAX_TRIP_DISTANCE_MILES, TripError, validate_records


class TripInput(dg.Config):
    """One trip. Values are checked by the one trip schema (TripRecord), as on every surface that
    takes trips; ids may be numbers or strings of digits, as the course sends them."""

    PULocationID: Any = Field(description="Pickup TLC zone id (a positive integer).")
    DOLocationID: Any = Field(description="Drop-off TLC zone id (a positive integer).")
    trip_distance: Any = Field(description=f"Trip distance in miles, 0 to {MAX_TRIP_DISTANCE_MILES:g}.")


class PredictConfig(dg.Config):
    """The trips to predict, at least one."""

    trips: list[TripInput] = Field(description="Trips, each with PULocationID, DOLocationID and trip_distance.")


@dg.op(description="Predict trip durations (minutes) with the production model.")
def predict_trip_durations(context: dg.OpExecutionContext, config: PredictConfig) -> list[float]:
    try:
        records = validate_records([trip.model_dump() for trip in config.trips], prefix="trips")
    except TripError as error:
        raise dg.Failure(description=f"predict: {error}", allow_retries=False) from None
    if not records:
        raise dg.Failure(description="predict: no trips given; add at least one to trips", allow_retries=False)
    try:
        model = serving_model(context.instance)
    except ModelNotFoundError as error:
        raise dg.Failure(description=f"predict: {error}", allow_retries=False) from None
    predictions = [round(float(value), 4) for value in model.predictor.predict_records(records)]
    for record, minutes in zip(records, predictions, strict=True):
        context.log.info(f"{record.model_dump()} -> {minutes} min")
    context.add_output_metadata(
        {
            "predictions": dg.MetadataValue.json(
                [
                    {**record.model_dump(), "minutes": minutes}
                    for record, minutes in zip(records, predictions, strict=True)
                ][:1000]
            ),
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
