"""The assets by name and how they group into jobs: shared by the code location and its clients
(the CLI selects by these names without loading the code location)."""

DATA_PREPARATION_ASSETS = ["raw_trips", "cleaned_trips", "training_set"]
MODEL_ASSETS = ["sklearn_models", "xgboost_model"]
RETRAINING_ASSETS = DATA_PREPARATION_ASSETS + MODEL_ASSETS + ["production_model"]
ALL_ASSETS = RETRAINING_ASSETS + ["pipeline_health"]

# The code location, as Dagster's tools name it (pyproject.toml's [tool.dagster]).
CODE_LOCATION_MODULE = "taxi_assets.definitions"
CODE_LOCATION_NAME = "taxi_assets"
