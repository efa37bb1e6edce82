"""Alerts (dql_model.ops.alerts) by mail and webhook, against a loopback SMTP server and HTTP server."""

from __future__ import annotations

import pytest

from dql_model.config import AlertsConfig, ConfigError, load_config
from dql_model.ops import alerts
from tests.receivers import receivers

SECRET = "s3cr3t-Pa55"


def _failure(error="MissingInput: raw events partition event_date=2026-11-27 is missing\n  more lines"):
    return alerts.failure("dql_recommendations", "2026-11-27", "validate_raw_events", error, "http://af/log/1")


def test_a_failure_mail_and_post_name_the_dag_date_task_error_and_log():
    with receivers() as (got, smtp_host, url):
        cfg = AlertsConfig(smtp_host=smtp_host, to="ops@shop.example, ml@shop.example", webhook_url=url)
        outcome = alerts.send(_failure(), cfg, smtp=alerts.smtp_server(cfg, env={}), hook=alerts.webhook(cfg), env={})

    assert outcome == {"smtp": "sent", "webhook": "sent"}
    [mail] = got.mails
    assert mail.recipients == ["ops@shop.example", "ml@shop.example"] and mail.sender == "dqlrec@localhost"
    assert mail.message["Subject"].strip() == "[dqlrec] dql_recommendations 2026-11-27: FAILED in validate_raw_events"
    body = mail.message.get_content()
    for text in ("dql_recommendations", "2026-11-27", "validate_raw_events", "http://af/log/1",
                 "MissingInput: raw events partition event_date=2026-11-27 is missing"):  # fmt: skip
        assert text in body
    assert "more lines" not in body  # the first line only
    [post] = got.posts
    assert post == {
        "kind": "failure", "dag_id": "dql_recommendations", "run_date": "2026-11-27", "task_id": "validate_raw_events",
        "error": "MissingInput: raw events partition event_date=2026-11-27 is missing", "where": "http://af/log/1",
        "text": _failure().subject(),
    }  # fmt: skip


def test_an_exception_is_named_by_its_type_and_first_line():
    error = RuntimeError("CUDA out of memory\nTraceback ...")
    assert alerts.first_line(error) == "RuntimeError: CUDA out of memory"
    assert alerts.degraded("d", "2026-11-27", "publish_recommendations", "train_model failed: x\ny", "/r").error == (
        "train_model failed: x"
    )


def test_a_secret_never_appears_in_a_message_nor_in_a_failed_sends_warning(monkeypatch):
    """The mail password (from the environment) logs in, but neither it nor another credential is ever shown."""
    env = {"SMTP_PASSWORD": SECRET, "PGPASSWORD": "pg-" + SECRET, "HOME": "/root"}
    error = f"psql: connection to postgresql://dqlrec:pg-{SECRET}@db/wh failed; SMTP_PASSWORD={SECRET}"
    with receivers() as (got, smtp_host, url):
        cfg = AlertsConfig(smtp_host=smtp_host, smtp_user="dqlrec", to="ops@shop.example", webhook_url=url)
        smtp = alerts.smtp_server(cfg, env=env)
        outcome = alerts.send(_failure(error), cfg, smtp=smtp, hook=alerts.webhook(cfg), env=env)
    assert outcome == {"smtp": "sent", "webhook": "sent"}
    assert got.mails[0].login == ("dqlrec", SECRET)  # the password did its job
    assert SECRET not in got.mails[0].text and SECRET not in got.mails[0].raw and SECRET not in str(got.posts) and SECRET not in str(got.headers)
    assert "postgresql://dqlrec:***@db/wh" in got.posts[0]["error"]
    assert SECRET not in repr(smtp)


def test_the_webhook_token_of_a_connection_is_a_header_never_in_the_body():
    class Connection:
        host, port, schema, password = None, None, "http", SECRET

    with receivers() as (got, _, url):
        Connection.host = url
        hook = alerts.webhook(AlertsConfig(), Connection())
        alerts.send(_failure(f"token {SECRET} refused"), AlertsConfig(), hook=hook, env={})
    assert got.headers[0]["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in str(got.posts) and "token *** refused" in got.posts[0]["error"]


def test_a_channel_that_cannot_be_reached_warns_and_the_other_still_gets_its_message():
    with receivers() as (got, _, url):
        cfg = AlertsConfig(smtp_host="127.0.0.1:1", to="ops@shop.example", webhook_url=url)
        with pytest.warns(RuntimeWarning, match="alert by smtp not sent: ConnectionRefusedError"):
            outcome = alerts.send(_failure(), cfg, smtp=alerts.smtp_server(cfg, env={}), hook=alerts.webhook(cfg), env={})
    assert outcome["webhook"] == "sent" and outcome["smtp"].startswith("ConnectionRefusedError")
    assert len(got.posts) == 1


def test_no_channel_configured_is_no_channel():
    cfg = load_config(env={}).alerts
    assert alerts.smtp_server(cfg, env={}) is None and alerts.webhook(cfg) is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DQLREC_ALERTS__WEBHOOK_URL": f"https://bot:{SECRET}@hooks.example/x"}, "alerts.webhook_url=.*carries a credential"),
        ({"DQLREC_ALERTS__WEBHOOK_URL": f"https://hooks.example/x?token={SECRET}"}, "webhook_conn_id"),
        ({"DQLREC_ALERTS__SMTP_HOST": "mail.example"}, "alerts.to is empty"),
    ],
)
def test_the_config_refuses_a_credential_and_a_mail_server_without_recipients(env, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(env=env)
    assert SECRET not in str(caught.value)
