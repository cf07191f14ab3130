"""Metadata people look at in the UI, built from frames and matrices."""

from __future__ import annotations

import base64
import math

import dagster as dg
import pandas as pd


def column_schema(frame: pd.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name=str(name), type=str(dtype)) for name, dtype in frame.dtypes.items()]
    )


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def table(frame: pd.DataFrame) -> dg.MetadataValue:
    """A frame as Dagster's table metadata (the UI renders it as a table)."""
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=str(name),
                type="int"
                if pd.api.types.is_integer_dtype(dtype)
                else "float"
                if pd.api.types.is_float_dtype(dtype)
                else "string",
            )
            for name, dtype in frame.dtypes.items()
        ]
    )
    records = [
        dg.TableRecord({str(key): _plain(value) for key, value in row.items()}) for row in frame.to_dict("records")
    ]
    return dg.MetadataValue.table(records=records, schema=schema)


def summary_table(values: pd.Series, unit: str) -> dg.MetadataValue:
    """count/mean/std/min/quartiles/max as a table."""
    description = values.describe(percentiles=[0.05, 0.25, 0.5, 0.75, 0.95])
    return table(
        pd.DataFrame(
            {"statistic": [str(name) for name in description.index], unit: description.to_numpy(dtype=float).round(3)}
        )
    )


def null_counts(frame: pd.DataFrame) -> dict[str, int]:
    return {str(name): int(count) for name, count in frame.isna().sum().items()}


def _image(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def chart(png: bytes, alt: str) -> dg.MetadataValue:
    """One PNG as a markdown image with a data URI."""
    return dg.MetadataValue.md(_image(png, alt))


def charts(pngs: dict[str, bytes]) -> dg.MetadataValue:
    """All of a materialization's charts in one markdown value, each under its name: the UI shows
    markdown metadata behind one "[Show Markdown]" click, so one click shows them all."""
    sections = [f"**{name.replace('_', ' ')}**\n\n{_image(png, name.replace('_', ' '))}" for name, png in pngs.items()]
    return dg.MetadataValue.md("\n\n".join(sections))
