"""The one partitioning scheme: calendar months, keyed ``YYYY-MM`` (the TLC publishes monthly)."""

import dagster as dg

FIRST_MONTH = "2023-01"

monthly_partitions = dg.MonthlyPartitionsDefinition(start_date=FIRST_MONTH, fmt="%Y-%m")


def previous_and_current_month(key: str | None = None) -> dg.AssetIn:
    """An input of months M-1 and M of a monthly asset (a dict by month when both load).

    Missing months load as absent rather than failing the load, so the asset can say which month
    is missing and how to make it.
    """
    return dg.AssetIn(
        key=key,
        partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1),
        metadata={"allow_missing_partitions": True},
    )
