"""model_freshness: is the model that serves as new as the data?"""

import dagster as dg

from taxi_assets.lib.model_store import newest_decision
from taxi_assets.lib.settings import step_op_tags


@dg.asset_check(asset="production_model", blocking=False, op_tags=step_op_tags("default"))
def model_freshness(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """The newest production_model decision is for the newest month of cleaned_trips; WARN when
    newer cleaned data exists (a retraining is due or failed)."""
    newest_data = max(context.instance.get_materialized_partitions(dg.AssetKey("cleaned_trips")), default=None)
    newest_model = newest_decision(context.instance)
    metadata = {"newest_cleaned_month": newest_data or "none", "newest_production_month": newest_model or "none"}
    if newest_data is None:
        return dg.AssetCheckResult(passed=True, description="no cleaned data yet", metadata=metadata)
    if newest_model is None or newest_model < newest_data:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"production_model was last decided for {newest_model or 'no month'}, but cleaned_trips "
            f"has {newest_data}: retrain {newest_data} (`taxi-assets materialize --partition {newest_data}`)",
            metadata=metadata,
        )
    return dg.AssetCheckResult(passed=True, description=f"up to date with {newest_data}", metadata=metadata)
