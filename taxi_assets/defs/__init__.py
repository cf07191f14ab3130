"""Dagster definitions only, one folder per stage; loaded by ``taxi_assets.definitions``."""
