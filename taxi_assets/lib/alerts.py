"""Failure alerts by email: the SMTP resource and the message a failed run produces.

Why not ``make_email_on_run_failure_sensor``: it takes the password as a plain string when the
code location loads (we want an ``EnvVar``), always logs in, and its message has neither the
partition nor which check failed. This resource reads everything from the environment, uses
STARTTLS whenever the server offers it, never sends a password over an unencrypted connection,
and verifies the server's certificate (against ``TAXI_SMTP_CA_FILE`` when set).
"""

from __future__ import annotations

import os
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage

import dagster as dg
from pydantic import Field

# Environment variable -> resource field. Only the ones that are set are passed (as EnvVars, so
# their values never appear in the UI or the code), and alerts are off without a host.
ENVIRONMENT = {
    "TAXI_SMTP_HOST": "host",
    "TAXI_SMTP_PORT": "port",
    "TAXI_SMTP_USER": "user",
    "TAXI_SMTP_PASSWORD": "password",
    "TAXI_ALERT_FROM": "sender",
    "TAXI_ALERT_TO": "recipients",
    "TAXI_SMTP_CA_FILE": "ca_file",
    "TAXI_DAGSTER_URL": "ui_url",
}


class AlertDeliveryError(RuntimeError):
    """An alert could not be handed to the SMTP server; the message says where and why."""


class EmailAlerts(dg.ConfigurableResource):
    """Where failure alerts go. Off (nothing is sent) until host and recipients are set."""

    host: str | None = Field(default=None, description="SMTP server (TAXI_SMTP_HOST).")
    port: int = Field(default=587, description="SMTP port (TAXI_SMTP_PORT); 465 means implicit TLS.")
    user: str | None = Field(default=None, description="SMTP login (TAXI_SMTP_USER); no login when unset.")
    password: str | None = Field(default=None, description="SMTP password (TAXI_SMTP_PASSWORD).")
    sender: str = Field(default="taxi-assets@localhost", description="From address (TAXI_ALERT_FROM).")
    recipients: str = Field(default="", description="Comma-separated To addresses (TAXI_ALERT_TO).")
    ca_file: str | None = Field(default=None, description="CA bundle to verify the server (TAXI_SMTP_CA_FILE).")
    ui_url: str = Field(
        default="http://127.0.0.1:3000", description="The Dagster UI's address, for run links (TAXI_DAGSTER_URL)."
    )
    timeout_seconds: float = Field(default=15.0, gt=0, description="Connect and command timeout.")

    @property
    def enabled(self) -> bool:
        return bool(self.host and self.recipient_list)

    @property
    def recipient_list(self) -> list[str]:
        return [address.strip() for address in self.recipients.split(",") if address.strip()]

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/runs/{run_id}"

    def send(self, subject: str, body: str) -> None:
        """Deliver one message; raises AlertDeliveryError (without the password) on any failure."""
        message = EmailMessage()
        message["Subject"] = subject
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipient_list)
        message.set_content(body)
        if not self.host:
            raise AlertDeliveryError("no SMTP host is configured (TAXI_SMTP_HOST)")
        host = self.host
        where = f"{host}:{self.port}"
        tls = ssl.create_default_context(cafile=self.ca_file)
        try:
            if self.port == 465:
                server: smtplib.SMTP = smtplib.SMTP_SSL(host, self.port, timeout=self.timeout_seconds, context=tls)
            else:
                server = smtplib.SMTP(host, self.port, timeout=self.timeout_seconds)
            with server:
                server.ehlo()
                if self.port != 465 and server.has_extn("starttls"):
                    server.starttls(context=tls)
                    server.ehlo()
                if self.user:
                    if self.port != 465 and not isinstance(server.sock, ssl.SSLSocket):
                        raise AlertDeliveryError(
                            f"SMTP server {where} does not offer STARTTLS; refusing to send the password of "
                            f"{self.user!r} unencrypted"
                        )
                    server.login(self.user, self.password or "")
                server.send_message(message)
        except AlertDeliveryError:
            raise
        except smtplib.SMTPAuthenticationError as error:
            raise AlertDeliveryError(
                f"SMTP server {where} rejected the login of {self.user!r} ({error.smtp_code} "
                f"{_text(error.smtp_error)}); check TAXI_SMTP_USER / TAXI_SMTP_PASSWORD"
            ) from None
        except (OSError, smtplib.SMTPException) as error:
            raise AlertDeliveryError(
                f"sending to SMTP server {where} failed: {type(error).__name__}: {error}"
            ) from None


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def alerts_from_env() -> EmailAlerts:
    """The resource with each set TAXI_SMTP_*/TAXI_ALERT_* variable passed as an EnvVar."""
    values = {}
    for variable, name in ENVIRONMENT.items():
        if os.environ.get(variable):
            values[name] = dg.EnvVar.int(variable) if name == "port" else dg.EnvVar(variable)
    return EmailAlerts(**values)


WILL_RETRY_TAG = "dagster/will_retry"  # set by Dagster on a failed run it is going to retry
# Set on a run once its failure alert went out. Dagster's sensors deliver at least once: a tick
# whose cursor was not saved (the daemon killed, PostgreSQL gone after the send) is run again, and
# the chaos soak saw one failure emailed twice that way. The tag makes the email once per run.
ALERT_SENT_TAG = "taxi/failure_alert_sent"


def alert_held_back(status: str, tags: dict[str, str]) -> str | None:
    """Why a run's failure event is not emailed now (None: email it). Three cases:

    - run retries will re-execute the run: only its last attempt is a failure someone must hear of;
    - the run as stored is not failed: the failure event was written but the status was not (the
      two are separate writes; the chaos soak saw PostgreSQL go away between them, the run left
      STARTING). Run monitoring ends such a run later, and that failure is judged again;
    - its alert already went out (a sensor tick run again after its email was sent).
    """
    if tags.get(ALERT_SENT_TAG):
        return f"its failure alert was already sent ({tags[ALERT_SENT_TAG]})"
    if status != "FAILURE":
        return (
            f"its stored status is {status}, not FAILURE; run monitoring will end it, and that failure is judged again"
        )
    if tags.get(WILL_RETRY_TAG) == "true":
        attempt = int(tags.get("dagster/retry_number", "0")) + 1
        return f"failed (attempt {attempt}); run retries will re-execute it, so no alert yet"
    return None


@dataclass
class FailureReport:
    """What went wrong in one run, gathered from its event log."""

    job: str
    run_id: str
    partition: str | None
    failed_steps: list[tuple[str, str]] = field(default_factory=list)  # (step key, error)
    failed_checks: list[tuple[str, str, str]] = field(default_factory=list)  # (asset.check, severity, description)
    run_error: str | None = None

    def subject(self) -> str:
        where = f" partition {self.partition}" if self.partition else ""
        what = (
            self.failed_checks[0][0]
            if self.failed_checks
            else (self.failed_steps[0][0] if self.failed_steps else "run")
        )
        return f"[taxi_assets] {self.job}{where} failed: {what}"

    def body(self, url: str) -> str:
        lines = [
            f"Job:       {self.job}",
            f"Run id:    {self.run_id}",
            f"Partition: {self.partition or '(not partitioned)'}",
            f"Run:       {url}",
            "",
        ]
        if self.failed_checks:
            lines.append("Failed checks:")
            lines += [f"  - {name} [{severity}]: {description}" for name, severity, description in self.failed_checks]
            lines.append("")
        if self.failed_steps:
            lines.append("Failed steps:")
            lines += [f"  - {step}: {error}" for step, error in self.failed_steps]
            lines.append("")
        if self.run_error and not self.failed_steps:
            lines += ["Error:", f"  {self.run_error}", ""]
        return "\n".join(lines)


def failure_report(instance: dg.DagsterInstance, run: dg.DagsterRun, run_error: str | None = None) -> FailureReport:
    """Failed steps (with the innermost error message) and failed checks of a run."""
    report = FailureReport(
        job=run.job_name, run_id=run.run_id, partition=run.tags.get("dagster/partition"), run_error=run_error
    )
    for record in instance.all_logs(
        run.run_id, of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.ASSET_CHECK_EVALUATION}
    ):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            messages: list[str] = []
            while error is not None:
                text = (error.message.strip().splitlines()[0] if error.message.strip() else error.cls_name) or "error"
                # Serialized errors read "module.Class: message"; the message is what people need.
                prefix, _, rest = text.partition(": ")
                if rest and prefix.rsplit(".", 1)[-1] == error.cls_name:
                    text = rest
                if not any(text in seen for seen in messages):
                    messages.append(text)
                error = error.cause
            report.failed_steps.append((event.step_key or "run", " <- ".join(messages)))
            continue
        data = event.asset_check_evaluation_data
        if not data.passed:
            name = f"{data.asset_key.to_user_string()}.{data.check_name}"
            description = data.description or ", ".join(
                f"{key}={getattr(value, 'value', value)}" for key, value in list(data.metadata.items())[:4]
            )
            report.failed_checks.append((name, data.severity.value, description))
    return report
