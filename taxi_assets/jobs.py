"""Jobs: named selections people launch from the UI, the CLI and schedules."""

import dagster as dg

DATA_PREPARATION_ASSETS = ["raw_trips", "cleaned_trips", "training_set"]

# Mage's "data_preparation" pipeline: ingest -> prepare -> build, with its checks.
data_preparation_job = dg.define_asset_job(
    name="data_preparation",
    selection=dg.AssetSelection.assets(*DATA_PREPARATION_ASSETS),
    description="Ingest, clean and build the training set for one month (with its checks).",
)
