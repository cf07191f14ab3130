"""taxi-assets: materialize months of the taxi asset graph, or serve the production model.

``taxi-assets materialize`` exists because ``dagster asset materialize`` has been reported to exit 0
after a failed run (dagster 1.13), which a cron job or CI step would never notice. This command runs one
Dagster run per month on the instance at ``DAGSTER_HOME``, prints what happened to every asset
and check, and exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, cast

from taxi_assets.lib.catalog import RETRAINING_ASSETS

MONTHLY_ASSETS = [*RETRAINING_ASSETS, "trip_predictions"]

DEFAULT_SELECTION = "raw_trips,cleaned_trips,training_set"  # the models: add sklearn_models,xgboost_model


def _expand_partitions(partitions: Sequence[str], ranges: Sequence[str]) -> list[str]:
    from taxi_assets.lib.months import partition_keys

    valid = partition_keys()
    months: list[str] = []
    for text in ranges:
        start, _, end = text.partition("...")
        if not end or start not in valid or end not in valid or start > end:
            raise SystemExit(
                f"error: --partition-range must be FIRST...LAST months in {valid[0]}..{valid[-1]}, got {text!r}"
            )
        months += valid[valid.index(start) : valid.index(end) + 1]
    for month in partitions:
        if month not in valid:
            raise SystemExit(f"error: unknown partition {month!r}: months run from {valid[0]} to {valid[-1]} (YYYY-MM)")
        months.append(month)
    return list(dict.fromkeys(months))


def _code_location():
    """The code location, loaded by module name the way Dagster's own CLI loads it (this module
    never imports it): step processes rebuild it from the same reference. None when this Dagster
    lacks the loader (see lib/dagster_private.py)."""
    from taxi_assets.lib.catalog import CODE_LOCATION_MODULE
    from taxi_assets.lib.dagster_private import code_location

    return code_location(CODE_LOCATION_MODULE)


def _run_job(job: str, **arguments):
    """Run ``job`` as Dagster's CLI would (a context manager around its result): its steps in
    their own processes where the job says so, or all in this process when the loader is missing."""
    import contextlib
    import importlib

    import dagster as dg

    from taxi_assets.lib.catalog import CODE_LOCATION_MODULE

    location = _code_location()
    if location is not None:
        return dg.execute_job(location.get_reconstructable_job(job), **arguments)
    loaded: Any = importlib.import_module(CODE_LOCATION_MODULE).defs
    definitions = cast(dg.Definitions, loaded() if callable(loaded) else loaded)
    result = definitions.resolve_job_def(job).execute_in_process(
        instance=arguments.pop("instance"), raise_on_error=False, **arguments
    )
    return contextlib.nullcontext(result)


def _execute(instance, asset_names: list[str], month: str, run_config: dict | None, verbose: bool = False):
    """Run ``asset_names`` for ``month``; returns a context manager around the run's result."""
    import dagster as dg

    from taxi_assets.lib.catalog import DATA_PREPARATION_ASSETS, MONTH_TAG, RETRAINING_ASSETS, TRIP_FILES

    # Ingesting observes the trip file first, so raw_trips records the version it read.
    keys = [dg.AssetKey(name) for name in ([TRIP_FILES] if "raw_trips" in asset_names else []) + asset_names]
    # The month tag: the new-data sensor leaves a month alone while a run for it is in flight.
    tags = {"taxi_assets/launched_by": "taxi-assets materialize", "dagster/partition": month, MONTH_TAG: month}
    # The console shows what the steps log at INFO (progress: trial i of N, best RMSE, time left);
    # Dagster's own events are DEBUG, shown with --verbose.
    logging = {"loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "INFO"}}}}
    run_config = {**(run_config or {}), **logging}
    # The retraining job: a process per step, two at a time, so the models train in parallel.
    # Data preparation runs in this process, as the code location's in-process executor would.
    training = set(asset_names) <= set(RETRAINING_ASSETS) - set(DATA_PREPARATION_ASSETS)
    return _run_job(
        "retraining" if training else "__ASSET_JOB",
        instance=instance,
        asset_selection=keys,
        tags=tags,
        run_config=run_config,
    )


def _root_cause(error) -> str:
    """The first line of what went wrong: a Failure's own message (it names partition and file),
    or the user exception Dagster wraps in DagsterExecutionStepExecutionError."""
    if error.cls_name == "DagsterExecutionStepExecutionError" and error.cause is not None:
        error = error.cause
    line = (error.message.strip().splitlines() or ["failed"])[0]
    return re.sub(r"^[\w.]+\.Failure: ", "", line)  # a Failure's class path, wherever Dagster keeps it


def _last_log(instance, run_id: str, step: str) -> str:
    """What ``step`` last logged in the run (its own words for why it produced nothing)."""
    logged = [
        entry.user_message
        for entry in instance.all_logs(run_id)
        if entry.step_key == step and not entry.is_dagster_event
    ]
    return logged[-1] if logged else "its step succeeded without output"


def _run(instance, asset_names: list[str], month: str, run_config: dict | None = None, verbose: bool = False) -> bool:
    """One run of ``asset_names`` for ``month``; prints a status line per asset and check."""
    with _execute(instance, asset_names, month, run_config, verbose) as result:
        materialized = {
            event.asset_key.to_user_string() for event in result.get_asset_materialization_events() if event.asset_key
        }
        failures = {
            event.step_key or "run": _root_cause(event.step_failure_data.error)
            for event in result.get_step_failure_events()
        }
        succeeded = {event.step_key for event in result.get_step_success_events()}
        print(f"run {result.run_id} for {month}: {'SUCCESS' if result.success else 'FAILURE'}")
        for name in asset_names:
            failed_steps = [
                message for step, message in failures.items() if step == name or step.startswith(f"{name}.")
            ]
            if name in materialized:
                status = "materialized"
            elif failed_steps:
                status = f"FAILED: {failed_steps[0]}"
            elif name in succeeded:  # the step ran and chose not to output (e.g. no model to score with)
                status = f"nothing to materialize: {_last_log(instance, result.run_id, name)}"
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


def materialize(
    selection: str, months: list[str], with_previous_month: bool, run_config: dict | None = None, verbose: bool = False
) -> int:
    """One run per month of the selected assets (the previous month prepared first when needed)."""
    import dagster as dg

    from taxi_assets.lib.catalog import MODEL_ASSETS
    from taxi_assets.lib.months import NEEDS_PREVIOUS_MONTH, PREVIOUS_MONTH_ASSETS, has_previous_month, previous_month

    asset_names = [name.strip() for name in selection.split(",") if name.strip()]
    if asset_names == ["all"]:
        asset_names = list(MONTHLY_ASSETS)
    known = set(MONTHLY_ASSETS)
    unknown = [name for name in asset_names if name not in known]
    if unknown:
        print(f"error: unknown asset(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}", file=sys.stderr)
        return 2

    instance = dg.DagsterInstance.get()
    ok = True
    for month in months:
        if with_previous_month and NEEDS_PREVIOUS_MONTH & set(asset_names) and has_previous_month(month):
            previous = previous_month(month)
            done = instance.get_materialized_partitions(dg.AssetKey("cleaned_trips"))
            if previous not in done and previous not in months:
                print(f"{month} needs cleaned_trips for {previous}; materializing it first")
                if not _run(instance, PREVIOUS_MONTH_ASSETS, previous, verbose=verbose):
                    ok = False
                    continue
        selected = asset_names
        if not has_previous_month(month) and NEEDS_PREVIOUS_MONTH & set(asset_names):
            # Nothing before the first month to train on: prepare it (for the next month) only.
            selected = [name for name in asset_names if name in PREVIOUS_MONTH_ASSETS]
            print(
                f"{month} is the first partition: only {', '.join(selected) or 'nothing'} "
                "(no previous month to train on)"
            )
        preparation = [name for name in selected if name not in MODEL_ASSETS and name != "production_model"]
        training = [name for name in selected if name in MODEL_ASSETS or name == "production_model"]
        # Data preparation first (it has no config), then the models on top of it.
        if preparation and not _run(instance, preparation, month, verbose=verbose):
            ok = False
            continue
        if training and not _run(instance, training, month, run_config, verbose):
            ok = False
    if ok and "production_model" in asset_names:
        print_summary(instance, months[-1])
    return 0 if ok else 1


def print_summary(instance, month: str) -> None:
    """What a person reads in five seconds after training a month: each model's RMSE, which one
    serves and why, the batch predictions, where MLflow's store is, and what to run next."""
    from taxi_assets.lib.history import latest_metadata
    from taxi_assets.lib.tracking import tracking_uri_for

    decision = latest_metadata(instance, "production_model", month) or {}
    sklearn = latest_metadata(instance, "sklearn_models", month) or {}
    xgb = latest_metadata(instance, "xgboost_model", month) or {}
    rmse = {key.removesuffix("_rmse"): value for key, value in sklearn.items() if key.endswith("_rmse")}
    rmse.pop("best", None)
    rmse |= {"xgboost": xgb["rmse"]} if "rmse" in xgb else {}
    serving = decision.get("serving_model_version", "?")
    print(
        f"\n{month}: validation RMSE (minutes) "
        + ", ".join(f"{n} {v:.3f}" for n, v in sorted(rmse.items(), key=lambda x: x[1]))
    )
    print(f"Serves: {serving} ({decision.get('decision', '?')}: {decision.get('reason', '?')})")
    scored = latest_metadata(instance, "trip_predictions", month)
    if scored:
        print(f"Batch predictions: {scored['dagster/row_count']:,} trips of {month} scored by {scored['model']} "
              f"(RMSE {scored['rmse']:.3f}): {scored['file']}")  # fmt: skip
    else:
        print(f"Batch predictions: none for {month} (no model served before it); the next month is scored by {serving}")
    print(f"MLflow store: {tracking_uri_for(instance)}")
    print(NEXT_STEPS)


# Two trips, in the request the course's students send first (ids as strings), word for word.
SAMPLE_REQUEST = (
    '{"inputs": [{"DOLocationID": "239", "PULocationID": "236", "trip_distance": 1.98}, '
    '{"DOLocationID": "170", "PULocationID": "65", "trip_distance": 6.54}]}'
)
NEXT_STEPS = f"""Next:
  .venv/bin/dg dev -h 127.0.0.1 -p 3000         # the UI (lineage, runs, charts) on http://127.0.0.1:3000
  export TAXI_API_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
  .venv/bin/taxi-assets serve &                 # the model that serves, on http://127.0.0.1:8000
  curl -s http://127.0.0.1:8000/predict -H "Authorization: Bearer $TAXI_API_TOKEN" \\
    -d '{SAMPLE_REQUEST}'"""


PERFORMANCE_COLUMNS = (
    ("month", 8), ("model", 32), ("trained", 8), ("chosen", 8), ("RMSE chosen", 12), ("RMSE", 7), ("MAE", 6),
    ("p90", 6), (">15 min", 8),
)  # fmt: skip


def print_performance(month: str | None) -> int:
    """The realized error of each served model on each month it scored, from trip_predictions'
    metadata (no data is read); exit 1 when there is nothing to show."""
    import dagster as dg

    from taxi_assets.lib.history import metadata_by_partition

    scored = metadata_by_partition(dg.DagsterInstance.get(), "trip_predictions")
    months = [month] if month else sorted(scored)
    missing = [key for key in months if key not in scored]
    if not months or missing:
        what = f"no batch predictions for {missing[0]}" if missing else "no month has batch predictions yet"
        print(f"{what}: trip_predictions runs on its own after a month's retraining, or materialize it "
              "(`taxi-assets materialize --partition YYYY-MM --select trip_predictions`)", file=sys.stderr)  # fmt: skip
        return 1
    print("  ".join(name.ljust(width) for name, width in PERFORMANCE_COLUMNS).rstrip())
    for key in months:
        m = scored[key]
        values = (key, m["model"], m["model_trained_for"], m["decided_for"], f"{m['validation_rmse_at_selection']:.3f}",
                  f"{m['rmse']:.3f}", f"{m['mae']:.2f}", f"{m['p90_abs_error_minutes']:.2f}",
                  f"{m['share_over_15_minutes']:.1%}")  # fmt: skip
        print("  ".join(str(v).ljust(w) for v, (_, w) in zip(values, PERFORMANCE_COLUMNS, strict=True)).rstrip())
    return 0


def print_lineage(model: str, version: str | None) -> int:
    from taxi_assets.apps.lineage import lineage

    try:
        print(lineage(model, version).text())
    except (LookupError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def rebuild_model(model: str, version: str) -> int:
    """Exit 0 when the rebuilt model predicts the validation rows as the registered one does."""
    from taxi_assets.apps.lineage import RebuildRefused, rebuild

    try:
        rebuilt = rebuild(model, version)
    except (RebuildRefused, LookupError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    verdict = "equal" if rebuilt.equal else "DIFFERENT"
    print(
        f"{rebuilt.registered} v{rebuilt.version} rebuilt from its lineage: predictions on {rebuilt.rows:,} validation "
        f"trips {verdict} to the registered model's (largest difference {rebuilt.max_difference:.2g} minutes)"
    )
    return 0 if rebuilt.equal else 1


def steer(action: str, **config: str) -> int:
    """One operator decision (the steer_serving job, in this process); exit 1 naming what was refused."""
    import dagster as dg

    from taxi_assets.lib.catalog import STEERING_ASSET

    run_config = {
        "ops": {STEERING_ASSET: {"config": {"action": action, **{k: v for k, v in config.items() if v}}}},
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
    }
    tags = {"taxi_assets/launched_by": f"taxi-assets {action}"}
    with _run_job("steer_serving", instance=dg.DagsterInstance.get(), run_config=run_config, tags=tags) as result:
        if not result.success:
            errors = [_root_cause(event.step_failure_data.error) for event in result.get_step_failure_events()]
            print(f"error: {errors[0] if errors else 'the steer_serving run failed'}", file=sys.stderr)
            return 1
        [event] = result.get_asset_materialization_events()
        metadata = event.materialization.metadata
    print(f"{action}: {metadata['outcome'].value} (run {result.run_id})")
    print(f"serving: {metadata['serving'].value}" + (" (pinned)" if metadata["pinned"].value else ""))
    return 0


def print_serving() -> int:
    """What serves by the recorded decisions: how it got there, what it replaced, pins and approvals."""
    import dagster as dg

    from taxi_assets.lib.steering import steering_state

    state = steering_state(dg.DagsterInstance.get())
    if state.serving is None:
        print("nothing serves yet: materialize production_model for a month")
        return 0
    served = state.serving
    since = served.since
    print(f"serving: {served.model.label} ({served.model.name} trained for {served.model.model_partition})")
    print(f"  since: {since.kind} for {since.month}" + (f" by {since.by}" if since.by else "") + f" at {since.at}")
    if since.reason:
        print(f"  why: {since.reason}")
    print(f"  replaced: {served.replaced.label if served.replaced else 'nothing'}")
    print(f"  rollback would serve: {state.before[-1].model.label if state.before else 'nothing (no model before it)'}")
    if state.pinned is not None:
        print(f"  pinned by {state.pinned.by}: automatic decisions wait until `taxi-assets promote --unpin`")
    for month, waiting in sorted(state.pending.items()):
        model = waiting.event.model.label if waiting.event.model else "?"
        print(f"  {month}: {model} {waiting.status} {waiting.note}".rstrip())
    return 0


def _add_steering(commands) -> None:
    promote = commands.add_parser(
        "promote", help="serve a registered model version now and pin it (or --unpin); exits 1 if refused"
    )
    promote.add_argument("model", nargs="?", help="xgboost, LinearRegression, ... or a registered name")
    promote.add_argument("version", nargs="?", help="the registered version")
    promote.add_argument("--unpin", action="store_true", help="let the automatic decisions replace the pin again")
    rollback = commands.add_parser("rollback", help="serve the model that served before the current one (pinned)")
    approve = commands.add_parser("approve", help="serve the challenger waiting for approval for a month")
    approve.add_argument("month", metavar="YYYY-MM")
    reject = commands.add_parser("reject", help="refuse the challenger waiting for approval for a month")
    reject.add_argument("month", metavar="YYYY-MM")
    for command in (promote, rollback, approve, reject):
        command.add_argument("--reason", default="", help="why (kept with the decision; shown by lineage)")
        command.add_argument("--by", default="", help="who decides (default: your OS user)")
    commands.add_parser("serving", help="print what serves, how it got there, and what waits for approval")


def run_promote(args, parser: argparse.ArgumentParser) -> int:
    if args.unpin:
        if args.model or args.version:
            parser.error("promote --unpin takes no model or version")
        return steer("unpin", reason=args.reason, by=args.by)
    if not (args.model and args.version):
        parser.error("promote needs MODEL VERSION (for example: promote xgboost 2 --reason '...'), or --unpin")
    return steer("promote", model=args.model, version=args.version, reason=args.reason, by=args.by)


def _add_materialize(commands) -> None:
    run = commands.add_parser("materialize", help="materialize assets for one or more months; exits 1 if any run fails")
    run.add_argument(
        "--select",
        default=DEFAULT_SELECTION,
        metavar="ASSETS",
        help=f"comma-separated monthly assets, from: {', '.join(MONTHLY_ASSETS)}, or all "
        f"(default: {DEFAULT_SELECTION})",
    )
    run.add_argument("--partition", action="append", default=[], metavar="YYYY-MM", help="a month; repeatable")
    run.add_argument(
        "--partition-range", action="append", default=[], metavar="FIRST...LAST", help="an inclusive range of months"
    )
    run.add_argument("--config", metavar="FILE", help="run config YAML (ops/asset config), as in the UI's Launchpad")
    run.add_argument("--verbose", action="store_true", help="print Dagster's whole event log, not only progress")
    run.add_argument(
        "--no-previous-month",
        action="store_true",
        help="do not materialize the previous month's raw_trips/cleaned_trips when training_set needs them",
    )


def _run_config(parser: argparse.ArgumentParser, path: str | None) -> dict | None:
    """The run config in the YAML file at ``path`` (None without one); a clear error otherwise."""
    if not path:
        return None
    import yaml

    try:
        with open(path) as file:
            config = yaml.safe_load(file) or {}
    except OSError as error:
        parser.error(f"cannot read the run config {path}: {error.strerror}")
    except yaml.YAMLError as error:
        parser.error(f"the run config {path} is not valid YAML: {error}")
    if not isinstance(config, dict):
        parser.error(f"the run config {path} must be a mapping (ops: ...), as in the Launchpad")
    return config


def run_materialize(args, parser: argparse.ArgumentParser) -> int:
    months = _expand_partitions(args.partition, args.partition_range)
    if not months:
        parser.error("give at least one --partition or --partition-range")
    run_config = _run_config(parser, args.config)
    return materialize(args.select, months, not args.no_previous_month, run_config, args.verbose)


def _add_serve(commands) -> None:
    serve = commands.add_parser(
        "serve", help="serve the production model over HTTP (POST /invocations and /predict, GET /ping and /health)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free port)")
    serve.add_argument(
        "--port-file", metavar="FILE", help="write the port it listens on to FILE once bound (useful with --port 0)"
    )
    serve.add_argument(
        "--reload-interval", type=float, default=1.0,
        help="seconds between checks for a new production model (0: never)",
    )  # fmt: skip
    serve.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without TAXI_API_TOKEN, for local tools such as MLflow's scoring client; only on a loopback "
        "--host (127.0.0.1, ::1, localhost)",
    )
    serve.add_argument(
        "--body-timeout", type=float, default=30.0, metavar="SECONDS",
        help="answer 408 when a request's body has not all arrived within SECONDS (default 30)",
    )  # fmt: skip


def run_serve(args, parser: argparse.ArgumentParser) -> int:
    from taxi_assets.apps.server import serve

    if not args.body_timeout > 0:
        parser.error(f"--body-timeout must be a positive number of seconds, got {args.body_timeout:g}")
    return serve(
        args.host, args.port, args.reload_interval, args.port_file, no_auth=args.no_auth, body_timeout=args.body_timeout
    )


def _add_watching(commands) -> None:
    performance = commands.add_parser(
        "performance", help="print the realized error of the models that served, month by month (trip_predictions)"
    )
    performance.add_argument("--month", metavar="YYYY-MM", help="one month only")
    trace = commands.add_parser(
        "lineage", help="print where a registered model came from: trip files, code, run, trials, decisions"
    )
    trace.add_argument("model", help="xgboost, LinearRegression, ... or a registered name (taxi-duration-...)")
    trace.add_argument("version", nargs="?", help="the registered version (default: the latest)")
    again = commands.add_parser(
        "rebuild", help="fit a registered model version again from its lineage and compare its predictions"
    )
    again.add_argument("model", help="xgboost, LinearRegression, ... or a registered name (taxi-duration-...)")
    again.add_argument("version", help="the registered version")


COMMANDS = {
    "materialize": run_materialize,
    "serve": run_serve,
    "performance": lambda args, parser: print_performance(args.month),
    "lineage": lambda args, parser: print_lineage(args.model, args.version),
    "rebuild": lambda args, parser: rebuild_model(args.model, args.version),
    "promote": run_promote,
    "rollback": lambda args, parser: steer("rollback", reason=args.reason, by=args.by),
    "approve": lambda args, parser: steer("approve", month=args.month, reason=args.reason, by=args.by),
    "reject": lambda args, parser: steer("reject", month=args.month, reason=args.reason, by=args.by),
    "serving": lambda args, parser: print_serving(),
}


def _check_dagster_home(parser: argparse.ArgumentParser) -> None:
    """The instance at DAGSTER_HOME; without it, the project's own (as Dagster's tools use it when
    run in the project), when the package runs from a checkout that has a dagster.yaml."""
    from taxi_assets.lib.instance import PROJECT

    home = os.environ.get("DAGSTER_HOME")
    if not home and (PROJECT / "dagster.yaml").is_file() and (PROJECT / "pyproject.toml").is_file():
        home = os.environ["DAGSTER_HOME"] = str(PROJECT)
    if not home:
        parser.error("DAGSTER_HOME is not set; export DAGSTER_HOME=<the folder with your dagster.yaml>")
    if not os.path.isdir(home):
        parser.error(
            f"DAGSTER_HOME={home} is not a folder; point it at the project's checkout (export DAGSTER_HOME=$PWD) "
            "or at a folder with your dagster.yaml"
        )


def build_parser() -> argparse.ArgumentParser:
    """Every command's arguments (parsing runs nothing)."""
    parser = argparse.ArgumentParser(
        prog="taxi-assets",
        description="Materialize months of the taxi asset graph, serve the production model, and watch and trace "
        "the models. Runs on the Dagster instance at DAGSTER_HOME; materialize exits 1 if any run fails.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_materialize, _add_serve, _add_watching, _add_steering):
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_dagster_home(parser)
    return COMMANDS[args.command](args, parser)


if __name__ == "__main__":
    sys.exit(main())
