"""Mail as the recipient sees it: a real aiosmtpd server, or a file in the outbox."""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from engine.mailer import MailConfig, Mailer, MailError, MailLimits, split_addresses


@dataclass
class Sink:
    """An aiosmtpd handler that keeps every message it accepts."""

    received: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"


def free_tcp_port() -> int:
    # aiosmtpd cannot bind port 0, so pick a free port first.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def outbox_files(directory: Path) -> dict[str, bytes]:
    """Name -> content of every file in an outbox (none if it does not exist)."""
    if not directory.exists():
        return {}
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def parse_mail(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


@pytest.fixture
def smtp() -> Iterator[tuple[Controller, Sink]]:
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_tcp_port())
    controller.start()
    try:
        yield controller, sink
    finally:
        controller.stop()


async def test_smtp_delivery_headers_and_body(
    smtp: tuple[Controller, Sink], tmp_path: Path
) -> None:
    controller, sink = smtp
    config = MailConfig(host="127.0.0.1", port=controller.port, sender="pbx@example.com")
    mailer = Mailer(config, tmp_path / "outbox")
    body = "Dialplan trace commenced.\nDialPlan=> call from alice\n.leading dot line\n"
    with trio.fail_after(10):
        await mailer.send(["ops@example.com", "owner@example.org"], "Trace: In", body)
    [(mail_from, rcpt_tos, message)] = sink.received
    assert mail_from == "pbx@example.com"
    assert rcpt_tos == ["ops@example.com", "owner@example.org"]
    assert message["From"] == "pbx@example.com"
    assert message["To"] == "ops@example.com, owner@example.org"
    assert message["Subject"] == "Trace: In"
    assert message["Message-ID"].endswith("@example.com>")
    assert message["Date"]
    assert message.get_content().splitlines() == body.splitlines()
    assert outbox_files(tmp_path / "outbox") == {}


async def test_unicode_subject_and_body(smtp: tuple[Controller, Sink], tmp_path: Path) -> None:
    controller, sink = smtp
    mailer = Mailer(
        MailConfig(host="127.0.0.1", port=controller.port, sender="a@b.example"), tmp_path
    )
    with trio.fail_after(10):
        await mailer.send(["x@y.example"], "Anruf von Jürgen ☎", "Grüße\n")
    message = sink.received[0][2]
    assert message["Subject"] == "Anruf von Jürgen ☎"
    assert message.get_content().splitlines() == ["Grüße"]


async def test_starttls_and_login(tmp_path: Path) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    logins: list[tuple[bytes, bytes]] = []

    def authenticate(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        ok = data.password == b"s3cret"
        # handled=False: aiosmtpd itself answers 535 to a refused login.
        return AuthResult(success=ok, handled=False)

    sink = Sink()
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=free_tcp_port(),
        server_hostname="localhost",
        tls_context=server_context,
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
        # smtplib sends LOGIN with an initial response, which aiosmtpd's LOGIN does not
        # take; PLAIN is what the server under test offers.
        auth_exclude_mechanism=["LOGIN"],
    )
    controller.start()
    try:
        config = MailConfig(
            host="localhost",
            port=controller.port,
            sender="pbx@example.com",
            starttls=True,
            username="pbx",
            password="s3cret",
            tls_context=client_context,
        )
        with trio.fail_after(10):
            await Mailer(config, tmp_path).send(["a@example.com"], "s", "b")
        bad = MailConfig(
            host="localhost",
            port=controller.port,
            sender="pbx@example.com",
            starttls=True,
            username="pbx",
            password="wrong",
            tls_context=client_context,
        )
        with trio.fail_after(10), pytest.raises(MailError, match="not sent"):
            await Mailer(bad, tmp_path).send(["a@example.com"], "s", "b")
    finally:
        controller.stop()
    assert [m[1] for m in sink.received] == [["a@example.com"]]
    assert logins == [(b"pbx", b"s3cret"), (b"pbx", b"wrong")]


async def test_outbox_writes_one_parseable_file_per_message(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    mailer = Mailer(None, outbox, outbox_sender="dialspell@pbx.example")
    with trio.fail_after(10):
        await mailer.send(["a@example.com"], "first", "line 1\nline 2\n")
        await mailer.send(["b@example.com"], "second", "x\n")
    files = outbox_files(outbox)
    assert [name.rpartition(".")[2] for name in files] == ["eml", "eml"]
    by_subject = {parse_mail(raw)["Subject"]: raw for raw in files.values()}
    first = parse_mail(by_subject["first"])
    assert first["From"] == "dialspell@pbx.example"
    assert first["To"] == "a@example.com"
    assert first.get_content().splitlines() == ["line 1", "line 2"]
    # RFC 5322 2.1: lines end in CRLF.
    assert b"\r\nSubject: first\r\n" in by_subject["first"]


async def test_unreachable_server_is_a_mail_error(tmp_path: Path) -> None:
    config = MailConfig(host="127.0.0.1", port=free_tcp_port(), sender="a@b.example", timeout=2)
    with trio.fail_after(10), pytest.raises(MailError, match="not sent"):
        await Mailer(config, tmp_path).send(["x@y.example"], "s", "b")


@pytest.mark.parametrize(
    ("to", "subject", "body", "message"),
    [
        ([], "s", "b", "at least one recipient"),
        (["a@b.example"] * 6, "s", "b", "at most 5 recipients, not 6"),
        (["a@b.example\r\nBcc: evil@x.example"], "s", "b", "must not contain CR or LF"),
        (["not an address"], "s", "b", "is not a valid e-mail address"),
        (["Bob <bob@x.example>"], "s", "b", "is not a valid e-mail address"),
        (["a@b.example"], "hi\r\nBcc: evil@x.example", "b", "subject must not contain CR or LF"),
        (["a@b.example"], "s" * 257, "b", "subject is 257 characters; at most 256"),
        (["a@b.example"], "s", "b" * 4097, "body is 4097 characters; at most 4096"),
        ("a@b.example", "s", "b", "a list of addresses, not one string"),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 40 else "",
)
async def test_bad_input_is_refused_before_sending(
    tmp_path: Path, to: list[str], subject: str, body: str, message: str
) -> None:
    mailer = Mailer(None, tmp_path / "outbox")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        await mailer.send(to, subject, body)
    assert outbox_files(tmp_path / "outbox") == {}


async def test_per_call_limits_allow_long_traces(tmp_path: Path) -> None:
    mailer = Mailer(None, tmp_path)
    trace = "DialPlan=> line\n" * 2000
    await mailer.send(["a@b.example"], "trace", trace, limits=MailLimits(max_body=65536))
    [raw] = outbox_files(tmp_path).values()
    parsed = parse_mail(raw)
    assert parsed.get_content().splitlines() == trace.splitlines()


def test_split_addresses() -> None:
    assert split_addresses(" a@x.example, b@y.example;c@z.example ,") == [
        "a@x.example",
        "b@y.example",
        "c@z.example",
    ]
