"""Telling people that a night failed or was degraded: the message, and sending it by mail and webhook.

Owns: what an alert says (DAG, run date, task, the error's first line, where to look) and how it
travels (SMTP with ``smtplib``, an HTTP POST of a small JSON body with ``urllib.request``). Which
channels are on is ``dql_model.config.AlertsConfig``; Airflow (the DAG's notifier) hands in its
connections as plain objects, so this module imports nothing of Airflow.

No secret reaches a message: the mail password, the webhook token and the value of every
environment variable whose name says it holds a credential are masked in the text (an error's
first line may quote a URL or a command that carried one).
"""

from __future__ import annotations

import dataclasses
import json
import os
import smtplib
import urllib.request
import warnings
from collections.abc import Iterable, Mapping
from email.message import EmailMessage
from typing import Any, Literal

from dql_model.config import AlertsConfig, ConfigError

Kind = Literal["failure", "degraded"]
SECRET_NAME_WORDS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "CREDENTIAL", "PRIVATE_KEY", "ACCESS_KEY")
"""An environment variable whose name contains one of these holds a credential: its value is masked."""
MASK = "***"
SEND_TIMEOUT_S = 10.0
"""Seconds a mail server or webhook may take: an alert must never hold a task up for long."""
_MIN_SECRET_LEN = 4
"""Shorter values (a '1', 'true') would mask ordinary words; no real credential is that short."""


@dataclasses.dataclass(frozen=True)
class Alert:
    """One night's bad news: a task failed, or the night published the champion's lists (degraded)."""

    kind: Kind
    dag_id: str
    run_date: str
    task_id: str
    error: str
    """The error's (or the degradation reason's) first line."""
    where: str
    """Where to read more: the task's log URL or path, or the run's report folder."""

    def subject(self) -> str:
        what = "FAILED" if self.kind == "failure" else "DEGRADED (the champion's lists were published)"
        return f"[dqlrec] {self.dag_id} {self.run_date}: {what} in {self.task_id}"

    def body(self) -> str:
        return "\n".join(
            [
                self.subject(),
                "",
                f"DAG:      {self.dag_id}",
                f"run date: {self.run_date}",
                f"task:     {self.task_id}",
                f"{'error' if self.kind == 'failure' else 'reason'}:    {self.error}",
                f"{'log' if self.kind == 'failure' else 'report'}:      {self.where}",
            ]
        )

    def payload(self) -> dict[str, str]:
        """The webhook's JSON body: these fields, plus ``text`` (the subject) for chat webhooks that show it."""
        return {**dataclasses.asdict(self), "text": self.subject()}


def first_line(error: BaseException | str) -> str:
    """The first non-blank line of an error (its type named when it is an exception), at most 500 characters."""
    text = str(error)
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if isinstance(error, BaseException):
        line = f"{type(error).__name__}: {line}" if line else type(error).__name__
    return line[:500]


def failure(dag_id: str, run_date: str, task_id: str, error: BaseException | str, log: str) -> Alert:
    return Alert("failure", dag_id, run_date, task_id, first_line(error), log)


def degraded(dag_id: str, run_date: str, task_id: str, reason: str, report_dir: str) -> Alert:
    return Alert("degraded", dag_id, run_date, task_id, first_line(reason), report_dir)


@dataclasses.dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int = 25
    user: str = ""
    password: str = dataclasses.field(default="", repr=False)
    starttls: bool = False


@dataclasses.dataclass(frozen=True)
class Webhook:
    url: str
    token: str = dataclasses.field(default="", repr=False)


def smtp_server(cfg: AlertsConfig, connection: Any = None, env: Mapping[str, str] = os.environ) -> SmtpServer | None:
    """The mail server: ``connection`` (an Airflow connection of cfg.smtp_conn_id), else cfg.smtp_host; None: no mail."""
    if connection is not None:
        return SmtpServer(
            host=connection.host,
            port=int(connection.port or 25),
            user=connection.login or "",
            password=connection.password or "",
            starttls=cfg.smtp_starttls,
        )
    if not cfg.smtp_host:
        return None
    host, _, port = cfg.smtp_host.rpartition(":") if ":" in cfg.smtp_host else (cfg.smtp_host, "", "25")
    if not port.isdigit():
        raise ConfigError(f"alerts.smtp_host={cfg.smtp_host!r}: the port after ':' is not a number")
    password = env.get(cfg.smtp_password_env, "") if cfg.smtp_user else ""
    return SmtpServer(host=host, port=int(port), user=cfg.smtp_user, password=password, starttls=cfg.smtp_starttls)


def webhook(cfg: AlertsConfig, connection: Any = None) -> Webhook | None:
    """The webhook: ``connection`` (of cfg.webhook_conn_id: its host is the URL, or scheme + host + port), else
    cfg.webhook_url; None: no webhook."""
    if connection is not None:
        url = connection.host or ""
        if "://" not in url:
            port = f":{connection.port}" if connection.port else ""
            url = f"{connection.schema or 'https'}://{url}{port}"
        return Webhook(url=url, token=connection.password or "")
    return Webhook(url=cfg.webhook_url) if cfg.webhook_url else None


def secrets_in(env: Mapping[str, str], *known: str) -> list[str]:
    """The values to mask: ``known`` ones and those of credential-named environment variables, longest first."""
    named = (value for name, value in env.items() if any(word in name.upper() for word in SECRET_NAME_WORDS))
    return sorted({s for s in (*known, *named) if len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def masked(alert: Alert, secrets: Iterable[str]) -> Alert:
    """The alert with every secret masked in every field."""
    secrets = list(secrets)
    return Alert(**{key: redact(value, secrets) for key, value in dataclasses.asdict(alert).items()})


def send(
    alert: Alert,
    cfg: AlertsConfig,
    *,
    smtp: SmtpServer | None = None,
    hook: Webhook | None = None,
    env: Mapping[str, str] = os.environ,
) -> dict[str, str]:
    """Send ``alert`` on every configured channel; ``{channel: "sent" | the reason it was not}``.

    A channel that fails is reported with a warning, never raised: an alert about a night must not
    fail (or retry) the task that sends it, and the other channel still gets its message.
    """
    secrets = secrets_in(env, *(s.password for s in [smtp] if s), *(h.token for h in [hook] if h))
    alert = masked(alert, secrets)
    outcome: dict[str, str] = {}
    channels = {"smtp": (smtp, _mail), "webhook": (hook, _post)}
    for name, (target, deliver) in channels.items():
        if target is None:
            continue
        try:
            deliver(alert, target, cfg)
            outcome[name] = "sent"
        except (OSError, smtplib.SMTPException, ValueError) as error:  # URLError and timeouts are OSErrors
            outcome[name] = redact(first_line(error), secrets)
            warnings.warn(f"alert by {name} not sent: {outcome[name]}", RuntimeWarning, stacklevel=2)
    return outcome


def _mail(alert: Alert, server: SmtpServer, cfg: AlertsConfig) -> None:
    message = EmailMessage()
    message["Subject"] = alert.subject()
    message["From"] = cfg.sender
    message["To"] = ", ".join(cfg.recipients())
    message.set_content(alert.body())
    with smtplib.SMTP(server.host, server.port, timeout=SEND_TIMEOUT_S) as client:
        if server.starttls:
            client.starttls()
        if server.user:
            client.login(server.user, server.password)
        client.send_message(message)


def _post(alert: Alert, hook: Webhook, cfg: AlertsConfig) -> None:
    headers = {"Content-Type": "application/json"}
    if hook.token:
        headers["Authorization"] = f"Bearer {hook.token}"
    request = urllib.request.Request(hook.url, data=json.dumps(alert.payload()).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_S) as response:  # noqa: S310 (the configured URL)
        response.read()
