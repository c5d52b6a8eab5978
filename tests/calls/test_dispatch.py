"""How a new INVITE is classified and refused before any dialplan runs: Out calls from
our accounts (disabled, incoming-only), In calls to our domains (unknown account,
foreign domain, disabled callee, the suffix rule, every binding rung at once)."""

from __future__ import annotations

import secrets
from pathlib import Path

import trio

from engine.server import Server
from sip.message import new_tag
from tests.calls.helpers import Phone, phones, provision, running_server, sdp


def _set_flags(server: Server, user: str, **flags: bool) -> None:
    """Change an account as the web API or the CLI would; the server's directory sees
    it within DIRECTORY_RECHECK (asked at once here)."""
    account = server.store.directory(force=True).account(user, "local")
    assert account is not None
    server.store.set_account_flags(account.id, **flags)
    server.store.directory(force=True)


async def _final_status(phone: Phone, uri: str, to: str) -> tuple[int, str]:
    """An outside caller's INVITE to ``uri``; its final response."""
    call_id = secrets.token_hex(8) + "@uac"
    invite = phone._request("INVITE", uri, to=to, call_id=call_id, from_tag=new_tag(),
                            body=sdp("127.0.0.1", 40000))
    await phone.send(invite)
    final = await phone.next_response(call_id=call_id, final=True)
    await phone._ack_error(invite, final)
    return final.status, final.reason


async def test_our_accounts_that_may_not_call_out_are_refused_after_authentication(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, "out"), "dave": (None, "out"), "bob": (None, None)},
                  dialplans={"out": 'sys.Dial("bob@local")\n'})
        async with phones(server, "alice", "dave", "bob") as (alice, dave, bob):
            _set_flags(server, "alice", incoming_only=True)
            _set_flags(server, "dave", disabled=True)
            call = await alice.invite("bob")  # answers the 407 first
            final = await alice.final(call)
            assert (final.status, final.reason) == (403, "Forbidden (this account may not place calls)")
            call = await dave.invite("bob")
            final = await dave.final(call)
            assert (final.status, final.reason) == (403, "Forbidden (account disabled)")
            await bob.no_request("INVITE", 0.5)


async def test_in_calls_find_the_account_or_say_why_not(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"bob": (None, None), "eve": (None, None)})
        async with phones(server, "bob", "bob", "eve", "carol@example.com") as (bob1, bob2, eve, carol):
            assert server.sip_address is not None
            host = f"127.0.0.1:{server.sip_address[1]}"
            assert await _final_status(carol, f"sip:nobody@{host}", "<sip:nobody@127.0.0.1>") == (
                404, "Not Found (no such account)")
            assert await _final_status(carol, "sip:bob@elsewhere.example", "<sip:bob@elsewhere.example>") == (
                404, "Not Found (domain not served here)")
            _set_flags(server, "eve", disabled=True)
            assert await _final_status(carol, f"sip:eve@{host}", "<sip:eve@127.0.0.1>") == (
                403, "Forbidden (account disabled)")
            await eve.no_request("INVITE", 0.3)

            # No In dialplan: the suffix rule finds bob, and both his bindings ring at once.
            call = await carol.invite("office.bob", authenticate=False)
            with trio.fail_after(5):
                ring1 = await bob1.next_request("INVITE")
                ring2 = await bob2.next_request("INVITE")
            # Each binding got its own INVITE, before anyone answered, one hop further on.
            assert ring1.request.uri.port == bob1.local[1] and ring2.request.uri.port == bob2.local[1]
            assert ring1.request.max_forwards == ring2.request.max_forwards == 69
            answered = await bob2.answer(ring2)
            assert (await carol.final(call)).status == 200
            # The other binding stops ringing.
            cancel = await bob1.next_request("CANCEL")
            assert cancel.request.call_id == ring1.request.call_id
            await bob1.send(bob1.reply(cancel, 200), cancel.source)
            await bob1.send(bob1.reply(ring1, 487), ring1.source)
            await bob2.next_request("ACK")
            assert (await answered.bye()).status == 200


async def test_a_new_invite_the_server_cannot_honour_is_refused_before_its_challenge(tmp_path: Path) -> None:
    # RFC 3261 8.2: an extension we lack (Require, Proxy-Require), a body type we cannot
    # read, an Accept that excludes SDP or a URI scheme we do not serve is refused
    # before anything else, with what the caller needs to try again.
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, "out"), "bob": (None, None)},
                  dialplans={"out": 'sys.Dial("bob@local")\n'})
        async with phones(server, "alice", "bob") as (alice, bob):
            for extra, status, reason, header in [
                ([("Require", "100rel")], 420, "Bad Extension: 100rel", ("Unsupported", "100rel")),
                ([("Proxy-Require", "sec-agree")], 420, "Bad Extension: sec-agree", ("Unsupported", "sec-agree")),
                ([("Accept", "text/plain")], 406, "Not Acceptable: Accept excludes application/sdp", None),
                ([("Content-Encoding", "gzip")], 415, "Unsupported Content-Encoding: gzip", None),
            ]:
                call = await alice.invite("bob", extra=extra)  # no 407 comes first
                final = await alice.final(call)
                assert (final.status, final.reason) == (status, reason)
                if header is not None:
                    assert final.headers.get(header[0]) == header[1]
            invite = alice._request("INVITE", "sip:bob@127.0.0.1", to="<sip:bob@127.0.0.1>",
                                    call_id="multipart@uac", from_tag=new_tag(), body=b"--x\r\n\r\n--x--\r\n")
            invite = invite.replace(headers=invite.headers.with_replaced("Content-Type", "multipart/mixed;boundary=x"))
            await alice.send(invite)
            final = await alice.next_response(call_id="multipart@uac", final=True)
            assert (final.status, final.reason) == (415, "Unsupported Media Type: multipart/mixed")
            assert final.headers.get("Accept") == "application/sdp"
            assert await _final_status(alice, "tel:+15551234", "<tel:+15551234>") == (
                416, "Unsupported URI Scheme: tel")
            await bob.no_request("INVITE", 0.5)


async def test_the_same_invite_by_a_second_path_gets_482_and_rings_once(tmp_path: Path) -> None:
    # RFC 3261 8.2.2.2: a proxy before us forked one INVITE to us twice (same Call-ID,
    # From tag and CSeq, another branch).  One call runs; the copy is a merged request.
    async with running_server(tmp_path) as server:
        provision(server, accounts={"bob": (None, None)})
        async with phones(server, "bob", "carol@example.com") as (bob, carol):
            call = await carol.invite("bob", authenticate=False)
            ringing = await bob.next_request("INVITE")
            via = call.invite.headers.get("Via") or ""
            branch = via.split("branch=")[1].split(";")[0]
            copy = call.invite.replace(headers=call.invite.headers.with_replaced(
                "Via", via.replace(branch, branch + "-2")))
            await carol.send(copy)
            merged = await carol.next_response(call_id=call.call_id, final=True)
            assert (merged.status, merged.reason) == (482, "Loop Detected (merged request: this INVITE reached us twice)")
            assert branch + "-2" in (merged.headers.get("Via") or "")
            await carol._ack_error(copy, merged)
            await bob.no_request("INVITE", 0.5)
            # The first goes on as usual.
            await bob.answer(ringing)
            assert (await carol.final(call)).status == 200
            assert not server.calls.running_invites
