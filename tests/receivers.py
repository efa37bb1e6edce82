"""Loopback receivers for the alert tests: a tiny SMTP server and an HTTP server that keep what they get.

The SMTP side speaks just what ``smtplib`` needs to deliver a message (EHLO/HELO, AUTH PLAIN, MAIL,
RCPT, DATA, RSET, NOOP, QUIT) and records each message with its envelope and the login used.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: Message
    raw: str
    login: tuple[str, str] | None = None

    @property
    def text(self) -> str:
        """Headers and body decoded (the raw message may be quoted-printable, which splits long lines)."""
        headers = "\n".join(f"{name}: {value}" for name, value in self.message.items())
        return f"{headers}\n\n{self.message.get_content()}"


@dataclass
class Received:
    mails: list[Mail] = field(default_factory=list)
    posts: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)


class _SmtpHandler(socketserver.StreamRequestHandler):
    def _reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def _line(self) -> str | None:
        raw = self.rfile.readline()
        return raw.decode("utf-8", "replace").rstrip("\r\n") if raw else None

    def handle(self) -> None:
        self._reply("220 localhost test SMTP")
        sender, recipients, login = "", [], None
        while (line := self._line()) is not None:
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                self.wfile.write(b"250-localhost\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n")
            elif verb == "HELO":
                self._reply("250 localhost")
            elif verb == "AUTH":
                _, _, blob = arg.partition(" ")
                _, user, password = base64.b64decode(blob).decode().split("\0")
                login = (user, password)
                self._reply("235 2.7.0 Authentication successful")
            elif verb == "MAIL":
                sender, recipients = arg.partition(":")[2].strip("<> "), []
                self._reply("250 OK")
            elif verb == "RCPT":
                recipients.append(arg.partition(":")[2].strip("<> "))
                self._reply("250 OK")
            elif verb == "DATA":
                self._reply("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                while (body := self._line()) not in (".", None):
                    lines.append(body[1:] if body.startswith("..") else body)
                raw = "\n".join(lines)
                self.server.received.mails.append(Mail(sender, recipients, email.message_from_string(raw, policy=email.policy.default), raw, login))
                self._reply("250 OK: queued")
            elif verb in ("RSET", "NOOP"):
                self._reply("250 OK")
            elif verb == "QUIT":
                self._reply("221 Bye")
                return
            else:
                self._reply("502 Command not implemented")


class _HttpHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.posts.append(json.loads(body))
        self.server.received.headers.append(dict(self.headers))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:  # quiet test output
        pass


class _ThreadingTcp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def receivers() -> Iterator[tuple[Received, str, str]]:
    """(what arrived, the SMTP server's host:port, the webhook's URL), both on 127.0.0.1 and free ports."""
    received = Received()
    smtp = _ThreadingTcp(("127.0.0.1", 0), _SmtpHandler)
    http = ThreadingHTTPServer(("127.0.0.1", 0), _HttpHandler)
    smtp.received = http.received = received
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in (smtp, http)]
    for thread in threads:
        thread.start()
    try:
        yield received, f"127.0.0.1:{smtp.server_address[1]}", f"http://127.0.0.1:{http.server_address[1]}/hooks/dqlrec"
    finally:
        for server in (smtp, http):
            server.shutdown()
            server.server_close()
