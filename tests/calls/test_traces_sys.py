"""Trace mail through a real SMTP server, and sys members through real calls."""

from __future__ import annotations

import email
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Message

from engine.dialplan_host import DialplanHost
from engine.server import Server
from sandbox import HostReply
from sandbox.results import PlainValue
from tests.calls.helpers import (
    Call,
    Incoming,
    Phone,
    phones,
    provision,
    rows,
    running_server,
    wait_rows,
)
from tests.conftest import free_port

TRACED = 'sys.Log("hello from the trace")\nsys.Dial("bob@local")\n'


class _Inbox(Message):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[email.message.Message] = []

    def handle_message(self, message: email.message.Message) -> None:
        self.messages.append(message)


def _text(mail: email.message.Message) -> str:
    """The body of a one-part mail, decoded."""
    payload = mail.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


async def _wait_mail(inbox: _Inbox, count: int) -> list[email.message.Message]:
    with trio.fail_after(10):
        while len(inbox.messages) < count:  # noqa: ASYNC110 - filled by the SMTP server's thread
            await trio.sleep(0.05)
    return inbox.messages


async def test_trace_mail_reaches_smtp_and_trace_false_suppresses_it(tmp_path: Path) -> None:
    inbox = _Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        async with running_server(tmp_path, smtp_host="127.0.0.1", smtp_port=port) as server:
            provision(server, accounts={"alice": ("in", None), "quiet": ("in_quiet", None), "bob": (None, None)},
                      dialplans={"in": TRACED, "in_quiet": "sys.Trace = False\n" + TRACED},
                      trace_email="owner@example.com")
            async with phones(server, "bob", "carol@example.com") as (bob, carol):
                call = await carol.invite("alice", authenticate=False)
                ringing = await bob.next_request("INVITE")
                await bob.send(bob.reply(ringing, 486, to_tag="b"), ringing.source)
                assert (await carol.final(call)).status == 486
                mails = await _wait_mail(inbox, 1)
                body = _text(mails[0])
                assert mails[0]["To"] == "owner@example.com"
                lines = body.splitlines()
                assert lines[0].startswith("Dialplan trace commenced at")
                assert "DialPlan=> hello from the trace" in lines
                assert any(line.startswith("INVITE sip:alice@") for line in lines)
                assert lines[-1].startswith("Dialplan trace completed at")
                # The same execution with sys.Trace = False: stored, not mailed.
                quiet = await carol.invite("quiet", authenticate=False)
                ringing = await bob.next_request("INVITE")
                await bob.send(bob.reply(ringing, 486, to_tag="b"), ringing.source)
                assert (await carol.final(quiet)).status == 486
                await wait_rows(server, "SELECT 1 FROM traces WHERE dialplan = 'in_quiet'", 1)
                await trio.sleep(0.5)
                assert len(inbox.messages) == 1
    finally:
        controller.stop()


async def test_trace_mail_lands_in_the_outbox_without_smtp(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": ("in", None)}, dialplans={"in": 'sys.Log("to the outbox")\n'},
                  trace_email="owner@example.com")
        async with phones(server, "carol@example.com") as (carol,):
            call = await carol.invite("alice", authenticate=False)
            assert (await carol.final(call)).status == 480
        outbox = server.config.data_dir / "outbox"
        with trio.fail_after(10):
            # (*.eml: a message is written under a hidden temporary name, then renamed.)
            while not list(outbox.glob("*.eml")):  # noqa: ASYNC110 - a file another task writes
                await trio.sleep(0.05)
        mail = email.message_from_bytes(next(outbox.glob("*.eml")).read_bytes())
        assert mail["To"] == "owner@example.com"
        assert "DialPlan=> to the outbox" in _text(mail)


@asynccontextmanager
async def _carol_calls_alice(
    tmp_path: Path, source: str, extra: list[tuple[str, str]] | None = None
) -> AsyncIterator[tuple[Server, Phone, Phone, Call, Incoming]]:
    """carol (outside) calls alice, whose In dialplan is ``source``, with bob registered;
    yields once the first INVITE the dialplan placed has reached bob:
    (server, bob, carol, carol's call, bob's INVITE)."""
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": ("in", None), "bob": (None, None)}, dialplans={"in": source})
        async with phones(server, "bob", "carol@example.com") as (bob, carol):
            call = await carol.invite("alice", authenticate=False, extra=extra or [])
            incoming = await bob.next_request("INVITE")
            yield server, bob, carol, call, incoming


async def test_sys_members_through_real_calls(tmp_path: Path) -> None:
    source = (
        "n = int(sys.DBRead('count') or '0') + 1\n"
        "sys.DBWrite('count', str(n))\n"
        "sys.Log('call %d bob available %s' % (n, sys.IsAvailable('bob')))\n"
        "sys.Log('bindings %s' % (sys.GetBindings('bob'),))\n"
        "if n == 2:\n"
        "    sys.Respond(486, 'Busy by dialplan')\n"
        "sys.SetCustomSIPHeader('X-Account-Code', '77')\n"
        "sys.SetFromHeader('Reception', 'desk', None)\n"
        "sys.Dial('bob@local')\n"
    )
    async with _carol_calls_alice(tmp_path, source) as (server, bob, carol, call, incoming):
        assert incoming.request.headers.get("X-Account-Code") == "77"
        from_ = incoming.request.from_
        assert from_.display_name == "Reception" and from_.uri.user == "desk"
        await bob.answer(incoming)
        assert (await carol.final(call)).status == 200
        second = await carol.invite("alice", authenticate=False)
        busy = await carol.final(second)
        assert (busy.status, busy.reason) == (486, "Busy by dialplan")
        await bob.no_request("INVITE", 0.3)
        traces = await wait_rows(server, "SELECT text FROM traces ORDER BY created", 2)
        assert "DialPlan=> call 1 bob available True" in traces[0][0]
        assert f"bindings ['sip:bob@127.0.0.1:{bob.local[1]}']" in traces[0][0]
        assert "DialPlan=> call 2 bob available True" in traces[1][0]
        assert rows(server, "SELECT value FROM kv WHERE key = 'count'")[0][0] == "2"


async def test_the_rest_of_sys_and_req_through_real_calls(tmp_path: Path) -> None:
    # The members the test above does not reach, each read back from the trace or from
    # what reached the callee.
    source = (
        "n = int(sys.DBRead('n') or '0') + 1\n"
        "sys.DBWrite('n', str(n))\n"
        "sys.Log('who %s %s in=%s out=%s' % (sys.Username, sys.DialPlanName, sys.In, sys.Out))\n"
        "sys.Log('req %s %s@%s from %s to %s cseq %d ua %s' % (req.Method, req.URI.User, req.URI.Host,"
        " req.Header.From.FromURI.User, req.Header.To.ToURI.User, req.Header.CSeq,"
        " req.Header.Get('X-Phone')))\n"
        "sys.Log('count %d' % sys.GetCurrentCallCount())\n"
        "if n == 2:\n"
        "    sys.Respond(486, 'Second call')\n"
        "sys.Log('mine %s %s exists %s %s' % (sys.IsMine('bob'), sys.IsMine('zed'),"
        " sys.DoesSIPAccountExist('bob'), sys.DoesSIPAccountExist('zed')))\n"
        "sys.DBWrite('a', '1')\n"
        "sys.DBDelete('a')\n"
        "sys.Log('keys %s' % sorted(sys.DBGetKeys()))\n"
        "sys.ExtendScriptTimeout(30)\n"
        "sys.SetCustomSIPHeader('X-One', '1')\n"
        "sys.SetCustomSIPHeader('X-Two', '2')\n"
        "sys.RemoveCustomSIPHeader('X-One')\n"
        "sys.SetCustomSIPHeader('X-Three', '3')\n"
        "sys.ClearCustomSIPHeaders()\n"
        "sys.SetCustomSIPHeader('X-Four', '4')\n"
        "sys.SetFromHeader('Desk', 'desk', None)\n"
        "sys.ClearFromHeader()\n"
        "result = sys.Dial('zed@local')\n"
        "sys.Log('failed %s %s %s' % (result, sys.LastFailureStatus, sys.LastFailureReason))\n"
        "sys.Dial('bob@local')\n"
    )
    async with _carol_calls_alice(tmp_path, source, extra=[("X-Phone", "deskphone-7")]) as (server, bob, carol, call, incoming):
        headers = incoming.request.headers
        assert headers.get("X-Four") == "4"
        assert headers.get("X-One") is None and headers.get("X-Two") is None and headers.get("X-Three") is None
        assert incoming.request.from_.uri.user == "carol" and incoming.request.from_.display_name != "Desk"
        await bob.answer(incoming)
        assert (await carol.final(call)).status == 200
        # A second call while the first is up: the owner has one established call.
        second = await carol.invite("alice", authenticate=False)
        assert (await carol.final(second)).status == 486
        traces = await wait_rows(server, "SELECT text FROM traces ORDER BY created", 2)
        first, later = traces[0][0], traces[1][0]
        assert "DialPlan=> who alice in in=True out=False" in first
        assert "DialPlan=> req INVITE alice@127.0.0.1 from carol to alice cseq 1 ua deskphone-7" in first
        assert "DialPlan=> count 0" in first and "DialPlan=> count 1" in later
        assert "DialPlan=> mine True False exists True False" in first
        assert "DialPlan=> keys ['n']" in first
        # No account zed: a Dial with no legs fails with 480 (docs/calls.md, "Outcomes").
        assert "DialPlan=> failed Failed 480 Temporarily Unavailable" in first


async def test_set_from_header_values_are_escaped_into_a_valid_from(tmp_path: Path) -> None:
    # A display name with quotes and backslashes, a user part with spaces and '@':
    # written as a quoted-string and an escaped user (RFC 3261 25.1), never as raw text
    # that would break the callee's parser.
    source = "sys.SetFromHeader('Front \"desk\" \\\\ 2', 'front desk@1', None)\nsys.Dial('bob@local')\n"
    async with _carol_calls_alice(tmp_path, source) as (server, bob, carol, call, incoming):
        from_ = incoming.request.from_
        assert from_.display_name == 'Front "desk" \\ 2'
        assert from_.uri.unescaped_user == "front desk@1" and from_.uri.host == "127.0.0.1"
        await bob.answer(incoming)
        assert (await carol.final(call)).status == 200


async def test_the_host_refuses_header_injection_a_worker_should_have_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's facade refuses CR/LF in headers; a worker is not trusted to have.
    # Forge what a compromised worker would send and check the host holds.
    original = DialplanHost.call

    async def forged(self: DialplanHost, name: str, args: tuple[PlainValue, ...]) -> HostReply:
        if name == "SetCustomSIPHeader":
            args = ("X-A", "1\r\nVia: SIP/2.0/UDP 203.0.113.9;branch=z9hG4bKevil")
        if name == "Respond":
            args = (183, "Ringing\r\nX-Evil: 1", "X-B: 2\r\nX-Evil: 2|X-C: 3")
        return await original(self, name, args)

    monkeypatch.setattr(DialplanHost, "call", forged)
    source = (
        "try:\n"
        "    sys.SetCustomSIPHeader('X-A', 'fine')\n"
        "except ValueError as exc:\n"
        "    sys.Log('refused: %s' % exc)\n"
        "try:\n"
        "    sys.Respond(183, 'Ringing', 'X-B: 2|X-C: 3')\n"
        "except ValueError as exc:\n"
        "    sys.Log('refused: %s' % exc)\n"
        "sys.Dial('bob@local')\n"
    )
    async with _carol_calls_alice(tmp_path, source) as (server, bob, carol, call, incoming):
        assert not any(r.status == 183 for r in carol.responses)  # the forged 183 never went out
        assert incoming.request.headers.get("X-A") is None
        assert len(incoming.request.headers.get_all("Via")) == 1
        await bob.answer(incoming)
        assert (await carol.final(call)).status == 200
        trace = await wait_rows(server, "SELECT text FROM traces", 1)
        assert "DialPlan=> refused: sys.SetCustomSIPHeader(): the name must be a token" in trace[0][0]
        assert "DialPlan=> refused: sys.Respond(): the status must be 100-699" in trace[0][0]
