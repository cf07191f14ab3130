"""Metadata people look at in the UI, built from frames and matrices."""

from __future__ import annotations

import dagster as dg
import pandas as pd


def column_schema(frame: pd.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name=str(name), type=str(dtype)) for name, dtype in frame.dtypes.items()]
    )


def summary_table(values: pd.Series, unit: str) -> dg.MetadataValue:
    """count/mean/std/min/quartiles/max as a markdown table."""
    description = values.describe(percentiles=[0.05, 0.25, 0.5, 0.75, 0.95])
    rows = "\n".join(f"| {name} | {value:,.3f} |" for name, value in description.items())
    return dg.MetadataValue.md(f"| statistic | {unit} |\n|---|---|\n{rows}")


def null_counts(frame: pd.DataFrame) -> dict[str, int]:
    return {str(name): int(count) for name, count in frame.isna().sum().items()}


def chart(png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG as a markdown image with a data URI: the asset page shows it inline."""
    import base64

    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})")


def markdown(text: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(text)
