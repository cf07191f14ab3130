"""Clients of the code location (server, Python API, CLI); they never import it (the CLI loads it
by module name to run jobs, as Dagster's own CLI does)."""
