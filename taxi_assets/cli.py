"""``taxi-assets``: the command-line entry point.

``taxi-assets materialize`` exists because ``dagster asset materialize`` (dagster 1.13) can exit 0
when its run fails, which a cron job or CI step would never notice. This command runs one
Dagster run per month on the instance at ``DAGSTER_HOME``, prints what happened to every asset
and check, and exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

DEFAULT_SELECTION = "raw_trips,cleaned_trips,training_set"
# Assets that read the previous month's cleaned_trips (so it must exist first).
NEEDS_PREVIOUS_MONTH = {"training_set"}
PREVIOUS_MONTH_ASSETS = ["raw_trips", "cleaned_trips"]


def _expand_partitions(partitions: Sequence[str], ranges: Sequence[str]) -> list[str]:
    from taxi_assets.partitions import monthly_partitions

    valid = monthly_partitions.get_partition_keys()
    months: list[str] = []
    for text in ranges:
        start, _, end = text.partition("...")
        if not end or start not in valid or end not in valid or start > end:
            raise SystemExit(f"error: --partition-range must be FIRST...LAST months in {valid[0]}..{valid[-1]}, got {text!r}")
        months += valid[valid.index(start) : valid.index(end) + 1]
    for month in partitions:
        if month not in valid:
            raise SystemExit(f"error: unknown partition {month!r}: months run from {valid[0]} to {valid[-1]} (YYYY-MM)")
        months.append(month)
    return list(dict.fromkeys(months))


def _run(instance, asset_names: list[str], month: str) -> bool:
    """One run of ``asset_names`` for ``month``; prints a status line per asset and check."""
    import dagster as dg

    from taxi_assets.definitions import defs

    # In this process, as the code location's in-process executor runs it anyway.
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey(name) for name in asset_names],
        partition_key=month,
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
        tags={"taxi_assets/launched_by": "taxi-assets materialize"},
        raise_on_error=False,
    )
    materialized = {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}
    failures = {
        event.step_key: (event.event_specific_data.error.message.strip().splitlines() or ["failed"])[0].removeprefix("dagster._core.definitions.events.Failure: ")
        for event in result.get_step_failure_events()
    }
    print(f"run {result.run_id} for {month}: {'SUCCESS' if result.success else 'FAILURE'}")
    for name in asset_names:
        if name in materialized:
            status = "materialized"
        elif name in failures:
            status = f"FAILED: {failures[name]}"
        else:
            status = "not materialized (an upstream step or blocking check failed)"
        print(f"  {name:<24} {status}")
    for evaluation in result.get_asset_check_evaluations():
        outcome = "passed" if evaluation.passed else f"FAILED ({evaluation.severity.value})"
        name = f"{evaluation.asset_key.to_user_string()}.{evaluation.check_name}"
        print(f"  check {name:<44} {outcome}")
    for step_key, message in failures.items():
        if step_key not in asset_names:
            print(f"  step {step_key} FAILED: {message}")
    return result.success


def materialize(selection: str, months: list[str], with_previous_month: bool) -> int:
    import dagster as dg

    from taxi_assets.ml.trip_files import previous_month
    from taxi_assets.partitions import FIRST_MONTH

    asset_names = [name.strip() for name in selection.split(",") if name.strip()]
    from taxi_assets.definitions import defs

    known = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    unknown = [name for name in asset_names if name not in known]
    if unknown:
        print(f"error: unknown asset(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}", file=sys.stderr)
        return 2

    instance = dg.DagsterInstance.get()
    ok = True
    for month in months:
        if with_previous_month and NEEDS_PREVIOUS_MONTH & set(asset_names) and month != FIRST_MONTH:
            previous = previous_month(month)
            done = instance.get_materialized_partitions(dg.AssetKey("cleaned_trips"))
            if previous not in done and previous not in months:
                print(f"{month} needs cleaned_trips for {previous}; materializing it first")
                if not _run(instance, PREVIOUS_MONTH_ASSETS, previous):
                    ok = False
                    continue
        ok = _run(instance, asset_names, month) and ok
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taxi-assets", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "materialize",
        help="materialize assets for one or more months; exits 1 if any run fails",
    )
    run.add_argument("--select", default=DEFAULT_SELECTION, help=f"comma-separated assets (default: {DEFAULT_SELECTION})")
    run.add_argument("--partition", action="append", default=[], metavar="YYYY-MM", help="a month; repeatable")
    run.add_argument("--partition-range", action="append", default=[], metavar="FIRST...LAST", help="an inclusive range of months")
    run.add_argument(
        "--no-previous-month",
        action="store_true",
        help="do not materialize the previous month's raw_trips/cleaned_trips when training_set needs them",
    )
    args = parser.parse_args(argv)

    if not os.environ.get("DAGSTER_HOME"):
        parser.error("DAGSTER_HOME is not set; `export DAGSTER_HOME=$PWD` uses the project's dagster.yaml")
    if args.command == "materialize":
        months = _expand_partitions(args.partition, args.partition_range)
        if not months:
            parser.error("give at least one --partition or --partition-range")
        return materialize(args.select, months, with_previous_month=not args.no_previous_month)
    return 2


if __name__ == "__main__":
    sys.exit(main())
