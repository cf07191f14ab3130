"""Charts, data-quality and drift checks, the run-health view, freshness and failure alerts."""

from __future__ import annotations

import base64
import io
import re

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from taxi_assets.definitions import build_defs
from taxi_assets.defs.observability.sensors import email_on_failure
from taxi_assets.lib.alerts import AlertDeliveryError, EmailAlerts, alerts_from_env
from taxi_assets.lib.model_store import read_value
from taxi_assets.lib.sources import LocalTripSource
from taxi_assets.ml import quality
from taxi_assets.ml.cleaning import clean
from taxi_assets.ml.schema import PICKUP, validate_trips
from taxi_assets_tests.helpers import DATA_DIR, failure_messages, mlflow_client, run_months, runs_of
from taxi_assets_tests.servers import SmtpServer

PNG = b"\x89PNG\r\n\x1a\n"


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header, after checking it decodes as an image."""
    import matplotlib.image

    assert png.startswith(PNG)
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    return image.shape[1], image.shape[0]


def chart_pngs(metadata_value) -> dict[str, bytes]:
    """The charts of a materialization's one "charts" markdown value, by name."""
    text = metadata_value.value if hasattr(metadata_value, "value") else metadata_value
    found = re.findall(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", text)
    assert found, text[:80]
    return {alt.replace(" ", "_"): base64.b64decode(data) for alt, data in found}


def assert_charts(metadata, names) -> None:
    pngs = chart_pngs(metadata["charts"])
    assert set(pngs) == set(names), sorted(pngs)
    for png in pngs.values():
        width, height = png_size(png)
        assert width >= 800 and height >= 400  # large enough to read in the UI's dialog


def latest_metadata(instance, asset, partition=None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    return records[0].asset_materialization.metadata


# Charts on the real graph ------------------------------------------------------------------------


def test_data_assets_carry_charts_and_profile(prepared_instance):
    raw = latest_metadata(prepared_instance, "raw_trips", "2024-02")
    assert_charts(raw, ["pickups_per_day", "missing_values"])
    # Dagster's table metadata (the UI renders a table): 53,577 trips in the real file.
    profile = {record.data["column"]: record.data for record in raw["feature_profile"].records}
    assert (profile[PICKUP]["count"], profile[PICKUP]["nulls"]) == (53_577, 0)
    assert (profile["trip_distance"]["min"], profile["trip_distance"]["max"]) == ("0.000", "134,625.460")
    cleaned = latest_metadata(prepared_instance, "cleaned_trips", "2024-02")
    assert_charts(cleaned, ["duration", "trip_distance"])
    histogram = cleaned["duration_histogram"].value
    assert sum(histogram["counts"]) == cleaned["dagster/row_count"].value
    assert isinstance(cleaned["dropped_share"].value, float) and isinstance(
        cleaned["trip_distance_mean_miles"].value, float
    )


def test_model_assets_carry_charts_and_log_them_to_mlflow(trained_instance):
    sklearn = latest_metadata(trained_instance, "sklearn_models", "2024-02")
    assert_charts(
        sklearn, ["rmse_by_model", "rmse_over_months", "best_model_predicted_vs_actual", "best_model_residuals"]
    )
    xgb = latest_metadata(trained_instance, "xgboost_model", "2024-02")
    assert_charts(xgb, ["predicted_vs_actual", "residuals", "feature_contributions", "rmse_over_months"])
    assert isinstance(xgb["rmse"].value, float)

    # The same charts are artifacts of the MLflow run that trained each model.
    client = mlflow_client(trained_instance)
    parents = [run for run in runs_of(client, trained_instance.training_result.run_id) if "trial" not in run.data.tags]
    assert len(parents) == 3
    for run in parents:
        names = sorted(artifact.path for artifact in client.list_artifacts(run.info.run_id, "charts"))
        expected = ["charts/predicted_vs_actual.png", "charts/residuals.png"]
        if run.data.tags["model"] == "xgboost":
            expected = sorted(expected + ["charts/feature_contributions.png"])
        assert names == expected, run.data.tags["model"]


def test_feature_contributions_map_to_feature_names(trained_instance):
    from taxi_assets.ml.explain import mean_abs_contributions

    model = read_value(trained_instance, "xgboost_model", "2024-02")
    dataset = read_value(trained_instance, "training_set", "2024-02")
    names = dataset.dv.get_feature_names_out()
    explained = mean_abs_contributions(
        model.predictor.model, dataset.X_val[:1000], names, model.predictor.best_iteration, top=10
    )
    assert explained.rows == 1000 and "approx" in explained.method
    top = explained.top
    assert len(top) == 10 and [value for _, value in top] == sorted((value for _, value in top), reverse=True)
    assert top[0][0] == "trip_distance"  # distance drives duration; a zone pair cannot outweigh it
    assert all(name in set(names) for name, _ in top)
    assert mean_abs_contributions(model.predictor.model, dataset.X_val[:0], names).top == []


# Drift and data-quality checks -------------------------------------------------------------------


def check_results(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def test_drift_checks_pass_on_real_months(prepared_instance):
    checks = check_results(prepared_instance.test_results["2024-02"])
    for name in ("duration_drift", "trip_distance_drift", "dropped_share_stable"):
        assert checks[name].passed, checks[name].description
    assert checks["duration_drift"].metadata["psi"].value < quality.PSI_WARN
    assert checks["duration_drift"].metadata["reference_month"].value == "2024-01"
    assert 0 <= checks["trip_distance_drift"].metadata["ks_statistic"].value < 0.05
    # 2024-01 had nothing to compare with (2023-12 was not materialized) and says so.
    first = check_results(prepared_instance.test_results["2024-01"])
    assert first["duration_drift"].passed and "no cleaned_trips for 2023-12" in first["duration_drift"].description


def test_drift_and_dropped_share_warn_and_error(instance, data_copy):
    source = LocalTripSource(directory=str(data_copy))
    path = data_copy / "2024" / "02.parquet"
    original = pd.read_parquet(path)
    assert run_months(instance, ["2024-01"], ["raw_trips", "cleaned_trips"], trip_source=source)[0].success

    def materialize(trips: pd.DataFrame) -> dict[str, dg.AssetCheckEvaluation]:
        trips.to_parquet(path)
        [result] = run_months(instance, ["2024-02"], ["raw_trips", "cleaned_trips"], trip_source=source)
        assert result.success, failure_messages(result)  # drift checks warn; they do not block
        return check_results(result)

    # Distances 2.5x longer: a major shift (ERROR). Durations 30% longer: a moderate one (WARN).
    shifted = original.assign(trip_distance=original["trip_distance"] * 2.5)
    shifted["lpep_dropoff_datetime"] = (
        shifted["lpep_pickup_datetime"] + (shifted["lpep_dropoff_datetime"] - shifted["lpep_pickup_datetime"]) * 1.3
    )
    checks = materialize(shifted)
    distance, duration = checks["trip_distance_drift"], checks["duration_drift"]
    assert not distance.passed and distance.severity == dg.AssetCheckSeverity.ERROR
    assert distance.metadata["psi"].value > quality.PSI_ERROR
    assert not duration.passed and duration.severity == dg.AssetCheckSeverity.WARN, duration.description
    assert quality.PSI_WARN < duration.metadata["psi"].value <= quality.PSI_ERROR
    assert "2024-02 against 2024-01" in duration.description
    assert checks["dropped_share_stable"].passed

    # 4% of trips get a zero duration: dropped share up about 4 points (WARN); 12%: ERROR.
    def zero_durations(share: float) -> pd.DataFrame:
        trips = original.copy()
        rows = trips.sample(frac=share, random_state=0).index
        trips.loc[rows, "lpep_dropoff_datetime"] = trips.loc[rows, "lpep_pickup_datetime"]
        return trips

    expected_share = 1 - len(clean(validate_trips(zero_durations(0.04), "02.parquet"))) / len(original)
    checks = materialize(zero_durations(0.04))
    dropped = checks["dropped_share_stable"]
    assert not dropped.passed and dropped.severity == dg.AssetCheckSeverity.WARN, dropped.description
    assert dropped.metadata["dropped_share"].value == pytest.approx(expected_share, abs=1e-6)
    assert checks["duration_drift"].passed and checks["trip_distance_drift"].passed
    dropped = materialize(zero_durations(0.12))["dropped_share_stable"]
    assert not dropped.passed and dropped.severity == dg.AssetCheckSeverity.ERROR
    assert dropped.metadata["change_points"].value > quality.DROPPED_SHARE_ERROR_POINTS


# Run health and freshness ------------------------------------------------------------------------


def test_pipeline_health_and_model_freshness(instance, data_copy):
    source = LocalTripSource(directory=str(data_copy))
    assert all(
        r.success
        for r in run_months(instance, ["2024-01", "2024-02"], ["raw_trips", "cleaned_trips"], trip_source=source)
    )
    (data_copy / "2023" / "12.parquet").write_bytes(b"not parquet")
    assert not run_months(instance, ["2023-12"], ["raw_trips"], trip_source=source)[0].success

    defs = build_defs(trip_source=source)
    result = defs.resolve_job_def("observability").execute_in_process(instance=instance, raise_on_error=False)
    assert result.success, failure_messages(result)
    metadata = latest_metadata(instance, "pipeline_health")
    assert (metadata["runs_succeeded"].value, metadata["runs_failed"].value) == (2, 1)
    assert metadata["failure_rate"].value == pytest.approx(1 / 3, abs=1e-4)
    assert [record.data for record in metadata["runs_per_job"].records] == [
        {"job": "__ASSET_JOB", "SUCCESS": 2, "FAILURE": 1}
    ]
    assert metadata["trainings_by_model"].value == {}
    assert_charts(metadata, ["runs_per_day", "trainings_by_model"])

    # cleaned_trips reaches 2024-02 but no production model exists: the freshness check warns.
    [freshness] = result.get_asset_check_evaluations()
    assert freshness.check_name == "model_freshness" and not freshness.passed
    assert freshness.severity == dg.AssetCheckSeverity.WARN
    assert "cleaned_trips has 2024-02" in freshness.description


def test_freshness_passes_once_the_production_model_is_current(served_instance):
    trained_instance = served_instance
    defs = build_defs(trip_source=LocalTripSource(directory=str(DATA_DIR)))
    result = defs.resolve_job_def("observability").execute_in_process(instance=trained_instance)
    [freshness] = result.get_asset_check_evaluations()
    assert freshness.passed, freshness.description
    # pipeline_health counts the trainings recorded in the event log: one per model here.
    trained = latest_metadata(trained_instance, "pipeline_health")["trainings_by_model"].value
    assert trained == {"LinearRegression": 1, "Lasso": 1, "xgboost": 1}
    # production_model's decision charts are in its metadata and its own MLflow run.
    production = latest_metadata(trained_instance, "production_model", "2024-02")
    assert_charts(production, ["rmse_by_model", "rmse_over_months", "predicted_vs_actual", "residuals"])
    client = mlflow_client(trained_instance)
    # The Dagster run that made the newest decision, from its materialization record.
    [record] = trained_instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("production_model"), asset_partitions=["2024-02"]), limit=1
    ).records
    [run] = runs_of(client, record.run_id)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "charts")} >= {
        "charts/rmse_by_model.png",
        "charts/rmse_over_months.png",
    }
    assert "serving_rmse" in run.data.metrics


# Alerts ------------------------------------------------------------------------------------------


def send_alert(instance, result, alerts: EmailAlerts, capfd) -> list[str]:
    """Evaluate the failure sensor for ``result``'s run; returns the lines its log printed (a
    sensor's log goes to its tick's captured output, and to the console here)."""
    capfd.readouterr()
    try:
        with dg.build_run_status_sensor_context(
            sensor_name="email_on_failure",
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            dagster_event=result.get_run_failure_event(),
            resources={"alerts": alerts},
        ) as context:
            email_on_failure(context.for_run_failure())
    finally:
        captured = capfd.readouterr()
        send_alert.lines = [
            line
            for line in (captured.out + captured.err).splitlines()
            if "failure alert" in line or "alerts are off" in line or "no alert yet" in line
        ]
    return send_alert.lines


@pytest.fixture
def smtp(tmp_path):
    with SmtpServer(tmp_path, user="alerts@taxi", password="correct horse") as server:
        yield server


def alerts_for(smtp: SmtpServer, password: str = "correct horse") -> EmailAlerts:
    return EmailAlerts(
        host="127.0.0.1",
        port=smtp.port,
        user="alerts@taxi",
        password=password,
        sender="taxi-assets@example.com",
        recipients="ml-oncall@example.com, data@example.com",
        ca_file=str(smtp.cert),
        ui_url="http://127.0.0.1:3999/",
    )


def test_failed_run_is_emailed_over_starttls_with_auth(instance, data_copy, smtp, capfd):
    (data_copy / "2024" / "02.parquet").write_bytes(b"PAR1 truncated")
    [result] = run_months(instance, ["2024-02"], ["raw_trips"], trip_source=LocalTripSource(directory=str(data_copy)))
    assert not result.success
    lines = send_alert(instance, result, alerts_for(smtp), capfd)
    [message] = smtp.messages
    body = message.get_payload(decode=True).decode().replace("\r\n", "\n")
    run_id = result.run_id
    assert message["X-Was-Encrypted"] == "True" and smtp.logins == [("alerts@taxi", True)]
    assert message["X-Envelope-To"] == "ml-oncall@example.com, data@example.com"
    assert " ".join(message["Subject"].split()) == "[taxi_assets] __ASSET_JOB partition 2024-02 failed: raw_trips"
    assert f"Run id:    {run_id}" in body and "Partition: 2024-02" in body
    assert f"http://127.0.0.1:3999/runs/{run_id}" in body
    assert "raw_trips: raw_trips partition 2024-02:" in body and "02.parquet is not a readable Parquet file" in body
    assert any(f"INFO - failure alert for run {run_id} sent to ml-oncall@example.com" in line for line in lines)
    # The same failure judged again (a tick run again after its cursor was lost): no second email.
    again = send_alert(instance, result, alerts_for(smtp), capfd)
    assert len(smtp.messages) == 1 and not any("sent to" in line for line in again)


def test_a_failure_whose_retry_decision_was_never_stored_waits_for_the_retry(tmp_path, data_copy, smtp, capfd):
    """The failure and its dagster/will_retry tag are separate writes; the chaos soak saw PostgreSQL
    go away between them and the run emailed, then retried and succeeded. Without the tag, the
    sensor makes Dagster's retry decision itself."""
    (data_copy / "2024" / "02.parquet").write_bytes(b"PAR1 truncated")
    defs = build_defs(trip_source=LocalTripSource(directory=str(data_copy)))
    job = defs.resolve_implicit_global_asset_job_def()
    home = tmp_path / "home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home), overrides={"run_retries": {"enabled": False}}) as writer:
        result = job.execute_in_process(
            instance=writer,
            partition_key="2024-02",
            asset_selection=[dg.AssetKey("trip_files"), dg.AssetKey("raw_trips")],
            tags={"dagster/max_retries": "2"},
            raise_on_error=False,
        )
        assert not result.success and "dagster/will_retry" not in writer.get_run_by_id(result.run_id).tags
    with dg.instance_for_test(temp_dir=str(home), overrides={"run_retries": {"enabled": True}}) as instance:
        lines = send_alert(instance, result, alerts_for(smtp), capfd)
        assert smtp.messages == [] and any("run retries will re-execute it, so no alert yet" in line for line in lines)


def test_failed_blocking_check_is_named_in_the_alert(instance, data_copy, smtp, capfd):
    path = data_copy / "2024" / "02.parquet"
    february = pd.read_parquet(path)
    february.loc[:99, "trip_distance"] = np.nan
    february.to_parquet(path)
    source = LocalTripSource(directory=str(data_copy))
    run_months(instance, ["2024-01"], ["raw_trips", "cleaned_trips"], trip_source=source)
    [result] = run_months(instance, ["2024-02"], trip_source=source)
    assert not result.success
    send_alert(instance, result, alerts_for(smtp), capfd)
    [message] = smtp.messages
    body = message.get_payload(decode=True).decode().replace("\r\n", "\n")
    assert (
        " ".join(message["Subject"].split())
        == "[taxi_assets] __ASSET_JOB partition 2024-02 failed: cleaned_trips.features_not_null"
    )
    assert "Failed checks:\n  - cleaned_trips.features_not_null [ERROR]: null_counts=" in body
    assert "'trip_distance': " in body


def test_wrong_password_is_logged_and_raised_not_dropped(instance, data_copy, smtp, capfd):
    (data_copy / "2024" / "02.parquet").write_bytes(b"junk")
    [result] = run_months(instance, ["2024-02"], ["raw_trips"], trip_source=LocalTripSource(directory=str(data_copy)))
    # Raised, so the tick fails and the daemon retries this run's alert on the next tick.
    with pytest.raises(AlertDeliveryError, match="rejected the login of 'alerts@taxi' \\(535"):
        send_alert(instance, result, alerts_for(smtp, password="wrong"), capfd)
    assert smtp.messages == [] and smtp.logins and all(not accepted for _, accepted in smtp.logins)
    [line] = send_alert.lines
    assert (
        f"ERROR - failure alert for run {result.run_id} (__ASSET_JOB) not delivered: SMTP server 127.0.0.1:{smtp.port} rejected"
        in line
    )
    assert "wrong" not in line  # the password never reaches the log


def test_no_password_over_a_plaintext_connection(tmp_path):
    with SmtpServer(tmp_path, user="u", password="p", tls=False) as plain:
        alerts = EmailAlerts(host="127.0.0.1", port=plain.port, user="u", password="p", recipients="a@example.com")
        with pytest.raises(AlertDeliveryError, match="does not offer STARTTLS; refusing to send the password"):
            alerts.send("subject", "body")
        assert plain.messages == [] and plain.logins == []
        # Without a login, a plaintext relay is fine.
        EmailAlerts(host="127.0.0.1", port=plain.port, recipients="a@example.com").send("subject", "body")
        assert plain.messages[0]["Subject"] == "subject" and plain.messages[0]["X-Was-Encrypted"] == "False"


def test_unverifiable_certificate_is_refused(smtp):
    alerts = alerts_for(smtp).model_copy(update={"ca_file": None})
    with pytest.raises(AlertDeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
        alerts.send("subject", "body")
    assert smtp.messages == []


def test_alerts_come_from_the_environment(monkeypatch):
    for variable in ("TAXI_SMTP_HOST", "TAXI_SMTP_PORT", "TAXI_SMTP_USER", "TAXI_SMTP_PASSWORD", "TAXI_ALERT_TO"):
        monkeypatch.delenv(variable, raising=False)
    assert not alerts_from_env().enabled
    monkeypatch.setenv("TAXI_SMTP_HOST", "smtp.example.com")
    monkeypatch.setenv("TAXI_SMTP_PORT", "2525")
    monkeypatch.setenv("TAXI_SMTP_PASSWORD", "hunter2")
    monkeypatch.setenv("TAXI_ALERT_TO", "a@example.com")
    resource = alerts_from_env()
    # EnvVars, not values: the password is resolved only when the resource is used.
    assert isinstance(resource.password, dg.EnvVar) and "hunter2" not in repr(resource)
    with dg.build_resources({"alerts": resource}) as resources:
        assert (resources.alerts.host, resources.alerts.port, resources.alerts.password) == (
            "smtp.example.com",
            2525,
            "hunter2",
        )
        assert resources.alerts.enabled


def test_alerts_off_without_configuration_logs_and_sends_nothing(instance, data_copy, capfd):
    (data_copy / "2024" / "02.parquet").write_bytes(b"junk")
    [result] = run_months(instance, ["2024-02"], ["raw_trips"], trip_source=LocalTripSource(directory=str(data_copy)))
    lines = send_alert(instance, result, EmailAlerts(), capfd)
    assert any("email alerts are off" in line for line in lines)


def test_no_alert_while_run_retries_will_rerun_the_failure(instance, data_copy, smtp, capfd):
    """Run retries re-execute a failed retraining; only its last attempt is emailed."""
    (data_copy / "2024" / "02.parquet").write_bytes(b"junk")
    [result] = run_months(instance, ["2024-02"], ["raw_trips"], trip_source=LocalTripSource(directory=str(data_copy)))
    instance.add_run_tags(result.run_id, {"dagster/will_retry": "true", "dagster/retry_number": "1"})
    send_alert(instance, result, alerts_for(smtp), capfd)
    assert smtp.messages == []
    instance.add_run_tags(result.run_id, {"dagster/will_retry": "false"})  # the last attempt
    send_alert(instance, result, alerts_for(smtp), capfd)
    assert len(smtp.messages) == 1
