"""Plain ML logic for taxi_assets: no Dagster imports here.

Each module is one step of the course's notebook, written as functions over pandas frames and
scipy matrices so it can be unit-tested and reused outside the asset graph.
"""
