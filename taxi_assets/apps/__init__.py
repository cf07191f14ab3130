"""Clients of the code location (server, Python API, CLI); they never import it."""
