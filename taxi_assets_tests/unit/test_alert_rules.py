"""When a failed run is emailed: the decision, without an instance or an SMTP server (the sensor
that applies it is tested with both in integration/test_observability.py and, under faults, by
the chaos soak)."""

from __future__ import annotations

from taxi_assets.lib.alerts import alert_held_back


def test_a_failed_run_nobody_will_retry_is_emailed():
    assert alert_held_back("FAILURE", {}) is None
    assert alert_held_back("FAILURE", {"dagster/will_retry": "false", "dagster/retry_number": "2"}) is None


def test_a_run_that_run_retries_will_re_execute_waits_for_its_last_attempt():
    reason = alert_held_back("FAILURE", {"dagster/will_retry": "true", "dagster/retry_number": "1"})
    assert reason is not None and "attempt 2" in reason and "no alert yet" in reason


def test_a_failure_event_for_a_run_not_stored_as_failed_is_not_emailed():
    """The chaos soak: PostgreSQL went away between a launch failure's event and its status write,
    so the run stayed STARTING; run monitoring failed it 5 minutes later and run retries re-ran it.
    Emailing the first event told a person about a run that then succeeded."""
    for status in ("STARTING", "STARTED", "QUEUED"):
        reason = alert_held_back(status, {})
        assert reason is not None and status in reason and "run monitoring" in reason


def test_a_run_whose_alert_went_out_is_not_emailed_again():
    """A sensor tick is run again when its cursor was not saved (the daemon killed after the send):
    the chaos soak saw one failure emailed twice."""
    tags = {"dagster/will_retry": "false", "taxi/failure_alert_sent": "2026-12-03T07:00:00+00:00"}
    reason = alert_held_back("FAILURE", tags)
    assert reason is not None and "already sent" in reason and "07:00:00" in reason
