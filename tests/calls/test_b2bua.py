"""B2BUA behaviours through real sockets: bridging, forking, cancellation, re-INVITE
relay with the NAT fix, duration limits and lost retransmissions."""

from __future__ import annotations

from pathlib import Path

from tests.calls.helpers import phones, provision, running_server, wait_rows

DIAL_DST = 'sys.Dial("%s@local" % req.URI.User)\n'


async def test_out_dialplan_bridges_and_bye_crosses(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, "out"), "bob": (None, None)}, dialplans={"out": DIAL_DST})
        async with phones(server, "alice", "bob") as (alice, bob):
            call = await alice.invite("bob")
            incoming = await bob.next_request("INVITE")
            callee = await bob.answer(incoming)
            ringing = await alice.next_response(call_id=call.call_id)
            while ringing.status == 100:
                ringing = await alice.next_response(call_id=call.call_id)
            assert ringing.status == 180
            ok = await alice.final(call)
            assert ok.status == 200
            assert b"m=audio 41000" in ok.body
            assert b"m=audio 40000" in incoming.request.body
            await bob.next_request("ACK")
            bye = await call.bye()
            assert bye.status == 200
            got = await bob.next_request("BYE")
            await callee.ok_to(got)
            cdrs = await wait_rows(
                server, "SELECT leg, bridge_id, hungup_at, answered_at FROM cdrs WHERE hungup_at IS NOT NULL", 2
            )
            assert {r[0] for r in cdrs} == {"caller", "callee"}
            assert len({r[1] for r in cdrs}) == 1 and cdrs[0][1]
