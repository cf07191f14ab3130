"""Chaos soak (issue 21): the whole history backfilled through faults on the production-like stack.

Two backfills of the whole graph for 2023-01..2024-02 (small budgets: LinearRegression and
XGBoost, 2 trials each, 30 s), each on a fresh production-like stack (PostgreSQL, moto's S3, the
MLflow server on both, code server, webserver and daemon on deploy/dagster.yaml, the inference
server, an SMTP server for the failure alerts): first without faults (the baseline), then with a
seeded schedule of SIGKILLs while it runs: run workers and step processes (10), the daemon (3),
the code server (2), the MLflow server (2), PostgreSQL once (back after 20 s). A supervisor
restarts a killed service 3 s later, as ECS would. The machinery is `taxi_assets_tests/chaos.py`.

Prints and appends to RESULTS.md: the end conditions of both backfills (every month decided, no
run left active in Dagster or MLflow, every stored value loads, one answer from the champion
alias, load_model(), the predict job and the server, no month trained twice but by a retry, one
email per run that failed after its last retry, every model step within budget + slack), the
faults by kind with what they hit, restarts, retries, and the wall time against the baseline.

Usage: python benchmarks/bench_chaos.py [--seed 21] [--first 2023-01] [--last 2024-02] [--no-baseline]
Replay a failing soak with its seed: the kinds and moments of the faults are the same.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import append_results, table  # noqa: E402

from taxi_assets_tests.chaos import SOAK_FAULTS, Outcome, soak  # noqa: E402

GAP_SECONDS = (10.0, 30.0)  # between two faults: 18 faults in about 6 minutes


def conditions_table(outcomes: dict[str, Outcome]) -> str:
    names = list(outcomes)
    rows = []
    for index, (what, _, _) in enumerate(outcomes[names[-1]].conditions):
        cells = []
        for name in names:
            _, held, detail = outcomes[name].conditions[index]
            cells.append(f"{'held' if held else '**FAILED**'}: {detail}")
        rows.append([what, *cells])
    return table(["end condition", *names], rows)


def faults_table(outcome: Outcome) -> str:
    rows = [
        [f"+{fault.at:.0f} s", f"+{fault.injected_at:.0f} s" if fault.injected_at is not None else "not injected", fault.kind, fault.target]
        for fault in outcome.faults
    ]  # fmt: skip
    return table(["planned", "injected", "kind", "what was hit"], rows)


def summary(outcomes: dict[str, Outcome]) -> str:
    rows = []
    for name, outcome in outcomes.items():
        restarts = ", ".join(f"{service} {count}" for service, count in sorted(outcome.restarts.items())) or "none"
        rows.append(
            [
                name,
                f"{outcome.seconds:.0f} s",
                outcome.backfill_status,
                outcome.runs,
                f"{outcome.retries} (one run at most {outcome.most_retries_of_a_run})",
                restarts,
                "; ".join(outcome.unplanned_deaths) or "none",
                "; ".join(outcome.needed_a_person) or "nothing",
            ]
        )
    return table(
        [
            "backfill",
            "wall",
            "status",
            "runs",
            "retries",
            "restarts by the supervisor",
            "unplanned exits",
            "needed a person",
        ],
        rows,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--first", default="2023-01")
    parser.add_argument("--last", default="2024-02")
    parser.add_argument("--no-baseline", action="store_true", help="the soak only, without the fault-free backfill")
    args = parser.parse_args()
    outcomes: dict[str, Outcome] = {}
    with tempfile.TemporaryDirectory(prefix="taxi-chaos-") as scratch:
        if not args.no_baseline:
            outcomes["without faults"] = soak(
                Path(scratch) / "baseline", args.first, args.last, {}, args.seed, GAP_SECONDS
            )
        chaos = soak(Path(scratch) / "chaos", args.first, args.last, SOAK_FAULTS, args.seed, GAP_SECONDS)
        outcomes[f"with faults (seed {args.seed})"] = chaos
    base = outcomes.get("without faults")
    ratio = f"; wall {chaos.seconds / base.seconds:.2f}x the backfill without faults" if base else ""
    verdict = "every end condition held" if all(o.held for o in outcomes.values()) else "SOME END CONDITION FAILED"
    body = "\n\n".join(
        [
            conditions_table(outcomes),
            summary(outcomes),
            f"Faults of the soak (seed {args.seed}):\n\n" + faults_table(chaos),
            f"{args.first}..{args.last}: {verdict}{ratio}.",
            f"Command: `python benchmarks/bench_chaos.py --seed {args.seed}`",
        ]
    )
    print(body)
    append_results(f"bench_chaos: backfill {args.first}..{args.last} through faults", body)
    return 0 if all(o.held for o in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
