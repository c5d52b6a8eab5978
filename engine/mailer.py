"""Outgoing mail: dialplan traces and ``sys.Email``.

With an SMTP server configured (:class:`MailConfig`) a message goes out through
:mod:`smtplib` in a trio worker thread; without one it is written as an RFC 5322 file
(``*.eml``) into an outbox directory, so a server without mail still keeps what it would
have sent and an operator can deliver or inspect it.

Input is checked before anything is sent, with one :class:`ValueError` per defect whose
message is meant for the dialplan's author: CR/LF in an address or the subject (header
injection), too many recipients, a too long subject or body.  Delivery problems (the SMTP
server refused, the connection failed) raise :class:`MailError`.
"""

from __future__ import annotations

import email.policy
import logging
import os
import re
import smtplib
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from ssl import SSLContext, create_default_context

import trio

log = logging.getLogger(__name__)

# A deliberately plain address check: local@domain, no spaces, quotes, brackets or
# separators.  Anything fancier (display names, quoted local parts) is refused rather
# than guessed at, because an address that parses two ways is a header injection risk.
_ADDRESS = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\Z"
)
MAX_ADDRESS = 254
"""RFC 5321 4.5.3.1.3: a path is at most 256 octets including the angle brackets."""


class MailError(Exception):
    """A message could not be delivered to the SMTP server or written to the outbox."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MailConfig:
    """How to reach the SMTP server.

    ``ssl`` connects with TLS from the start (port 465 style); ``starttls`` upgrades a
    plain connection (port 587 style); they are exclusive.  ``username``/``password`` log in
    when given.  ``sender`` is the envelope and ``From`` address of every message.
    ``tls_context`` verifies the server (None: the system's default trust store).
    """

    host: str
    port: int
    sender: str
    starttls: bool = False
    ssl: bool = False
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0
    tls_context: SSLContext | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MailLimits:
    """Caps on one message; ``sys.Email`` uses the defaults, traces a larger body."""

    max_recipients: int = 5
    max_subject: int = 256
    max_body: int = 4096


def split_addresses(text: str) -> list[str]:
    """``"a@x.com, b@y.org; c@z.net"`` as a list (commas or semicolons separate)."""
    return [part.strip() for part in re.split(r"[,;]", text) if part.strip()]


class Mailer:
    """Sends mail through SMTP, or into ``outbox_dir`` when ``config`` is None."""

    def __init__(
        self,
        config: MailConfig | None,
        outbox_dir: Path,
        *,
        limits: MailLimits | None = None,
        outbox_sender: str = "dialspell@localhost",
    ) -> None:
        if config is not None and config.ssl and config.starttls:
            raise ValueError("mail config: ssl and starttls are exclusive")
        self._config = config
        self._outbox = outbox_dir
        self._limits = limits or MailLimits()
        self._sender = config.sender if config is not None else outbox_sender
        _check_address(self._sender, "sender")

    async def send(
        self,
        to: Sequence[str],
        subject: str,
        body: str,
        *,
        limits: MailLimits | None = None,
    ) -> None:
        """Check and send one plain-text message to every address in ``to``.

        ``limits`` overrides the mailer's caps for this message (a trace is longer than
        what a dialplan may send).  Raises :class:`ValueError` for bad input and
        :class:`MailError` when the message could not be handed on.
        """
        message = self.build(to, subject, body, limits=limits)
        if self._config is None:
            path = await trio.to_thread.run_sync(self._write_outbox, message)
            log.info("mail to %s written to %s", ", ".join(to), path)
        else:
            await trio.to_thread.run_sync(self._send_smtp, self._config, message)
            log.info("mail to %s sent through %s", ", ".join(to), self._config.host)

    def build(
        self,
        to: Sequence[str],
        subject: str,
        body: str,
        *,
        limits: MailLimits | None = None,
    ) -> EmailMessage:
        """The message :meth:`send` would send (after the same checks)."""
        caps = limits or self._limits
        if isinstance(to, str):
            raise ValueError("recipients must be a list of addresses, not one string")
        recipients = list(to)
        if not recipients:
            raise ValueError("an e-mail needs at least one recipient")
        if len(recipients) > caps.max_recipients:
            raise ValueError(
                f"an e-mail may have at most {caps.max_recipients} recipients, not {len(recipients)}"
            )
        for address in recipients:
            _check_address(address, "recipient")
        if not isinstance(subject, str) or not isinstance(body, str):
            raise ValueError("the subject and body of an e-mail must be strings")
        if "\r" in subject or "\n" in subject:
            raise ValueError("the e-mail subject must not contain CR or LF")
        if len(subject) > caps.max_subject:
            raise ValueError(
                f"the e-mail subject is {len(subject)} characters; at most {caps.max_subject}"
            )
        if len(body) > caps.max_body:
            raise ValueError(f"the e-mail body is {len(body)} characters; at most {caps.max_body}")
        # Built with the default policy (LF) so that encoded bodies decode to what was given;
        # serialisation for the wire or the outbox uses CRLF (RFC 5322 2.1).
        message = EmailMessage(policy=email.policy.default)
        message["From"] = self._sender
        message["To"] = ", ".join(recipients)
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = make_msgid(domain=self._sender.rpartition("@")[2])
        message.set_content(body)
        return message

    def _send_smtp(self, config: MailConfig, message: EmailMessage) -> None:
        context = config.tls_context or create_default_context()
        try:
            client: smtplib.SMTP
            if config.ssl:
                client = smtplib.SMTP_SSL(
                    config.host, config.port, timeout=config.timeout, context=context
                )
            else:
                client = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
            with client:
                if config.starttls:
                    client.starttls(context=context)
                if config.username is not None:
                    client.login(config.username, config.password or "")
                refused = client.send_message(message)
        except (smtplib.SMTPException, OSError) as exc:
            raise MailError(f"mail to {message['To']} not sent: {exc}") from exc
        if refused:
            # smtplib raises only when every recipient is refused; report partial refusal.
            raise MailError(f"mail refused for {', '.join(sorted(refused))}")

    def _write_outbox(self, message: EmailMessage) -> Path:
        try:
            self._outbox.mkdir(parents=True, exist_ok=True)
            name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex}.eml"
            # Write to a temporary name in the same directory, then rename: a reader of
            # the outbox never sees half a message.
            fd, temporary = tempfile.mkstemp(dir=self._outbox, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(message.as_bytes(policy=email.policy.SMTP))
                    handle.flush()
                    os.fsync(handle.fileno())
                final = self._outbox / name
                os.replace(temporary, final)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise MailError(f"mail could not be written to {self._outbox}: {exc}") from exc
        return final


def _check_address(address: str, what: str) -> None:
    if not isinstance(address, str):
        raise ValueError(f"the {what} address must be a string")
    if "\r" in address or "\n" in address:
        raise ValueError(f"the {what} address must not contain CR or LF")
    if len(address) > MAX_ADDRESS or not _ADDRESS.match(address):
        raise ValueError(f"'{address[:80]}' is not a valid e-mail address (user@domain)")
