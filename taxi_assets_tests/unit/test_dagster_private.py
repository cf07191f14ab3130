"""Each private Dagster use degrades with one warning, never an error, when what it needs is gone."""

from __future__ import annotations

import logging

import dagster as dg
import pytest

from taxi_assets.lib import dagster_private as private


@pytest.fixture
def warnings_seen(caplog):
    """The warnings the guards log (each feature warns once per process: start afresh)."""
    private._warned.clear()
    caplog.set_level(logging.WARNING, logger="taxi_assets")
    yield lambda: [record.getMessage() for record in caplog.records if record.name == "taxi_assets"]
    private._warned.clear()


def _missing(monkeypatch, module: str, attribute: str) -> None:
    import importlib

    monkeypatch.delattr(importlib.import_module(module), attribute)


def test_private_resolves_what_exists_and_checks_its_parameters(warnings_seen):
    found = private.private("dagster._core.execution.retries:auto_reexecution_should_retry_run", "f", ("instance",))
    assert callable(found)
    assert private.private("dagster._core.execution.retries:auto_reexecution_should_retry_run", "g", ("run",)) is None
    assert private.private("dagster._no_such_module:thing", "h") is None
    messages = warnings_seen()
    assert len(messages) == 2 and all(f"dagster {dg.__version__}" in message for message in messages)
    assert "takes ('instance', 'run'" in messages[0] and "is missing" in messages[1]


def test_each_feature_warns_once(warnings_seen):
    for _ in range(3):
        assert private.private("dagster._no_such_module:thing", "one feature") is None
    assert len(warnings_seen()) == 1


def test_run_launcher_stops_claiming_a_health_check(monkeypatch, warnings_seen):
    from taxi_assets.lib.run_launcher import CodeServerRunLauncher

    launcher = CodeServerRunLauncher()
    assert launcher.supports_check_run_worker_health
    _missing(monkeypatch, "dagster._grpc.client", "DagsterGrpcClient")
    assert not launcher.supports_check_run_worker_health
    run = dg.DagsterRun(job_name="j", tags={private.GRPC_INFO_TAG: '{"host": "localhost", "port": 1}'})
    assert private.code_server_runs(run) == (None, None, None)
    assert "worker health check" in warnings_seen()[0]


def test_run_launcher_without_health_results(monkeypatch, warnings_seen):
    from taxi_assets.lib.run_launcher import CodeServerRunLauncher

    _missing(monkeypatch, "dagster._core.launcher", "WorkerStatus")
    assert not CodeServerRunLauncher().supports_check_run_worker_health
    assert len(warnings_seen()) == 1


def test_cli_runs_in_process_without_the_loader(monkeypatch, warnings_seen):
    _missing(monkeypatch, "dagster._core.definitions.reconstruct", "ReconstructableRepository")
    assert private.code_location("taxi_assets.definitions") is None
    assert "in their own processes" in warnings_seen()[0]


def test_cli_runs_in_process_when_the_loader_changed(monkeypatch, warnings_seen):
    from dagster._core.definitions import reconstruct

    monkeypatch.setattr(reconstruct.ReconstructableRepository, "for_module", classmethod(lambda cls, name: None))
    assert private.code_location("taxi_assets.definitions") is None
    assert "takes ('name',)" in warnings_seen()[0]


def test_sensor_goes_without_staleness(monkeypatch, warnings_seen):
    from taxi_assets.lib.month_states import _unsynced

    with dg.instance_for_test() as instance:
        _missing(monkeypatch, "dagster._core.definitions.data_version", "CachingStaleStatusResolver")
        assert private.stale_status_resolver(instance, None) is None
    assert _unsynced(None, "2023-03") == ()
    assert "staleness" in warnings_seen()[0]


def test_decay_sensor_without_check_history(monkeypatch, warnings_seen):
    _missing(monkeypatch, "dagster._core.storage.asset_check_execution_record", "AssetCheckExecutionRecordStatus")
    with dg.instance_for_test() as instance:
        assert private.failed_check_evaluations(instance, "trip_predictions", "serving_model_performs") == []
    assert "check history" in warnings_seen()[0]


def test_check_history_is_read_when_present():
    with dg.instance_for_test() as instance:
        assert private.failed_check_evaluations(instance, "trip_predictions", "serving_model_performs") == []


def test_failure_alerts_are_sent_without_the_retry_decision(monkeypatch, warnings_seen):
    _missing(monkeypatch, "dagster._core.execution.retries", "auto_reexecution_should_retry_run")
    with dg.instance_for_test(overrides={"run_retries": {"enabled": True}}) as instance:
        run = instance.create_run_for_job(dg.GraphDefinition("g").to_job(), tags={"dagster/max_retries": "2"})
        assert private.would_retry(instance, run) is False
    assert "retried" in warnings_seen()[0]


def test_retry_decision_when_present():
    with dg.instance_for_test(overrides={"run_retries": {"enabled": True}}) as instance:
        run = instance.create_run_for_job(dg.GraphDefinition("g").to_job(), tags={"dagster/max_retries": "2"})
        instance.report_run_failed(run)
        failed = instance.get_run_by_id(run.run_id)
        assert failed is not None and private.would_retry(instance, failed) is True


def test_code_server_check_is_left_alone_when_missing_or_changed(monkeypatch, warnings_seen):
    from dagster._grpc.server import DagsterApiServer

    def changed(self, interval):
        return None

    monkeypatch.setattr(DagsterApiServer, "_check_for_orphaned_runs", changed)
    private.keep_code_server_cleanup_alive()
    assert DagsterApiServer._check_for_orphaned_runs is changed
    private._warned.clear()
    monkeypatch.delattr(DagsterApiServer, "_check_for_orphaned_runs")
    private.keep_code_server_cleanup_alive()
    assert not hasattr(DagsterApiServer, "_check_for_orphaned_runs")
    assert len(warnings_seen()) == 2


def test_code_server_check_is_wrapped_once(monkeypatch):
    from dagster._grpc.server import DagsterApiServer

    monkeypatch.setattr(DagsterApiServer, "_check_for_orphaned_runs", DagsterApiServer._check_for_orphaned_runs)
    private.keep_code_server_cleanup_alive()
    wrapped = DagsterApiServer._check_for_orphaned_runs
    assert getattr(wrapped, "keeps_going", False)
    private.keep_code_server_cleanup_alive()
    assert DagsterApiServer._check_for_orphaned_runs is wrapped


def test_instance_storages_name_what_to_do_when_moved(monkeypatch, warnings_seen, tmp_path):
    """The instance module still loads; naming its storage in dagster.yaml explains the way out."""
    import importlib

    import taxi_assets.lib.instance as instance_module

    _missing(monkeypatch, "dagster._core.storage.root", "LocalArtifactStorage")
    try:
        reloaded = importlib.reload(instance_module)
        with pytest.raises(SystemExit, match="remove the storage"):
            reloaded.HomeArtifactStorage.from_config_value(None, {"base_dir": str(tmp_path)})
        assert "DAGSTER_HOME-relative" in warnings_seen()[0]
    finally:
        monkeypatch.undo()
        importlib.reload(instance_module)
    assert instance_module.HomeArtifactStorage.__mro__[1].__name__ == "LocalArtifactStorage"
