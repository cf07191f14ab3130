"""Helpers shared by the definitions and the clients, defining no assets, jobs or sensors of their own:
the Dagster-aware ones (trip sources, IO managers, tracking, alerts, reads of the instance, the
one read path to models, Dagster's private API behind one module) and the plain ones the Dagster
layer needs (charts, settings, the catalog of names). Pure ML logic is in ``ml/``."""
