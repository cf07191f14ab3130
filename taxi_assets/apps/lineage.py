"""Where a registered model came from, and fitting it again from that: ``taxi-assets lineage`` and
``taxi-assets rebuild``, or ``taxi_assets.lineage()`` / ``taxi_assets.rebuild()`` from Python.

A client: it reads the MLflow registry (the version's ``lineage.*`` tags, its run and trials) and
the Dagster instance (the decisions in which the model served), and rebuilds from the trip source
the environment selects, never through the code location."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import dagster as dg

from taxi_assets.lib.catalog import CODE_VERSIONS
from taxi_assets.lib.tracking import REGISTERED_MODEL_PREFIX, open_client, registered_name, tracking_uri_for
from taxi_assets.ml.lineage import FILE_PREFIX, PREFIX, rebuild_problems, recorded_code, recorded_files, refit

EQUAL_WITHIN_MINUTES = 1e-6


class RebuildRefused(RuntimeError):
    """The model cannot be fitted again as it was: a trip file or the code changed (named)."""


def _client(instance: dg.DagsterInstance):
    return open_client(tracking_uri_for(instance))


@dataclass
class ModelLineage:
    registered: str
    version: str
    tags: dict[str, str]
    run_id: str
    trials: list[tuple[int, float, dict]] = field(default_factory=list)  # (number, rmse, params)
    decisions: list[tuple[str, str]] = field(default_factory=list)  # (month decided for, how)
    files_now: dict[str, str | None] = field(default_factory=dict)

    def text(self) -> str:
        """The chain, files to decisions, as ``taxi-assets lineage`` prints it."""
        tags = self.tags
        config = json.loads(tags.get(PREFIX + "config", "{}"))
        lines = [f"{self.registered} v{self.version}: {tags.get(PREFIX + 'asset', '?')}, trained for "
                 f"{tags.get(PREFIX + 'trained_for', '?')}", "  trip files:"]  # fmt: skip
        for month, version in sorted(recorded_files(tags).items()):
            now = self.files_now.get(month, "unknown")
            state = "unchanged" if now == version else f"NOW {now}" if now else "not in the source now"
            lines.append(f"    {month}  {version}  ({state})")
        lines.append(f"  training set: data version {tags.get(PREFIX + 'training_set', '?')}")
        code = recorded_code(tags)
        lines.append("  code versions: " + ", ".join(f"{asset} {version}" for asset, version in code.items()))
        lines.append(
            f"  package: taxi_assets {tags.get(PREFIX + 'package_version', '?')}, git "
            f"{tags.get(PREFIX + 'git_commit', 'unknown')}"
        )
        budget = {key: config[key] for key in ("max_evaluations", "timeout_seconds", "random_state") if key in config}
        lines.append(f"  run: dagster {tags.get('dagster.run_id', '?')}, mlflow {self.run_id}; config {budget}")
        best = min(self.trials, key=lambda trial: trial[1]) if self.trials else None
        chosen = " ".join(f"{key}={value}" for key, value in sorted(best[2].items())) if best else ""
        lines.append(
            f"  trials: {len(self.trials)}" + (f"; best #{best[0]}, RMSE {best[1]:.4f}: {chosen}" if best else "")
        )
        served = ", ".join(f"{month} ({how})" for month, how in self.decisions) or "never (no decision chose it)"
        lines.append(f"  served: {served}")
        return "\n".join(lines)


def _version(client, registered: str, version: str | None) -> str:
    if version is not None:
        return str(version)
    versions = client.search_model_versions(f"name = '{registered}'")
    if not versions:
        raise LookupError(f"no registered versions of {registered}; train the model first")
    return str(max(int(v.version) for v in versions))


def _decisions(instance: dg.DagsterInstance, model: str) -> list[tuple[str, str]]:
    """The production decisions (month, promoted or kept) whose serving model is ``model``, then
    the operators' (pin, rollback, approval) and automatic rollbacks that served it, with why."""
    from taxi_assets.lib.history import metadata_by_partition
    from taxi_assets.lib.steering import recorded_events
    from taxi_assets.ml.steering import AUTOMATIC

    automatic = [
        (month, str(metadata.get("decision")))
        for month, metadata in sorted(metadata_by_partition(instance, "production_model").items())
        if metadata.get("serving_model_version") == model
    ]
    steered = [
        (event.month or "-", f"{event.kind} by {event.by or 'unknown'} at {event.at}: {event.reason or 'no reason'}")
        for event in recorded_events(instance)
        if event.kind != AUTOMATIC and event.model is not None and event.model.label == model
    ]
    return automatic + steered


def _files_now(months, source=None) -> tuple[dict[str, str | None], dict[str, str]]:
    """The current versions of the trip files (and where they are), from the environment's source."""
    from taxi_assets.lib.sources import trip_source_from_env

    source = source or trip_source_from_env(resolved=True)
    return {m: source.data_version(m) for m in months}, {m: source.describe(m) for m in months}


def lineage(model: str, version: str | None = None, instance: dg.DagsterInstance | None = None, source=None):
    """A registered model version's lineage (see :class:`ModelLineage`); the latest version by default."""
    instance = instance or dg.DagsterInstance.get()
    client, registered = _client(instance), registered_name(model)
    version = _version(client, registered, version)
    details = client.get_model_version(registered, version)
    tags, run_id = dict(details.tags), str(details.run_id)
    experiment = client.get_run(run_id).info.experiment_id
    trials = [
        (int(run.data.tags.get("trial", 0)), float(run.data.metrics.get("rmse", float("nan"))), dict(run.data.params))
        for run in client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{run_id}'", max_results=1000)
    ]
    files_now, _ = _files_now(recorded_files(tags), source)
    return ModelLineage(
        registered, version, tags, run_id, sorted(trials), _decisions(instance, f"{registered} v{version}"),
        files_now,
    )  # fmt: skip


@dataclass(frozen=True)
class Rebuilt:
    registered: str
    version: str
    rows: int  # validation rows compared
    max_difference: float  # minutes, between the rebuilt model and the registered one

    @property
    def equal(self) -> bool:
        return self.max_difference <= EQUAL_WITHIN_MINUTES


def rebuild(model: str, version: str, instance: dg.DagsterInstance | None = None, source=None) -> Rebuilt:
    """Fit the registered version again from its lineage (the same trip files, code, rows,
    hyperparameters and seed) and compare its predictions on the validation rows with the
    registered model's. Refuses (:class:`RebuildRefused`, naming the file) when a trip file's
    version or an asset's code version differs from the recorded one."""
    from taxi_assets.lib.sources import trip_source_from_env

    instance = instance or dg.DagsterInstance.get()
    source = source or trip_source_from_env(resolved=True)
    client, registered = _client(instance), registered_name(model)
    tags = dict(client.get_model_version(registered, str(version)).tags)
    if PREFIX + "fit" not in tags:
        raise RebuildRefused(f"{registered} v{version} has no recorded lineage (trained before lineage was recorded)")
    files_now, where = _files_now(recorded_files(tags), source)
    problems = rebuild_problems(tags, files_now, CODE_VERSIONS, where)
    if problems:
        raise RebuildRefused(f"refusing to rebuild {registered} v{version}: " + "; ".join(problems))
    dataset = _training_set(source, tags[PREFIX + "trained_for"])
    fit = json.loads(tags[PREFIX + "fit"])
    rebuilt = _predictor(registered, fit, dataset, tags[PREFIX + "trained_for"])
    original = _registered_predictor(client, registered, str(version))
    ours, theirs = rebuilt.predict_matrix(dataset.X_val), original.predict_matrix(dataset.X_val)
    import numpy as np

    difference = float(np.max(np.abs(np.asarray(ours, float) - np.asarray(theirs, float)))) if len(ours) else 0.0
    return Rebuilt(registered, str(version), len(ours), difference)


def _training_set(source, month: str):
    """The month's training set built again from the trip files, as the data assets build it."""
    from taxi_assets.lib.months import month_start, previous_month
    from taxi_assets.ml.cleaning import clean
    from taxi_assets.ml.dataset import build_training_set
    from taxi_assets.ml.features import combine_features

    months = [combine_features(clean(source.read(key).trips)) for key in (previous_month(month), month)]
    return build_training_set(months, split_at=month_start(month))


def _predictor(registered: str, fit: dict, dataset, month: str):
    from taxi_assets.ml.predictor import TripDurationPredictor

    name = registered.removeprefix(REGISTERED_MODEL_PREFIX)
    model = refit(name, fit, dataset.X_train, dataset.y_train, dataset.X_val, dataset.y_val)
    return TripDurationPredictor(
        name=name, kind=fit["kind"], model=model, vectorizer=dataset.dv, partition=month,
        best_iteration=fit.get("best_iteration"),
    )  # fmt: skip


def _registered_predictor(client, registered: str, version: str):
    """The registered version's predictor, from its MLflow artifact (the predictor folder)."""
    import tempfile
    from pathlib import Path

    import mlflow.artifacts

    from taxi_assets.lib.tracking import quiet_mlflow
    from taxi_assets.ml.model_files import load_predictor

    with tempfile.TemporaryDirectory() as scratch, quiet_mlflow():
        source = client.get_model_version_download_uri(registered, version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{source}/artifacts/predictor", dst_path=scratch, tracking_uri=client.tracking_uri
        )
        return load_predictor(Path(local))


__all__ = ["FILE_PREFIX", "ModelLineage", "RebuildRefused", "Rebuilt", "lineage", "rebuild"]
