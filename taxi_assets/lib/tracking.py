"""MLflow tracking as a small ConfigurableResource.

Why not dagster-mlflow's ``mlflow_tracking`` resource: it is a legacy function resource (no typed
config in the launch form), it opens one MLflow run per Dagster run that stays RUNNING unless the
``end_mlflow_on_run_finished`` hook ends it, and that hook is reported to end it after the first
op (dagster-io/dagster#21872), which breaks fan-out steps. Here every Dagster step gets its own
parent run, ended FINISHED, FAILED or KILLED by a context manager whatever happens, with the Dagster run
id, asset and partition as tags. MLflow itself is imported only by the steps that train.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from taxi_assets.lib.lifecycle import op_context, run_id_of

EXPERIMENT = "taxi-duration"
# Every model is registered as taxi-duration-<model> (taxi-duration-xgboost, ...-LinearRegression).
REGISTERED_MODEL_PREFIX = "taxi-duration-"


def registered_name(model: str) -> str:
    """``xgboost``, ``LinearRegression`` or ``taxi-duration-...`` -> the registered model's name."""
    if model.startswith(REGISTERED_MODEL_PREFIX):
        return model
    from taxi_assets.ml.hyperparameters import short_name

    return REGISTERED_MODEL_PREFIX + ("xgboost" if model.lower() == "xgboost" else short_name(model))


CHAMPION_ALIAS = "champion"
DECIDED_FOR_TAG = "champion_decided_for"


@contextmanager
def _ended_by_outcome(mlflow):
    """End the active MLflow run by how the block ends: FINISHED, KILLED (interrupted or stopped:
    someone or something ended the Dagster run) or FAILED."""
    from taxi_assets.ml.budget import Stopped

    try:
        yield
    except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError, Stopped):
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


@contextmanager
def quiet_mlflow(log=None):
    """MLflow's chatter (store migrations, "Successfully registered model", the signature's
    example run, artifact progress bars) goes to the Dagster log at DEBUG instead of the terminal,
    where it would bury a run's progress lines. Warnings and errors still show."""
    import io
    import logging
    import sys

    logger = logging.getLogger("mlflow")
    level, progress = logger.level, os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    captured = io.StringIO()
    logger.setLevel(logging.WARNING)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    original, sys.stderr = sys.stderr, captured
    try:
        yield
    finally:
        sys.stderr = original
        logger.setLevel(level)
        if progress is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = progress
        text = captured.getvalue().strip()
        if text and log is not None:
            log.debug(f"mlflow: {text}")
        elif text:
            original.write(text + "\n")


@contextmanager
def _store_lock(uri: str):
    """An exclusive lock beside a local SQLite store, a no-op for server stores."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(uri.removeprefix("sqlite:///") + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_client(uri: str):
    """An MlflowClient on ``uri`` (tracking and registry) whose store is ready. Opening a new local
    SQLite store runs its migrations, and two processes doing so at once fail (alembic's "expected
    to match one row"): the first opening in a process happens under the store's lock."""
    import mlflow

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with _store_lock(uri), quiet_mlflow():
        client = mlflow.MlflowClient(uri, registry_uri=uri)
        client.search_registered_models(max_results=1)  # the registry's store too (MLflow opens it lazily)
    return client


def local_store(instance: dg.DagsterInstance) -> tuple[str, str]:
    """The default MLflow store beside the Dagster instance's storage: (tracking URI, artifacts)."""
    root = Path(instance.storage_directory()).resolve().parent / "mlflow"
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def tracking_uri_for(instance: dg.DagsterInstance) -> str:
    """Where the code location tracks for ``instance``: MLFLOW_TRACKING_URI, else the local store
    beside it (for clients: lineage, rebuild)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_store(instance)[0]


class MlflowTracking(dg.ConfigurableResource):
    """Where trials, models and the model registry are recorded."""

    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI. Default: MLFLOW_TRACKING_URI, else a SQLite store in "
        "<instance>/mlflow beside the Dagster instance's storage.",
    )
    experiment_name: str = Field(default=EXPERIMENT, description="MLflow experiment for all runs.")

    _uri: str | None = PrivateAttr(default=None)
    _artifacts: str | None = PrivateAttr(default=None)
    # The MLflow runs this process has open (a step's parent run and its current trial).
    _open_runs: list[str] = PrivateAttr(default_factory=list)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            if context.instance is None:
                raise RuntimeError("the default MLflow store lives beside a Dagster instance; give tracking_uri")
            uri, artifacts = local_store(context.instance)
            self._artifacts = artifacts
        self._uri = uri

    @property
    def uri(self) -> str:
        if self._uri is None:
            raise RuntimeError("MlflowTracking is used outside a Dagster run")
        return self._uri

    def _activate(self):
        import mlflow

        # MLflow's setters also write MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI into the
        # environment; put the user's values back, so the next resource in this process (another
        # instance, a test) still sees what the user set, not the store this one chose.
        saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        client = open_client(self.uri)
        with _store_lock(self.uri), quiet_mlflow():
            from mlflow.exceptions import MlflowException

            if client.get_experiment_by_name(self.experiment_name) is None:
                try:
                    client.create_experiment(self.experiment_name, artifact_location=self._artifacts)
                except MlflowException as error:
                    # Another step process (the fan-out, XGBoost) created it first; the file
                    # lock above only serialises local SQLite stores, not a tracking server.
                    if error.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
        mlflow.set_experiment(self.experiment_name)
        return mlflow

    @staticmethod
    def dagster_tags(context, asset: str) -> dict[str, str]:
        try:
            step = op_context(context).op_handle.name
        except Warning:
            raise  # a deprecation must be seen, not taken for a missing handle
        except Exception:  # a directly invoked asset (tests, notebooks) has no op handle
            step = asset
        tags = {"dagster.run_id": run_id_of(context), "dagster.asset": asset, "dagster.step": step}
        if context.has_partition_key:
            tags["dagster.partition"] = context.partition_key
        return tags

    @contextmanager
    def step_run(self, context, asset: str, run_name: str, extra_tags: dict[str, str] | None = None):
        """A parent MLflow run for one Dagster step: FINISHED on success, KILLED when the step was
        interrupted or asked to stop, FAILED on any other error."""
        mlflow = self._activate()
        while mlflow.active_run():  # never nest under a run a previous step left open
            mlflow.end_run("KILLED")
        tags = {**self.dagster_tags(context, asset), **(extra_tags or {})}
        run = mlflow.start_run(run_name=run_name, tags=tags)
        with self._open(run.info.run_id), _ended_by_outcome(mlflow):
            yield run

    def trial_runner(self, context, asset: str, extra_tags: dict[str, str] | None = None, on_trial=None):
        """A ``run_trial`` for taxi_assets.ml.training: one nested MLflow run per trial.

        ``on_trial(number, params, metrics, seconds)`` is called after each trial (progress logs)."""
        import time

        import mlflow

        tags = {**self.dagster_tags(context, asset), **(extra_tags or {})}
        counter = {"n": 0}

        def run_trial(params, evaluate):
            counter["n"] += 1
            number = counter["n"]
            trial = mlflow.start_run(run_name=f"trial-{number}", nested=True, tags={**tags, "trial": str(number)})
            with self._open(trial.info.run_id), _ended_by_outcome(mlflow):
                mlflow.log_params(params)
                began = time.perf_counter()
                metrics = evaluate()
                mlflow.log_metrics(metrics)
            if on_trial is not None:
                on_trial(number, params, metrics, time.perf_counter() - began)
            return metrics

        return run_trial

    @contextmanager
    def _open(self, run_id: str):
        self._open_runs.append(run_id)
        try:
            yield
        finally:
            self._open_runs.remove(run_id)

    def end_open_runs(self, status: str = "KILLED") -> list[str]:
        """End the MLflow runs this process has open with ``status``, from any thread (MLflow's
        active runs belong to the thread that started them): for a step that must exit in the
        middle of a native call (:func:`taxi_assets.lib.lifecycle.exit_stuck_step`)."""

        client = open_client(self.uri)
        ended = list(reversed(self._open_runs))  # trials before their parent
        for run_id in ended:
            client.set_terminated(run_id, status=status)
        return ended

    def end_runs_of(self, dagster_run_id: str, status: str) -> list[str]:
        """End every MLflow run still RUNNING that a Dagster run started, with ``status``
        (FAILED or KILLED); returns their ids. For runs whose process died before it could."""

        client = open_client(self.uri)
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            return []
        ended = []
        for run in client.search_runs(
            [experiment.experiment_id],
            f"tags.`dagster.run_id` = '{dagster_run_id}' and attributes.status = 'RUNNING'",
            max_results=5000,
        ):
            client.set_terminated(run.info.run_id, status=status)
            ended.append(run.info.run_id)
        return ended

    def log_and_register(
        self,
        context,
        asset: str,
        predictor,
        registered_model: str,
        metrics: dict[str, float],
        params: dict,
        lineage: dict[str, str] | None = None,
    ):
        """Log the predictor as an MLflow model and register a new version, with its lineage
        (``lineage.*`` tags, see ``taxi_assets.ml.lineage``) on the version and the run.

        The model is "models from code" (``taxi_assets/ml/mlflow_model.py``) with the predictor
        folder as its artifact, in the libraries' own formats: nothing is CloudPickled. Its
        signature comes from TripRecord, through the model's type hints. It carries the modules
        it imports and pins what they import (``taxi_assets.lib.model_code``), so it loads in an
        environment made from its requirements alone."""
        import tempfile

        import mlflow

        import taxi_assets.ml as ml_package
        from taxi_assets.lib.model_code import model_code_paths, model_requirements, without_the_projects_lock
        from taxi_assets.ml.model_files import REFERENCE_TRIPS, save_predictor

        mlflow.log_params({f"best_{key}": value for key, value in params.items()})
        mlflow.log_metrics({f"val_{key}": value for key, value in metrics.items()})
        mlflow.set_tags(lineage or {})
        with (
            tempfile.TemporaryDirectory() as scratch,
            quiet_mlflow(context.log),
            model_code_paths() as code_paths,
            without_the_projects_lock(),
        ):
            folder = Path(scratch) / "predictor"
            folder.mkdir()
            save_predictor(predictor, folder)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(ml_package.__file__).parent / "mlflow_model.py"),
                artifacts={"predictor": str(folder)},
                code_paths=code_paths,
                input_example=REFERENCE_TRIPS[:2],
                registered_model_name=registered_model,
                # Listed, not inferred: inference imports and probes the model, which is slow.
                pip_requirements=model_requirements(),
            )
        version = str(info.registered_model_version)
        client = open_client(self.uri)
        for key, value in {**self.dagster_tags(context, asset), **(lineage or {})}.items():
            client.set_model_version_tag(registered_model, version, key, value)
        return version

    def version_tags(self, registered_model: str | None, version: str | None) -> dict[str, str]:
        """A registered version's tags (its lineage among them); empty when there is none."""
        if not (registered_model and version):
            return {}

        self._activate()
        client = open_client(self.uri)
        return dict(client.get_model_version(registered_model, version).tags)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        import mlflow

        mlflow.log_metrics(metrics)

    def log_params(self, params: dict) -> None:
        import mlflow

        mlflow.log_params(params)

    def set_tags(self, tags: dict[str, str]) -> None:
        import mlflow

        mlflow.set_tags(tags)

    def log_charts(self, charts: dict[str, bytes], folder: str = "charts") -> None:
        """PNG charts as artifacts of the active run (``charts/<name>.png``)."""
        import tempfile

        import mlflow

        with tempfile.TemporaryDirectory() as directory:
            for name, png in charts.items():
                path = Path(directory) / f"{name}.png"
                path.write_bytes(png)
                mlflow.log_artifact(str(path), artifact_path=folder)

    def registered_version(self, registered_model: str, version: str) -> dict[str, Any]:
        """A registered version's run metrics and tags, or LookupError naming what exists."""
        from mlflow.exceptions import MlflowException

        self._activate()
        client = open_client(self.uri)
        try:
            details = client.get_model_version(registered_model, version)
        except MlflowException:
            try:
                known = sorted(int(v.version) for v in client.search_model_versions(f"name = '{registered_model}'"))
            except MlflowException:
                known = []
            listed = ", ".join(map(str, known)) if known else "none"
            raise LookupError(
                f"{registered_model} has no version {version!r} (registered versions: {listed})"
            ) from None
        metrics = client.get_run(details.run_id).data.metrics if details.run_id else {}
        return {"tags": dict(details.tags), "metrics": dict(metrics), "source": details.source}

    def production_model(self, registered_model: str, version: str):
        """The registered version as a ProductionModel, from its own files in the registry."""
        import tempfile

        import mlflow.artifacts

        from taxi_assets.ml.champion import ProductionModel
        from taxi_assets.ml.lineage import PREFIX
        from taxi_assets.ml.model_files import load_predictor

        found = self.registered_version(registered_model, version)
        with tempfile.TemporaryDirectory() as scratch, quiet_mlflow():
            folder = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{registered_model}/{version}", dst_path=scratch, tracking_uri=self.uri
            )
            predictor = load_predictor(Path(folder) / "artifacts" / "predictor")
        month = found["tags"].get(PREFIX + "trained_for", "")
        return ProductionModel(
            predictor=predictor,
            name=predictor.name,
            model_partition=month,
            model_version=str(version),
            registered_model=registered_model,
            rmse=float(found["metrics"].get("val_rmse", float("nan"))),
            decided_for=month,
            reason=f"{registered_model} v{version} from the MLflow registry",
        )

    def champion(self) -> tuple[str, str] | None:
        """The registered model and version the ``champion`` alias names, if any holds it."""

        self._activate()
        client = open_client(self.uri)
        for model in client.search_registered_models(filter_string=f"name LIKE '{REGISTERED_MODEL_PREFIX}%'"):
            version = (model.aliases or {}).get(CHAMPION_ALIAS)
            if version is not None:
                return model.name, str(version)
        return None

    def set_champion(self, registered_model: str, version: str, decided_for: str) -> bool:
        """Point the ``champion`` alias at one version for the decision of month ``decided_for``,
        unless a newer month's decision holds it; returns whether the alias is now this version.

        The alias is taken off the other taxi-duration models (the champion may move from one
        registered model to another). The month of the decision is kept as the holder's
        ``champion_decided_for`` tag, so a backfill of an older month never moves it back.
        """

        self._activate()
        client = open_client(self.uri)
        holders = [
            model
            for model in client.search_registered_models(filter_string=f"name LIKE '{REGISTERED_MODEL_PREFIX}%'")
            if CHAMPION_ALIAS in (model.aliases or {})
        ]
        newer = [model.name for model in holders if (model.tags or {}).get(DECIDED_FOR_TAG, "") > decided_for]
        if newer:
            return False
        for model in holders:
            if model.name != registered_model:
                client.delete_registered_model_alias(model.name, CHAMPION_ALIAS)
        client.set_registered_model_alias(registered_model, CHAMPION_ALIAS, version)
        client.set_registered_model_tag(registered_model, DECIDED_FOR_TAG, decided_for)
        return True
