"""Jobs: named selections people launch from the UI, the CLI and schedules."""

import dagster as dg

DATA_PREPARATION_ASSETS = ["raw_trips", "cleaned_trips", "training_set"]

# Mage's "data_preparation" pipeline: ingest -> prepare -> build, with its checks.
data_preparation_job = dg.define_asset_job(
    name="data_preparation",
    selection=dg.AssetSelection.assets(*DATA_PREPARATION_ASSETS),
    description="Ingest, clean and build the training set for one month (with its checks).",
)

MODEL_ASSETS = ["sklearn_models", "xgboost_model"]

# A retraining that fails is re-executed from the failed step by Dagster's run retries (the
# daemon), at most twice, before its failure alert goes out; a run still going after an hour
# (its worker lost without anyone noticing) is ended by run monitoring. Both need the daemon,
# which `dagster dev` runs. Budgets in a run config larger than the defaults may need a larger
# dagster/max_runtime tag at launch.
RETRAINING_RUN_TAGS = {
    "dagster/max_retries": "2",
    "dagster/retry_strategy": "FROM_FAILURE",
    "dagster/max_runtime": "3600",
}

# Mage's "sklearn_training" and "xgboost_training". One process per step, two at a time: the
# scikit-learn fan-out trains its models in parallel on the two cores.
model_training_job = dg.define_asset_job(
    name="model_training",
    selection=dg.AssetSelection.assets(*MODEL_ASSETS),
    description="Tune and train the scikit-learn models and XGBoost for one month, tracked in MLflow.",
    executor_def=dg.multiprocess_executor.configured({"max_concurrent": 2}),
    tags=RETRAINING_RUN_TAGS,
)

RETRAINING_ASSETS = DATA_PREPARATION_ASSETS + MODEL_ASSETS + ["production_model"]


# Mage's "automatic_retraining": everything from the new file to the serving decision, for one
# month. Launched by the new-data sensor and the hourly schedule.
retraining_job = dg.define_asset_job(
    name="retraining",
    selection=dg.AssetSelection.assets(*RETRAINING_ASSETS),
    description="Ingest, prepare, train and choose the production model for one month.",
    executor_def=dg.multiprocess_executor.configured({"max_concurrent": 2}),
    tags=RETRAINING_RUN_TAGS,
)

# The run-health view and the model freshness check, refreshed daily by a schedule.
observability_job = dg.define_asset_job(
    name="observability",
    selection=dg.AssetSelection.assets("pipeline_health")
    | dg.AssetSelection.checks(dg.AssetCheckKey(dg.AssetKey("production_model"), "model_freshness")),
    description="Refresh pipeline_health and run the production model's freshness check.",
)
