"""sys.Callback end to end: two registered phones are rung in turn and bridged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from engine.server import Server
from sip.message import Request, make_response
from tests.callbacks.ua import UA, Dialog, provision, running_server, sdp, user_agents
from tests.calls.helpers import wait_rows


async def test_callback_rings_both_phones_and_bridges_them(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, "acme", {"alice": (None, "out"), "bob": (None, None), "carol": (None, None)},
                  {"out": 'sys.Callback("bob@local", "carol@local", 1)\nsys.Respond(486, "Callback placed")\n'})
        assert server.sip_address is not None
        async with user_agents(server, "alice", "bob", "carol") as (alice, bob, carol):
            # The script goes on at once: the caller hears its Respond before any phone rings.
            with trio.fail_after(5):
                _, final = await alice.invite_uri(f"sip:123@127.0.0.1:{server.sip_address[1]}", sdp(40000))
            assert (final.status, final.reason) == (486, "Callback placed")
            first, source1 = await bob.request("INVITE")
            assert b"m=audio 9 " in first.body and first.from_.uri.user == "carol"
            bob_dialog = await bob.answer_request(first, source1, sdp(41000))
            assert (await bob.request("ACK"))[0].cseq.number == first.cseq.number
            second, source2 = await carol.request("INVITE")
            assert b"m=audio 41000" in second.body and second.from_.uri.user == "bob"
            carol_dialog = await carol.answer_request(second, source2, sdp(43000))
            # The first phone is re-offered the second one's media.
            reinvite, source3 = await bob.request("INVITE")
            assert reinvite.to.tag and b"m=audio 43000" in reinvite.body
            await bob.ok(reinvite, source3, sdp(41000))
            ack, _ = await bob.request("ACK")
            assert ack.cseq.number == reinvite.cseq.number
            await bob.ok(reinvite, source3, sdp(41000))  # as if our ACK was lost
            assert (await bob.request("ACK"))[0] == ack  # the same ACK again (RFC 3261 13.2.2.4)
            # A hang-up on one phone reaches the other.
            assert (await carol_dialog.bye()).status == 200
            bye, source4 = await bob.request("BYE")
            assert bye.call_id == bob_dialog.call_id
            await bob.ok(bye, source4)
            # alice's own call, answered by her dialplan's Respond, is on record too.
            assert await wait_rows(server, "SELECT direction, status, bridge_id FROM cdrs WHERE leg = 'caller'",
                                   1) == [("out", 486, None)]
            # One record per leg, linked by the bridge, written when it ended.
            legs = await wait_rows(server, "SELECT leg, direction, to_uri, status, bridge_id, answered_at, "
                                   "hungup_at, hangup_reason FROM cdrs WHERE bridge_id IS NOT NULL ORDER BY created", 2)
            assert [(r[0], r[1], r[3]) for r in legs] == [("callee", "out", 200), ("callee", "out", 200)]
            assert legs[0][4] == legs[1][4] and all(r[5] and r[6] for r in legs)
            assert "bob" in legs[0][2] and "carol" in legs[1][2]
            assert [r[7] for r in legs] == ["BYE from callee", "BYE from callee"]
            assert server.runner.records._open == {}


async def test_callback_hangs_up_the_first_phone_when_the_second_fails(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, "acme", {"alice": (None, "out"), "bob": (None, None), "carol": (None, None)},
                  {"out": 'sys.Callback("bob@local", "carol@local")\nsys.Respond(486, "Callback placed")\n'})
        assert server.sip_address is not None
        async with user_agents(server, "alice", "bob") as (alice, bob):  # carol is not registered
            await alice.invite_uri(f"sip:123@127.0.0.1:{server.sip_address[1]}", sdp(40000))
            first, source = await bob.request("INVITE")
            await bob.answer_request(first, source, sdp(41000))
            bye, source = await bob.request("BYE")
            assert bye.call_id == first.call_id
            assert bye.headers.get("Reason") == 'SIP;cause=480;text="The other party did not answer"'  # RFC 3326
            await bob.ok(bye, source)
            # bob's answered leg is on record, hung up by the server.
            hung_up = await wait_rows(server, "SELECT status, hangup_reason FROM cdrs WHERE call_id = ?", 1,
                                      (first.call_id,))
            assert hung_up == [(200, "The other party did not answer (server)")]
            assert server.runner.records._open == {}


@asynccontextmanager
async def _second_ringing(tmp_path: Path) -> AsyncIterator[tuple[Server, UA, UA, Dialog, Request, tuple[str, int]]]:
    """A sys.Callback whose first phone (bob) has answered and whose second (carol) has
    its INVITE: (server, bob, carol, bob's dialog, carol's INVITE and its source)."""
    async with running_server(tmp_path) as server:
        provision(server, "acme", {"alice": (None, "out"), "bob": (None, None), "carol": (None, None)},
                  {"out": 'sys.Callback("bob@local", "carol@local")\nsys.Respond(486, "Callback placed")\n'})
        assert server.sip_address is not None
        async with user_agents(server, "alice", "bob", "carol") as (alice, bob, carol):
            await alice.invite_uri(f"sip:123@127.0.0.1:{server.sip_address[1]}", sdp(40000))
            first, source1 = await bob.request("INVITE")
            bob_dialog = await bob.answer_request(first, source1, sdp(41000))
            await bob.request("ACK")
            second, source2 = await carol.request("INVITE")
            yield server, bob, carol, bob_dialog, second, source2


async def test_the_first_phone_hanging_up_while_the_second_rings_stops_the_callback(tmp_path: Path) -> None:
    # Its BYE used to draw 481 (the answered leg was not yet in a bridge), and the
    # second phone went on ringing, to be joined to a call that was gone.
    async with _second_ringing(tmp_path) as (server, bob, carol, bob_dialog, second, source2):
        await carol.send(make_response(second, 180, to_tag="c"), source2)  # (a CANCEL needs a 1xx: 9.1)
        assert (await bob_dialog.bye()).status == 200
        cancel, source3 = await carol.request("CANCEL")
        assert cancel.call_id == second.call_id
        await carol.ok(cancel, source3)
        await carol.send(make_response(second, 487, to_tag="c"), source2)
        await carol.request("ACK")
        await bob.no_request("BYE", 0.3)
        rows = await wait_rows(server, "SELECT to_uri, status, hangup_reason FROM cdrs WHERE leg = 'callee' "
                               "ORDER BY created", 2)
        assert [(r[1], r[2]) for r in rows] == [(200, "BYE from callee"), (487, None)]
        assert server.runner.records._open == {}


async def test_the_first_phone_s_requests_while_the_second_rings_are_answered_at_once(tmp_path: Path) -> None:
    # Held until the bridge (up to 60 s of ringing), a re-INVITE would time out at the
    # phone, which would then end its call: it gets 491 (try again later) instead, and
    # an INFO 405; the callback goes on.
    async with _second_ringing(tmp_path) as (_, bob, carol, bob_dialog, second, source2):
        for method, status in (("INVITE", 491), ("INFO", 405)):
            await bob.send(bob_dialog.request(method), bob_dialog.peer)
            answer = await bob.response(bob_dialog.call_id, method, seconds=2)
            assert answer.status == status
        await carol.answer_request(second, source2, sdp(43000))
        reinvite, source3 = await bob.request("INVITE")
        assert b"m=audio 43000" in reinvite.body
