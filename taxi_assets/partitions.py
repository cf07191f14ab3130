"""The one partitioning scheme: calendar months, keyed ``YYYY-MM`` (the TLC publishes monthly)."""

import dagster as dg

FIRST_MONTH = "2023-01"

monthly_partitions = dg.MonthlyPartitionsDefinition(start_date=FIRST_MONTH, fmt="%Y-%m")
