"""Dagster-aware helpers with no definitions: sources, IO managers, tracking, alerts, history, metadata, charts."""
