"""A call out through a provider that challenges: the INVITE goes to the trunk's
outbound proxy with the provider's server in the Request-URI, and the challenge (401 or
407) is answered once with the trunk's credentials, in a new transaction of the same
dialog."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from engine.cli import main
from engine.server import Server
from sip.digest import DigestChallenger, DigestVerdict, compute_ha1, parse_credentials
from tests.calls.helpers import Phone, phones, provision, running_server, wait_rows

REALM = "trunk.example"
DIAL_AND_LOG = 'sys.Dial("${dst}@trunk")\nsys.Log("failed: %s" % sys.LastFailureStatus)\n'


@pytest.mark.parametrize(("status", "challenge_header", "answer_header"), [
    (407, "Proxy-Authenticate", "Proxy-Authorization"),
    (401, "WWW-Authenticate", "Authorization"),
])
async def test_a_challenging_provider_through_its_outbound_proxy(
        tmp_path: Path, status: int, challenge_header: str, answer_header: str) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, "out")}, dialplans={"out": 'sys.Dial("${dst}@trunk")\n'})
        async with phones(server, "alice", "trunk@example.com") as (alice, trunk):
            # The server name resolves nowhere: reaching the trunk at all shows the
            # INVITE went to the outbound proxy.
            code = await trio.to_thread.run_sync(main, [
                "provider", "add", "acme", "trunk", "--server", "sip.trunk.invalid",
                "--username", "u77", "--password", "trunk-Pw9",
                "--outbound-proxy", f"127.0.0.1:{trunk.local[1]}",
                "--from-user", "4420", "--from-host", "trunk.example", "--header", "X-Account: 17",
                "--data-dir", str(server.config.data_dir)])
            assert code == 0

            call = await alice.invite("15551234")
            first = await trunk.next_request("INVITE")
            assert str(first.request.uri) == "sip:15551234@sip.trunk.invalid"
            # The trunk's From and custom headers, on every INVITE of the leg.
            assert str(first.request.from_.uri) == "sip:4420@trunk.example"
            assert first.request.headers.get("X-Account") == "17"
            assert first.request.headers.get(answer_header) is None
            challenger = DigestChallenger(b"trunk-test-secret-0123")
            await trunk.send(trunk.reply(first, status, headers=[
                (challenge_header, value) for value in challenger.challenge(REALM, time.time())]), first.source)
            await trunk.next_request("ACK")  # the challenge is a final response: acknowledged

            second = await trunk.next_request("INVITE")
            value = second.request.headers.get(answer_header)
            assert value is not None
            credentials = parse_credentials(value)
            assert credentials is not None and credentials.username == "u77"
            verdict = challenger.verify(
                credentials, method="INVITE", realm=REALM, now=time.time(),
                lookup=lambda user, algorithm: compute_ha1(user, REALM, "trunk-Pw9", algorithm))
            assert verdict is DigestVerdict.ACCEPTED
            # Same dialog, next CSeq, a new transaction (RFC 3261 22.2).
            assert second.request.call_id == first.request.call_id
            assert second.request.from_.tag == first.request.from_.tag
            assert second.request.cseq.number == first.request.cseq.number + 1
            assert second.request.top_via.branch != first.request.top_via.branch
            assert second.request.headers.get("X-Account") == "17"

            answered = await trunk.answer(second)
            ok = await alice.final(call)
            assert ok.status == 200
            await trunk.next_request("ACK")
            bye = await answered.bye()
            assert bye.status == 200
            assert (await alice.next_request("BYE")).request.call_id == call.call_id


@asynccontextmanager
async def _alice_and_a_direct_trunk(tmp_path: Path, password: str) -> AsyncIterator[tuple[Server, Phone, Phone]]:
    """alice, whose Out dialplan dials ${dst}@trunk, and the trunk (a phone at its own
    address, credentials u77/``password``): (server, alice, trunk)."""
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, "out")}, dialplans={"out": DIAL_AND_LOG})
        async with phones(server, "alice", "trunk@example.com") as (alice, trunk):
            code = await trio.to_thread.run_sync(main, [
                "provider", "add", "acme", "trunk", "--server", f"127.0.0.1:{trunk.local[1]}",
                "--username", "u77", "--password", password, "--data-dir", str(server.config.data_dir)])
            assert code == 0
            yield server, alice, trunk


async def test_a_provider_refusing_the_credentials_ends_the_leg_without_a_loop(tmp_path: Path) -> None:
    async with _alice_and_a_direct_trunk(tmp_path, "wrong") as (server, alice, trunk):
        call = await alice.invite("15551234")
        challenger = DigestChallenger(b"trunk-test-secret-0123")
        for _ in range(2):
            invite = await trunk.next_request("INVITE")
            await trunk.send(trunk.reply(invite, 407, headers=[
                ("Proxy-Authenticate", v) for v in challenger.challenge(REALM, time.time())]), invite.source)
            await trunk.next_request("ACK")
        # One answer to a challenge, not a loop: the caller hears the refusal.
        final = await alice.final(call)
        # The caller, who authenticated to us, gets no challenge it could not answer.
        assert final.status == 403 and "authentication with the next hop failed: 407" in final.reason
        assert final.headers.get("Proxy-Authenticate") is None
        await trunk.no_request("INVITE", 1.0)
        # The script still sees what the provider said.
        trace = await wait_trace(server)
        assert "DialPlan=> failed: 407" in trace


async def wait_trace(server: Server) -> str:
    found = await wait_rows(server, "SELECT text FROM traces", 1)
    return str(found[0][0])


async def test_a_stale_nonce_is_answered_once_more(tmp_path: Path) -> None:
    # RFC 2617 3.2.1: stale=true means the credentials were right and only the nonce
    # old: the leg answers the fresh challenge too (and then no more).
    async with _alice_and_a_direct_trunk(tmp_path, "trunk-Pw9") as (_server, alice, trunk):
        call = await alice.invite("15551234")
        challenger = DigestChallenger(b"trunk-test-secret-0123")
        invites = []
        for stale in (False, True):
            invite = await trunk.next_request("INVITE")
            invites.append(invite)
            await trunk.send(trunk.reply(invite, 407, headers=[
                ("Proxy-Authenticate", v) for v in challenger.challenge(REALM, time.time(), stale=stale)]),
                invite.source)
            await trunk.next_request("ACK")
        third = await trunk.next_request("INVITE")
        value = third.request.headers.get("Proxy-Authorization")
        assert value is not None and third.request.cseq.number == invites[0].request.cseq.number + 2
        credentials = parse_credentials(value)
        assert credentials is not None
        assert challenger.verify(credentials, method="INVITE", realm=REALM, now=time.time(),
                                 lookup=lambda user, algorithm: compute_ha1(user, REALM, "trunk-Pw9", algorithm)
                                 ) is DigestVerdict.ACCEPTED
        # A stale answer to that one too would not be answered again: no loops.
        await trunk.send(trunk.reply(third, 407, headers=[
            ("Proxy-Authenticate", v) for v in challenger.challenge(REALM, time.time(), stale=True)]),
            third.source)
        await trunk.next_request("ACK")
        final = await alice.final(call)
        assert final.status == 403
        await trunk.no_request("INVITE", 0.5)
