"""The assets by name, how they group into jobs, and their code versions: shared by the code
location and its clients (the CLI selects by these names, and compares a model's recorded code
versions with these, without loading the code location)."""

TRIP_FILES = "trip_files"  # the observable source asset: the trip files and their versions
DATA_PREPARATION_ASSETS = ["raw_trips", "cleaned_trips", "training_set"]
MODEL_ASSETS = ["sklearn_models", "xgboost_model"]
RETRAINING_ASSETS = DATA_PREPARATION_ASSETS + MODEL_ASSETS + ["production_model"]
MONITORING_ASSETS = ["trip_predictions", "model_performance"]
STEERING_ASSET = "serving_decision"  # the operators' decisions about what serves (taxi-assets promote, ...)
ALL_ASSETS = RETRAINING_ASSETS + MONITORING_ASSETS + ["pipeline_health", STEERING_ASSET]

# What each asset computes, as Dagster's code_version: bump an asset's number when what it
# computes changes (a cleaning bound, a feature, the search space, the decision rule), not for a
# comment or a log line. Dagster then marks its materializations unsynced and the new-data sensor
# redoes them. taxi_assets_tests/unit/test_code_versions.py fails when an asset's logic changes
# and its number did not (see taxi_assets_tests/code_versions.json).
CODE_VERSIONS = {
    "raw_trips": "1",
    "cleaned_trips": "1",
    "training_set": "1",
    "sklearn_models": "1",
    "xgboost_model": "2",
    "production_model": "1",
    "serving_decision": "1",
    "trip_predictions": "1",
    "model_performance": "1",
    "pipeline_health": "1",
}

# Runs for one month carry this tag (whoever launched them): one retraining per month at a time
# (a tag concurrency limit in dagster.yaml), and the new-data sensor leaves a month in flight alone.
MONTH_TAG = "taxi_assets/retrain_month"
REASON_TAG = "taxi_assets/retrain_reason"  # why it was asked for: a new file, new code, decay, ...

# The code location, as Dagster's tools name it (pyproject.toml's [tool.dagster]).
CODE_LOCATION_MODULE = "taxi_assets.definitions"
CODE_LOCATION_NAME = "taxi_assets"
