"""A finished call leaves no reference cycles: everything it made (its legs, dialplan
host, records, bridge) is freed by reference counting as it ends, so the cycle
collector's work does not grow with the call rate (BENCHMARKS.md, "the cycle
collector")."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from tests.calls.helpers import ends_cancelled, phones, provision, ring, running_server

DIAL_DST = 'sys.Dial("%s@local" % req.URI.User)\n'
CALL_OBJECTS = {"Call", "InboundLeg", "OutboundLeg", "Bridge", "Side", "DialplanHost", "Forker", "_CDR"}


@contextmanager
def _cycles_kept() -> Iterator[list[object]]:
    """Collect first, then keep what the collector finds unreachable instead of freeing it."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_answered_rejected_and_cancelled_calls_leave_no_cycles(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, "out"), "bob": (None, None)}, dialplans={"out": DIAL_DST})
        async with phones(server, "alice", "bob") as (alice, bob):
            with _cycles_kept() as garbage:
                # Answered, then hung up by the caller.
                call = await alice.invite("bob")
                await bob.answer(await bob.next_request("INVITE"))
                assert (await alice.final(call)).status == 200
                await bob.next_request("ACK")
                call.cseq = call.invite.cseq.number
                assert (await call.bye()).status == 200
                await bob.next_request("BYE")
                # Rejected by the callee.
                call = await alice.invite("bob")
                incoming = await bob.next_request("INVITE")
                await bob.send(bob.reply(incoming, 486, to_tag="busy"), incoming.source)
                assert (await alice.final(call)).status == 486
                await bob.next_request("ACK")
                # Cancelled by the caller while ringing.
                call = await alice.invite("bob")
                incoming = await bob.next_request("INVITE")
                await ring(alice, bob, call, incoming, "ring")
                await call.cancel()
                await ends_cancelled(bob, incoming, "ring")
                assert (await alice.final(call)).status == 487
                await bob.next_request("ACK")
                await trio.sleep(0.3)  # (the records are written, the tasks done)
                gc.collect()
                left = sorted({type(o).__name__ for o in garbage} & CALL_OBJECTS)
    assert left == []
