"""The chaos soak's short version (``taxi_assets_tests/chaos.py``; the whole soak is
``benchmarks/bench_chaos.py``): a backfill of the whole graph for 2023-12..2024-02 on the
production-like stack while a run worker or step process, the daemon, the code server, the MLflow
server and PostgreSQL are killed at seeded random moments, each service restarted by the
supervisor (PostgreSQL after 20 s). Every end condition must hold: nothing lost, nothing stuck,
one answer on every surface, one email per run that failed for good.
"""

from __future__ import annotations

import pytest

from taxi_assets_tests.chaos import soak

pytestmark = pytest.mark.production

# The code server is killed under a run at least once, so the run it takes along must be failed by
# run monitoring and retried (CodeServerRunLauncher), not left STARTED for its max runtime.
SHORT_FAULTS = {"run": 2, "daemon": 1, "code-server-under-a-run": 1, "mlflow": 1, "postgres": 1}


def test_a_backfill_through_kills_and_restarts_loses_nothing(tmp_path):
    outcome = soak(tmp_path, "2023-12", "2024-02", SHORT_FAULTS, seed=21, gap=(5.0, 15.0))
    report = "\n".join(f"{'held' if held else 'FAILED'}: {what}: {detail}" for what, held, detail in outcome.conditions)
    faults = "\n".join(f"+{f.injected_at} s {f.kind}: {f.target}" for f in outcome.faults)
    assert outcome.held, f"{report}\nfaults:\n{faults}\nunplanned: {outcome.unplanned_deaths}"
