"""B2BUA behaviours through real sockets: bridging, forking, cancellation, re-INVITE
relay with the NAT fix, duration limits and lost retransmissions."""

from __future__ import annotations

import functools
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from engine import legs
from engine import server as server_module
from engine.config import ServerConfig
from engine.server import Server
from engine.storage import Store
from sip.message import Request, Response, make_cancel, make_response
from sip.transaction import TransactionLayer
from tests.calls.helpers import (
    Answered,
    Call,
    Incoming,
    Phone,
    ends_cancelled,
    phones,
    provision,
    raw_socket,
    ring,
    running_server,
    sdp,
    wait_rows,
)
from tests.conftest import free_port

DIAL_DST = 'sys.Dial("%s@local" % req.URI.User)\n'


@asynccontextmanager
async def _alice_calling_bob(tmp_path: Path) -> AsyncIterator[tuple[Server, Phone, Phone, Call, Incoming]]:
    """A server where alice's Out dialplan dials the called user, and alice's INVITE to
    bob as it reaches bob: (server, alice, bob, alice's call, the INVITE bob got)."""
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, "out"), "bob": (None, None)}, dialplans={"out": DIAL_DST})
        async with phones(server, "alice", "bob") as (alice, bob):
            call = await alice.invite("bob")
            yield server, alice, bob, call, await bob.next_request("INVITE")


async def test_out_dialplan_bridges_and_bye_crosses(tmp_path: Path) -> None:
    async with _alice_calling_bob(tmp_path) as (server, alice, bob, call, incoming):
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
            server, "SELECT leg, bridge_id, hungup_at, answered_at, status, reason FROM cdrs "
            "WHERE hungup_at IS NOT NULL", 2
        )
        assert {r[0] for r in cdrs} == {"caller", "callee"}
        assert [(r[4], r[5]) for r in cdrs] == [(200, "OK"), (200, "OK")]
        assert len({r[1] for r in cdrs}) == 1 and cdrs[0][1]


def _c_line(body: bytes) -> str:
    return next(line for line in body.decode().splitlines() if line.startswith("c="))


async def test_parallel_fork_first_answer_wins_and_others_are_cancelled(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": ("in", None), "b1": (None, None), "b2": (None, None)},
                  dialplans={"in": 'sys.Dial("b1@local&b2@local")\n'})
        async with phones(server, "b1", "b2", "carol@example.com") as (b1, b2, carol):
            call = await carol.invite("alice", authenticate=False)
            first = await b1.next_request("INVITE")
            second = await b2.next_request("INVITE")
            await b1.answer(first)
            assert (await carol.final(call)).status == 200
            await ends_cancelled(b2, second, "x")
            await b1.next_request("ACK")


async def test_the_callers_cancel_stops_the_dialplan_and_every_leg(tmp_path: Path) -> None:
    # A Dial ringing two phones, a log line after it that must never run.
    source = 'sys.Dial("b1@local&b2@local")\nsys.Log("after the dial")\n'
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": ("in", None), "b1": (None, None), "b2": (None, None)},
                  dialplans={"in": source})
        async with phones(server, "b1", "b2", "carol@example.com") as (b1, b2, carol):
            call = await carol.invite("alice", authenticate=False)
            rings = [await b1.next_request("INVITE"), await b2.next_request("INVITE")]
            for phone, ring in zip((b1, b2), rings, strict=True):
                await phone.send(phone.reply(ring, 180, to_tag="r"), ring.source)
            await carol.next_response(call_id=call.call_id)  # a 180 reached the caller
            await call.cancel()
            assert (await carol.final(call)).status == 487
            for phone, ring in zip((b1, b2), rings, strict=True):
                await ends_cancelled(phone, ring, "r")
                await phone.next_request("ACK")
        trace = await wait_rows(server, "SELECT text FROM traces", 1)
        assert "after the dial" not in trace[0][0]


async def test_a_bye_on_the_early_dialog_ends_the_call_like_a_cancel(tmp_path: Path) -> None:
    # RFC 3261 15: the caller may end an early dialog (one our 180 opened) with BYE
    # instead of CANCEL.  15.1.2: 200 to the BYE, 487 to the INVITE; the legs are
    # cancelled as for a CANCEL.
    async with _alice_calling_bob(tmp_path) as (server, alice, bob, call, incoming):
        call.final = await ring(alice, bob, call, incoming, "ringing")  # the BYE goes in its early dialog
        await alice.send(call._in_dialog("BYE"))
        assert (await alice.next_response(call_id=call.call_id, method="BYE", final=True)).status == 200
        assert (await alice.final(call)).status == 487
        await ends_cancelled(bob, incoming, "ringing")
        await bob.next_request("ACK")
        rows = await wait_rows(server, "SELECT status, reason FROM cdrs WHERE leg = 'caller'", 1)
        assert rows == [(487, "Request Terminated")]
        assert not server.calls.early_dialogs
        # Once the INVITE has its final answer, the early dialog is gone: 481.
        await alice.send(call._in_dialog("BYE"))
        assert (await alice.next_response(call_id=call.call_id, method="BYE", final=True)).status == 481


async def test_an_info_on_the_early_dialog_gets_405_and_the_call_rings_on(tmp_path: Path) -> None:
    # A caller's INFO (DTMF for a callee's early-media prompt) before the answer is not
    # relayed.  It must not draw a 481, which tells the caller the dialog is gone
    # (RFC 3261 12.2.1.2): 405 with what is allowed, and the call goes on.
    async with _alice_calling_bob(tmp_path) as (server, alice, bob, call, incoming):
        call.final = await ring(alice, bob, call, incoming, "ringing")
        refused = await call.send_in_dialog("INFO", b"Signal=5\r\nDuration=160\r\n",
                                            content_type="application/dtmf-relay")
        assert (refused.status, refused.reason) == (405, "Method Not Allowed (not before the call is answered)")
        assert refused.headers.get_all("Allow") == ["ACK", "BYE", "CANCEL"]
        await bob.no_request("INFO", 0.3)
        await bob.answer(incoming)
        assert (await alice.final(call)).status == 200


async def test_a_cancel_read_together_with_the_callees_2xx_hangs_the_callee_up(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The callee answers as the caller gives up, and the server reads both datagrams
    # in one go, before the dialplan's task can bridge the call: the caller has its
    # 487 by then, so the answered callee is ACKed and hung up, not left in a call
    # nobody is in.
    async with _alice_calling_bob(tmp_path) as (server, alice, bob, call, incoming):
        await ring(alice, bob, call, incoming, "t")
        ok = bob.reply(incoming, 200, to_tag="t", body=sdp("127.0.0.1", 41000))
        # Sent without a checkpoint between them: both wait in the server's socket.
        with raw_socket(bob) as b, raw_socket(alice) as a:
            b.sendto(ok.to_bytes(), incoming.source)
            a.sendto(make_cancel(call.invite).to_bytes(), alice.server)
        assert (await alice.final(call)).status == 487
        await bob.next_request("ACK")
        bye = await bob.next_request("BYE")
        assert bye.request.call_id == incoming.request.call_id
        await bob.send(bob.reply(bye, 200), bye.source)
        rows = await wait_rows(server, "SELECT leg, status, hangup_reason FROM cdrs ORDER BY leg", 2)
        assert rows == [("callee", 200, "Answered after the call was cancelled (server)"), ("caller", 487, None)]
        assert not server.calls.bridges and not server.calls.dialogs
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_a_callee_answering_and_hanging_up_at_once_is_relayed_as_such(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The callee's 2xx and its BYE are read in one go, before the dialplan's task has
    # bridged the call: the BYE waits for the bridge (it used to get 481, and the
    # caller stayed in a call with nobody), so the caller gets the answer, then a BYE.
    async with _alice_calling_bob(tmp_path) as (server, alice, bob, call, incoming):
        ok = bob.reply(incoming, 200, to_tag="t", body=sdp("127.0.0.1", 41000))
        callee = Answered(phone=bob, invite=incoming.request, ok=ok, peer=incoming.source, local_tag="t")
        with raw_socket(bob) as b:
            b.sendto(ok.to_bytes(), incoming.source)
            b.sendto(callee.request("BYE").to_bytes(), incoming.source)
        assert (await bob.next_response(call_id=incoming.request.call_id, method="BYE", final=True)).status == 200
        assert (await alice.final(call)).status == 200
        bye = await alice.next_request("BYE")
        assert bye.request.call_id == call.call_id
        await alice.send(alice.reply(bye, 200), bye.source)
        await bob.no_request("BYE", 0.3)
        rows = await wait_rows(server, "SELECT leg, status, hangup_reason FROM cdrs ORDER BY leg", 2)
        assert rows == [("callee", 200, "BYE from callee"), ("caller", 200, "BYE from callee")]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_a_callee_bye_read_with_its_2xx_and_the_callers_cancel_gets_200(tmp_path: Path) -> None:
    # All three at once: the caller has its 487, the callee's BYE its 200, and no BYE
    # of ours follows (the callee ended its dialog itself).
    async with _alice_calling_bob(tmp_path) as (server, alice, bob, call, incoming):
        ok = bob.reply(incoming, 200, to_tag="t", body=sdp("127.0.0.1", 41000))
        callee = Answered(phone=bob, invite=incoming.request, ok=ok, peer=incoming.source, local_tag="t")
        with raw_socket(bob) as b, raw_socket(alice) as a:
            b.sendto(ok.to_bytes(), incoming.source)
            b.sendto(callee.request("BYE").to_bytes(), incoming.source)
            a.sendto(make_cancel(call.invite).to_bytes(), alice.server)
        assert (await alice.final(call)).status == 487
        assert (await bob.next_response(call_id=incoming.request.call_id, method="BYE", final=True)).status == 200
        await bob.no_request("BYE", 0.5)


async def test_late_2xx_is_acknowledged_and_hung_up(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": ("in", None), "b1": (None, None), "b2": (None, None)},
                  dialplans={"in": 'sys.Dial("b1@local&b2@local")\n'})
        async with phones(server, "b1", "b2", "carol@example.com") as (b1, b2, carol):
            call = await carol.invite("alice", authenticate=False)
            first = await b1.next_request("INVITE")
            second = await b2.next_request("INVITE")
            await b1.answer(first, ring=False)
            assert (await carol.final(call)).status == 200
            await b2.answer(second, ring=False)  # crosses our CANCEL
            ack = await b2.next_request("ACK")
            bye = await b2.next_request("BYE")
            assert ack.request.call_id == bye.request.call_id == second.request.call_id
            # RFC 3326: a Reason a callee can parse, saying why.
            assert bye.request.headers.get("Reason") == 'SIP;cause=200;text="Call completed elsewhere"'
            # The caller's call is untouched.
            await b1.next_request("ACK")
            await carol.no_request("BYE", 0.5)


async def test_sequential_groups_and_delayed_leg(tmp_path: Path) -> None:
    # The whole test, server shutdown included, is bounded: the execution ends just as
    # the server stops, and its trace write must not hold the shutdown up.
    with trio.fail_after(8):
        await _sequential_groups_and_delayed_leg(tmp_path)


async def _sequential_groups_and_delayed_leg(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": ("in", None), "b1": (None, None), "b2": (None, None),
                                    "b3": (None, None)},
                  dialplans={"in": 'sys.Dial("b1@local|b2@local&b3@local[dt=1]")\n'})
        async with phones(server, "b1", "b2", "b3", "carol@example.com") as (b1, b2, b3, carol):
            call = await carol.invite("alice", authenticate=False)
            first = await b1.next_request("INVITE")
            await b2.no_request("INVITE", 0.3)  # the second group waits for the first
            await b1.send(b1.reply(first, 486, to_tag="busy"), first.source)
            await b2.next_request("INVITE")
            started = trio.current_time()
            late = await b3.next_request("INVITE", within=3)
            assert 0.8 <= trio.current_time() - started <= 2.0  # dt=1
            await b3.answer(late)
            assert (await carol.final(call)).status == 200
            await b2.next_request("CANCEL")


async def test_early_media_is_relayed_with_the_nat_fix(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": ("in", None), "bob": (None, None)},
                  dialplans={"in": 'sys.Dial("bob@local")\n'})
        async with phones(server, "bob", "carol@example.com") as (bob, carol):
            call = await carol.invite("alice", authenticate=False, body=sdp("192.168.1.20", 40000))
            incoming = await bob.next_request("INVITE")
            # The caller's private offer reaches the callee as the address it came from.
            assert _c_line(incoming.request.body) == "c=IN IP4 127.0.0.1"
            await bob.send(bob.reply(incoming, 183, to_tag="em", body=sdp("10.1.2.3", 42000)), incoming.source)
            early = await carol.next_response(call_id=call.call_id)
            while early.status == 100:
                early = await carol.next_response(call_id=call.call_id)
            assert early.status == 183
            assert _c_line(early.body) == "c=IN IP4 127.0.0.1" and b"m=audio 42000" in early.body
            await bob.send(bob.reply(incoming, 180, to_tag="em"), incoming.source)
            assert (await carol.next_response(call_id=call.call_id)).status == 180
            # The caller gives up: 487 to the caller, CANCEL to the callee.
            await call.cancel()
            assert (await carol.final(call)).status == 487
            cancel = await bob.next_request("CANCEL")
            assert cancel.request.call_id == incoming.request.call_id


@asynccontextmanager
async def _bridged_from_private_addresses(tmp_path: Path) -> AsyncIterator[tuple[Phone, Phone, Call, Answered, Server]]:
    """carol (outside, offering from 192.168.1.20) calls alice, whose In dialplan dials
    bob (answering from 10.9.8.7); the call is up: (bob, carol, carol's call, bob's side,
    the server)."""
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": ("in", None), "bob": (None, None)},
                  dialplans={"in": 'sys.Dial("bob@local")\n'})
        async with phones(server, "bob", "carol@example.com") as (bob, carol):
            call = await carol.invite("alice", authenticate=False, body=sdp("192.168.1.20", 40000))
            incoming = await bob.next_request("INVITE")
            callee = await bob.answer(incoming, body=sdp("10.9.8.7", 41000))
            ok = await carol.final(call)
            assert _c_line(ok.body) == "c=IN IP4 127.0.0.1"
            await bob.next_request("ACK")
            yield bob, carol, call, callee, server


async def test_reinvite_relayed_with_private_addresses_replaced(tmp_path: Path) -> None:
    async with _bridged_from_private_addresses(tmp_path) as (bob, carol, call, callee, _):
        # The caller re-offers (hold, a new port) from a private address again.
        reoffer_task_result: list[bytes] = []

        async def callee_answers() -> None:
            re = await bob.next_request("INVITE")
            reoffer_task_result.append(re.request.body)
            await bob.send(bob.reply(re, 200, to_tag=callee.local_tag, body=sdp("10.9.8.7", 41002)), re.source)
            await bob.next_request("ACK")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(callee_answers)
            answer = await call.reinvite(sdp("172.16.0.9", 40002))
        assert answer.status == 200
        relayed = reoffer_task_result[0]
        assert isinstance(relayed, bytes)
        assert _c_line(relayed) == "c=IN IP4 127.0.0.1" and b"m=audio 40002" in relayed
        assert _c_line(answer.body) == "c=IN IP4 127.0.0.1" and b"m=audio 41002" in answer.body
        # And the callee's re-offer travels the other way.
        async def caller_answers() -> None:
            re = await carol.next_request("INVITE")
            reoffer_task_result.append(re.request.body)
            await carol.send(carol.reply(re, 200, body=sdp("192.168.7.7", 40004)), re.source)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller_answers)
            back = await callee.reinvite(sdp("10.9.8.7", 41004))
        assert back.status == 200
        assert _c_line(reoffer_task_result[1]) == "c=IN IP4 127.0.0.1"
        assert _c_line(back.body) == "c=IN IP4 127.0.0.1"


async def test_a_late_offer_reinvite_gets_its_answer_from_the_senders_ack(tmp_path: Path) -> None:
    # A re-INVITE without SDP (a session refresh, some PBXs' resume): the other side's
    # 2xx carries the offer, and our ACK to it carries the answer from the sender's ACK.
    async with _bridged_from_private_addresses(tmp_path) as (bob, carol, call, callee, _):
        reinvite = call._in_dialog("INVITE")
        await carol.send(reinvite)
        relayed = await bob.next_request("INVITE")
        assert relayed.request.body == b""
        await bob.send(bob.reply(relayed, 200, to_tag=callee.local_tag, body=sdp("10.9.8.7", 41008)), relayed.source)
        offer = await carol.next_response(call_id=call.call_id, final=True)
        assert offer.status == 200 and b"m=audio 41008" in offer.body
        assert _c_line(offer.body) == "c=IN IP4 127.0.0.1"
        await bob.no_request("ACK", 0.3)  # not before the answer is known
        await carol.send(call._in_dialog("ACK", cseq=reinvite.cseq.number, body=sdp("192.168.1.20", 40008)))
        ack = await bob.next_request("ACK")
        assert ack.request.cseq.number == relayed.request.cseq.number
        assert b"m=audio 40008" in ack.request.body and _c_line(ack.request.body) == "c=IN IP4 127.0.0.1"


@pytest.fixture
def short_transactions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's transaction clock shortened: T1 = 50 ms (Timer M, 64*T1, is 3.2 s)."""
    monkeypatch.setattr(server_module, "TransactionLayer", functools.partial(TransactionLayer, t1=0.05, t2=0.4))


@pytest.mark.usefixtures("short_transactions")
async def test_a_reinvite_2xx_resent_after_its_transaction_gets_the_same_ack(tmp_path: Path) -> None:
    # RFC 3261 13.2.2.4: each retransmission of a 2xx gets the ACK again, also once the
    # re-INVITE's client transaction has ended (RFC 6026 Timer M): the re-INVITE's CSeq,
    # not the call's first INVITE's, and after a late offer the answer the ACK carried.
    async with _bridged_from_private_addresses(tmp_path) as (bob, carol, call, callee, server):
        reinvite = call._in_dialog("INVITE")
        await carol.send(reinvite)
        relayed = await bob.next_request("INVITE")
        ok = bob.reply(relayed, 200, to_tag=callee.local_tag, body=sdp("10.9.8.7", 41008))
        await bob.send(ok, relayed.source)
        await carol.next_response(call_id=call.call_id, final=True)
        await carol.send(call._in_dialog("ACK", cseq=reinvite.cseq.number, body=sdp("192.168.1.20", 40008)))
        first = await bob.next_request("ACK")
        assert first.request.cseq.number == relayed.request.cseq.number and b"m=audio 40008" in first.request.body
        await bob.send(ok, relayed.source)  # while the transaction lasts
        assert (await bob.next_request("ACK")).request == first.request
        with trio.fail_after(8):
            while server.endpoint.layer.statistics()["client_transactions"]:  # noqa: ASYNC110 - Timer M
                await trio.sleep(0.1)
        await bob.send(ok, relayed.source)
        again = await bob.next_request("ACK")  # after it
        assert again.request == first.request


async def test_crossing_and_overlapping_reinvites_get_491_and_500(tmp_path: Path) -> None:
    # RFC 3261 14.2, as the UAS of each side's dialog: an INVITE from a side to which
    # our own (relayed) re-INVITE is still pending is glare (491); a second INVITE from
    # a side whose previous one we have not answered gets 500 with Retry-After.
    async with _bridged_from_private_addresses(tmp_path) as (bob, carol, call, callee, _):
        reinvite = call._in_dialog("INVITE", body=sdp("192.168.1.20", 40002))
        await carol.send(reinvite)
        relayed = await bob.next_request("INVITE")  # pending at bob
        crossing = callee.request("INVITE", body=sdp("10.9.8.7", 41004))
        await bob.send(crossing, callee.peer)
        glare = await bob.next_response(call_id=callee.invite.call_id, final=True)
        assert (glare.status, glare.cseq.number) == (491, crossing.cseq.number)
        again = call._in_dialog("INVITE", body=sdp("192.168.1.20", 40004))
        await carol.send(again)
        overlap = await carol.next_response(call_id=call.call_id, final=True)
        assert (overlap.status, overlap.cseq.number) == (500, again.cseq.number)
        assert 0 <= int(overlap.headers.get("Retry-After") or "-1") <= 10
        await carol.no_request("INVITE", 0.3)  # neither was relayed
        # The first re-INVITE completes as usual; then bob's retry goes through.
        await bob.send(bob.reply(relayed, 200, to_tag=callee.local_tag, body=sdp("10.9.8.7", 41002)), relayed.source)
        ok = await carol.next_response(call_id=call.call_id, final=True)
        assert (ok.status, ok.cseq.number) == (200, reinvite.cseq.number)
        await carol.send(call._in_dialog("ACK", cseq=reinvite.cseq.number))
        await bob.next_request("ACK")
        retry = callee.request("INVITE", body=sdp("10.9.8.7", 41006))
        await bob.send(retry, callee.peer)
        assert (await carol.next_request("INVITE")).request.body


async def test_a_reinvite_pending_when_the_call_ends_gets_487(tmp_path: Path) -> None:
    # RFC 3261 15.1.2: the bridge's end answers a re-INVITE still pending (487), rather
    # than leave the sender to time out; a late 2xx to the relayed copy is still ACKed.
    async with _bridged_from_private_addresses(tmp_path) as (bob, carol, call, callee, _):
        theirs = callee.request("INVITE", body=sdp("10.9.8.7", 41004))
        await bob.send(theirs, callee.peer)
        relayed = await carol.next_request("INVITE")
        assert (await call.bye()).status == 200
        await callee.ok_to(await bob.next_request("BYE"))
        ended = await bob.next_response(call_id=callee.invite.call_id, final=True, within=2)
        assert (ended.status, ended.cseq.number) == (487, theirs.cseq.number)
        late = carol.reply(relayed, 200, body=sdp("192.168.1.20", 40006))
        await carol.send(late, relayed.source)
        ack = await carol.next_request("ACK")
        assert ack.request.cseq.number == relayed.request.cseq.number
        await bob.no_request("ACK", 0.3)


async def test_update_and_info_cross_the_bridge_both_ways(tmp_path: Path) -> None:
    async with _bridged_from_private_addresses(tmp_path) as (bob, carol, call, callee, _):
        seen: list[Request] = []

        # RFC 3311 UPDATE from the caller: a new offer from a private address, fixed
        # on the way in, and the callee's answer fixed on the way back.
        async def callee_answers_update() -> None:
            update = await bob.next_request("UPDATE")
            seen.append(update.request)
            await bob.send(bob.reply(update, 200, to_tag=callee.local_tag, body=sdp("10.9.8.7", 41006)),
                           update.source)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(callee_answers_update)
            answer = await call.send_in_dialog("UPDATE", sdp("172.16.0.9", 40006))
        assert answer.status == 200
        assert _c_line(seen[0].body) == "c=IN IP4 127.0.0.1" and b"m=audio 40006" in seen[0].body
        assert _c_line(answer.body) == "c=IN IP4 127.0.0.1" and b"m=audio 41006" in answer.body
        assert answer.headers.get("Content-Type") == "application/sdp"
        assert call.final is not None  # the 2xx to an UPDATE names our side, not bob (RFC 3311 5.2)
        assert str(answer.contacts[0].uri) == str(call.final.contacts[0].uri)

        # RFC 6086 INFO from the callee (DTMF): the body, its type and the Info-Package
        # header arrive unchanged, and the caller's answer comes back.
        async def caller_answers_info() -> None:
            info = await carol.next_request("INFO")
            seen.append(info.request)
            await carol.send(carol.reply(info, 200), info.source)

        dtmf = b"Signal=5\r\nDuration=160\r\n"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller_answers_info)
            done = await callee.send_in_dialog("INFO", dtmf, content_type="application/dtmf-relay",
                                               headers=[("Info-Package", "dtmf")])
        assert done.status == 200
        info = seen[1]
        assert info.body == dtmf
        assert info.headers.get("Content-Type") == "application/dtmf-relay"
        assert info.headers.get("Info-Package") == "dtmf"
        assert info.call_id == call.call_id and info.from_.tag == (call.final.to.tag if call.final else None)

        # A body that is not a session description is never rewritten, even when it
        # reads like one and names a private address.
        text = sdp("192.168.1.5", 5000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller_answers_info)
            done = await callee.send_in_dialog("INFO", text, content_type="text/plain")
        assert done.status == 200
        assert seen[2].body == text and seen[2].headers.get("Content-Type") == "text/plain"


async def test_a_transfer_by_refer_is_refused_and_the_call_goes_on(tmp_path: Path) -> None:
    async with _alice_calling_bob(tmp_path) as (server, alice, bob, call, incoming):
        callee = await bob.answer(incoming)
        ok = await alice.final(call)
        assert ok.status == 200
        await bob.next_request("ACK")
        # Both parties learn what the dialog takes, from our INVITE and our 2xx.
        allowed = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"
        assert incoming.request.headers.lines("Allow") == [allowed]
        assert ok.headers.lines("Allow") == [allowed]
        refused = await callee.send_in_dialog("REFER", headers=[
            ("Refer-To", "<sip:1900555@example.com>"), ("Referred-By", "<sip:bob@127.0.0.1>")], content_type="")
        assert (refused.status, refused.reason) == (405, "Method Not Allowed (call transfer by REFER is not supported)")
        assert refused.headers.lines("Allow") == [allowed]
        await alice.no_request("REFER", 0.5)
        # The call is still up: a BYE from alice still reaches bob.
        assert (await call.bye()).status == 200
        await callee.ok_to(await bob.next_request("BYE"))


async def test_a_request_in_a_call_requiring_an_extension_gets_420_and_is_not_relayed(tmp_path: Path) -> None:
    # RFC 3261 8.2.2.3 holds inside a dialog too: the relayed copy would drop the
    # Require, and the other party would act on a request it was not meant to take.
    async with _alice_calling_bob(tmp_path) as (server, alice, bob, call, incoming):
        callee = await bob.answer(incoming)
        assert (await alice.final(call)).status == 200
        await bob.next_request("ACK")
        reinvite = callee.request("INVITE", body=sdp("127.0.0.1", 41002), extra=[("Require", "100rel")])
        await bob.send(reinvite, callee.peer)
        refused = await bob.next_response(call_id=callee.invite.call_id, final=True)
        assert (refused.status, refused.reason, refused.headers.get("Unsupported")) == (
            420, "Bad Extension: 100rel", "100rel")
        update = await call.send_in_dialog("UPDATE", sdp("127.0.0.1", 40002), headers=[("Require", "timer")])
        assert (update.status, update.headers.get("Unsupported")) == (420, "timer")
        await alice.no_request("INVITE", 0.3)
        await bob.no_request("UPDATE", 0.3)
        # The call is unharmed.
        assert (await call.bye()).status == 200
        await callee.ok_to(await bob.next_request("BYE"))


async def test_call_duration_limit_hangs_up_both_sides(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": ("in", None), "bob": (None, None)},
                  dialplans={"in": 'sys.Dial("bob@local[cd=1]")\n'})
        async with phones(server, "bob", "carol@example.com") as (bob, carol):
            call = await carol.invite("alice", authenticate=False)
            await bob.answer(await bob.next_request("INVITE"))
            assert (await carol.final(call)).status == 200
            answered = trio.current_time()
            bye_callee = await bob.next_request("BYE", within=4)
            bye_caller = await carol.next_request("BYE", within=4)
            assert 0.8 <= trio.current_time() - answered <= 3
            assert bye_callee.request.call_id != bye_caller.request.call_id
            rows_ = await wait_rows(server, "SELECT hangup_reason FROM cdrs WHERE hungup_at IS NOT NULL", 2)
            assert all("duration limit" in r[0] for r in rows_)


def _alice_dials_bob(server: Server) -> None:
    provision(server, accounts={"alice": ("in", None), "bob": (None, None)},
              dialplans={"in": 'sys.Dial("bob@local")\n'})


async def _carol_calls_bob_via_alice(bob: Phone, carol: Phone) -> tuple[Call, Incoming]:
    """carol calls alice (see _alice_dials_bob) and will not ACK by herself."""
    carol.auto_ack = False
    call = await carol.invite("alice", authenticate=False)
    return call, await bob.next_request("INVITE")


async def test_lost_2xx_and_lost_ack_still_establish_the_call(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        _alice_dials_bob(server)
        async with phones(server, "bob", "carol@example.com") as (bob, carol):
            call, incoming = await _carol_calls_bob_via_alice(bob, carol)
            callee = await bob.answer(incoming)
            # The callee's 200 was "lost" on its way back to the callee's view: it
            # retransmits, and we must ACK again.
            first_ack = await bob.next_request("ACK")
            await bob.send(callee.ok, incoming.source)
            # RFC 3261 13.2.2.4: the same ACK again, not an equivalent one.
            assert (await bob.next_request("ACK", within=3)).request == first_ack.request
            # The caller ignores our first 200 (it was lost): we retransmit it.
            first = await carol.final(call)
            assert first.status == 200
            again = await carol.next_response(call_id=call.call_id, final=True, within=2)
            assert again.status == 200
            await call.ack(again)
            # Established: no BYE for a missing ACK, and a BYE crosses the bridge.
            await bob.no_request("BYE", 1.5)
            assert (await call.bye()).status == 200
            await bob.next_request("BYE")


@asynccontextmanager
async def _answered(tmp_path: Path) -> AsyncIterator[tuple[Phone, Phone, Call, Incoming, Incoming]]:
    """alice's call to bob, answered and ACKed: (alice, bob, alice's call, the INVITE as
    bob got it, our ACK as bob got it)."""
    async with _alice_calling_bob(tmp_path) as (server, alice, bob, call, incoming):
        await bob.answer(incoming, ring=False)
        assert (await alice.final(call)).status == 200
        yield alice, bob, call, incoming, await bob.next_request("ACK")


async def test_a_second_dialog_answering_one_leg_is_acked_and_hung_up(tmp_path: Path) -> None:
    # A forking proxy beyond the callee may pass on 2xx from two of its branches for our
    # one INVITE (RFC 3261 13.2.2.4: each its own dialog).  The leg keeps the first: the
    # second gets its own ACK (its To tag) and a BYE, and a retransmission of it the same
    # ACK again and no second BYE; the call stays bridged to the first.
    async with _answered(tmp_path) as (alice, bob, call, incoming, first_ack):
        other = bob.reply(incoming, 200, to_tag="otherbranch", body=sdp("127.0.0.1", 41500))
        await bob.send(other, incoming.source)
        ack = await bob.next_request("ACK")
        assert ack.request.to.tag == "otherbranch" and ack.request.cseq.number == incoming.request.cseq.number
        assert ack.request.call_id == incoming.request.call_id and first_ack.request.to.tag != "otherbranch"
        bye = await bob.next_request("BYE")
        assert bye.request.to.tag == "otherbranch"
        assert bye.request.headers.get("Reason") == 'SIP;cause=200;text="Call completed elsewhere"'
        await bob.send(bob.reply(bye, 200), bye.source)
        await bob.send(other, incoming.source)
        assert (await bob.next_request("ACK")).request == ack.request
        await bob.no_request("BYE", 0.5)
        await alice.no_request("BYE", 0.1)
        assert (await call.bye()).status == 200  # the first dialog still carries the call
        assert (await bob.next_request("BYE")).request.to.tag == first_ack.request.to.tag


async def test_a_peer_inventing_dialogs_gets_a_bounded_number_of_byes(tmp_path: Path) -> None:
    async with _answered(tmp_path) as (_, bob, call, incoming, _):
        for n in range(legs.MAX_OTHER_ANSWERS + 4):
            await bob.send(bob.reply(incoming, 200, to_tag=f"made-up-{n}"), incoming.source)
        ended = set()
        for _ in range(legs.MAX_OTHER_ANSWERS):
            bye = await bob.next_request("BYE")
            ended.add(bye.request.to.tag)
            await bob.send(bob.reply(bye, 200), bye.source)
        assert ended == {f"made-up-{n}" for n in range(legs.MAX_OTHER_ANSWERS)}
        await bob.no_request("BYE", 0.5)
        assert (await call.bye()).status == 200


async def test_an_ended_call_answers_a_late_bye_and_refuses_the_rest_without_holding_the_call(
    tmp_path: Path,
) -> None:
    async with _alice_calling_bob(tmp_path) as (server, alice, bob, call, incoming):
        callee = await bob.answer(incoming)
        assert (await alice.final(call)).status == 200
        await bob.next_request("ACK")
        assert (await call.bye()).status == 200
        await callee.ok_to(await bob.next_request("BYE"))
        # Bob's own BYE crossed ours: it still gets its 200; a re-INVITE gets 481.
        assert (await callee.bye()).status == 200
        assert (await callee.reinvite(sdp("127.0.0.1", 41002))).status == 481
        # Only the two dialog keys are remembered, not the bridge and the call.
        engine = server.calls
        assert not engine.dialogs and not engine.bridges
        assert len(engine.ended_dialogs) == 2
        assert all(type(part) is str for key in engine.ended_dialogs for part in key)


async def test_a_request_for_a_dialog_we_never_had_gets_481(tmp_path: Path) -> None:
    # RFC 3261 12.2.2: whatever the method, a To tag that names no dialog of ours.
    async with _alice_calling_bob(tmp_path) as (server, alice, bob, call, incoming):
        await bob.answer(incoming)
        assert (await alice.final(call)).status == 200
        for method in ("INVITE", "OPTIONS", "MESSAGE", "REFER", "FOO", "INFO"):
            request = call._in_dialog(method, body=sdp("127.0.0.1", 40002) if method == "INVITE" else b"")
            if method == "INFO":  # a body of any type: still 481, not 415
                request = call._in_dialog(method, body=b"Signal=5\r\n", content_type="application/dtmf-relay")
            request = request.replace(headers=request.headers.with_replaced("Call-ID", "gone@example.com"))
            await alice.send(request)
            answer = await alice.next_response(call_id="gone@example.com", method=method, final=True)
            assert (answer.status, answer.reason) == (481, "No such call or dialog"), method
        await bob.no_request("INVITE", 0.3)


async def test_a_redirection_reaches_the_caller_with_every_contact_it_named(tmp_path: Path) -> None:
    # The callee's 302 is the Dial's failure, so it is the caller's answer: with the
    # Contacts of the 3xx (RFC 3261 16.7 step 6), without which a 302 says nothing.
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, "out"), "bob": (None, None)},
                  dialplans={"out": 'sys.Dial("bob@local")\nsys.Log("dial: %s" % sys.LastFailureStatus)\n'})
        async with phones(server, "alice", "bob", "bob") as (alice, bob1, bob2):
            call = await alice.invite("bob")
            first = await bob1.next_request("INVITE")
            second = await bob2.next_request("INVITE")
            await bob1.send(make_response(first.request, 302, None, to_tag="r1",
                                          headers=[("Contact", "<sip:carol@198.51.100.7>;q=0.5")]), first.source)
            await bob2.send(make_response(second.request, 486, None, to_tag="b2"), second.source)
            final = await alice.final(call)
            assert (final.status, final.reason) == (302, "Moved Temporarily")
            assert final.headers.lines("Contact") == ["<sip:carol@198.51.100.7>;q=0.5"]
        trace = await wait_rows(server, "SELECT text FROM traces", 1)
        assert "DialPlan=> dial: 302" in trace[0][0]


async def test_a_call_nobody_answers_writes_both_records_and_keeps_none_open(tmp_path: Path) -> None:
    async with _alice_calling_bob(tmp_path) as (server, alice, bob, call, incoming):
        await bob.send(bob.reply(incoming, 486, to_tag="busy"), incoming.source)
        assert (await alice.final(call)).status == 486
        rows = await wait_rows(server, "SELECT leg, status, bridge_id, hungup_at, reason FROM cdrs ORDER BY leg", 2)
        assert [(r[0], r[1], r[2]) for r in rows] == [("callee", 486, None), ("caller", 486, None)]
        assert [r[4] for r in rows] == ["Busy Here", "Busy Here"]  # the callee's words, passed on
        assert all(r[3] is not None for r in rows)
        # Nothing about the finished call is left in memory.
        assert server.runner.records._open == {}


@pytest.fixture
def short_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 2xx retransmission clock shortened: T1 = 50 ms, T2 = 400 ms (64*T1 = 3.2 s)."""
    monkeypatch.setattr(legs, "T1", 0.05)
    monkeypatch.setattr(legs, "T2", 0.4)


@pytest.mark.usefixtures("short_timers")
async def test_a_caller_that_never_acks_gets_the_2xx_again_then_both_sides_a_bye(tmp_path: Path) -> None:
    # 13.3.1.4 on a shorter clock: 200 resent at T1, 2*T1, 4*T1 (up to T2), BYE at 64*T1.
    async with running_server(tmp_path) as server:
        _alice_dials_bob(server)
        async with phones(server, "bob", "carol@example.com") as (bob, carol):
            call, incoming = await _carol_calls_bob_via_alice(bob, carol)
            await bob.answer(incoming)
            started = trio.current_time()
            assert (await carol.final(call)).status == 200
            resent = 0
            with trio.move_on_after(2.5):
                while True:
                    again = await carol.next_response(call_id=call.call_id, final=True, within=3)
                    assert again.status == 200
                    resent += 1
            assert 4 <= resent <= 12  # 0.05, 0.1, 0.2, 0.4, 0.4 ... s apart
            bye = await carol.next_request("BYE", within=3)
            assert 3.2 <= trio.current_time() - started <= 4.5
            assert bye.request.call_id == call.call_id
            await bob.next_request("BYE")
            assert len(server.calls.unacked_answers) == 0


async def _answered_unacked(alice: Phone, bob: Phone, call: Call, incoming: Incoming) -> tuple[Answered, Response]:
    """bob answers (and gets our ACK); alice gets our 2xx and does not ACK it yet:
    (bob's side of the call, the 2xx alice holds)."""
    alice.auto_ack = False
    callee = await bob.answer(incoming)
    await bob.next_request("ACK")
    ok = await alice.final(call)
    assert ok.status == 200
    return callee, ok


@pytest.mark.usefixtures("short_timers")
async def test_a_callee_hanging_up_before_the_callers_ack_gets_the_callers_bye_held_for_it(tmp_path: Path) -> None:
    # RFC 3261 15: we may not BYE the caller before it has ACKed our 2xx (a BYE that
    # overtook a lost 2xx would draw a 481 and leave the caller's phone in a call).
    async with _alice_calling_bob(tmp_path) as (server, alice, bob, call, incoming):
        callee, ok = await _answered_unacked(alice, bob, call, incoming)
        assert (await callee.bye()).status == 200
        await alice.no_request("BYE", 0.5)
        await call.ack(ok)
        bye = await alice.next_request("BYE")
        assert bye.request.call_id == call.call_id
        await alice.send(alice.reply(bye, 200), bye.source)
        # Its dialog then retires like any other.
        assert not server.calls.dialogs and len(server.calls.ended_dialogs) == 2


async def test_a_reinvite_before_the_callers_ack_gets_491(tmp_path: Path) -> None:
    # RFC 3261 14.1: no new INVITE may go to the caller while its own is in progress
    # (our 2xx not yet ACKed), so the callee's re-INVITE gets 491 and is tried later.
    async with _alice_calling_bob(tmp_path) as (server, alice, bob, call, incoming):
        callee, ok = await _answered_unacked(alice, bob, call, incoming)
        early = callee.request("INVITE", body=sdp("127.0.0.1", 41002))
        await bob.send(early, callee.peer)
        pending = await bob.next_response(call_id=callee.invite.call_id, final=True)
        assert (pending.status, pending.cseq.number) == (491, early.cseq.number)
        await alice.no_request("INVITE", 0.3)
        await call.ack(ok)
        (bridge,) = server.calls.bridges.values()
        with trio.fail_after(5):
            await bridge.caller.pending_ack.wait()  # the server has taken the ACK
        later = callee.request("INVITE", body=sdp("127.0.0.1", 41004))
        await bob.send(later, callee.peer)
        assert b"m=audio 41004" in (await alice.next_request("INVITE")).request.body


@pytest.mark.usefixtures("short_timers")
async def test_a_held_bye_goes_when_the_callers_ack_never_comes(tmp_path: Path) -> None:
    async with _alice_calling_bob(tmp_path) as (server, alice, bob, call, incoming):
        started = trio.current_time()
        callee, _ = await _answered_unacked(alice, bob, call, incoming)
        assert (await callee.bye()).status == 200
        # The 2xx is resent meanwhile; at 64*T1 the dialog is confirmed, and its BYE goes
        # (13.3.1.4), once.
        bye = await alice.next_request("BYE", within=5)
        assert 3.2 <= trio.current_time() - started <= 4.5
        assert bye.request.call_id == call.call_id
        await alice.send(alice.reply(bye, 200), bye.source)
        await bob.no_request("BYE", 0.5)
        assert len(server.calls.unacked_answers) == 0 and not server.calls.dialogs


async def test_a_binding_that_has_gone_fails_at_once(tmp_path: Path) -> None:
    # bob's phone registered, then went away without unregistering: the INVITE to its
    # binding draws an ICMP port unreachable, which ends the leg at once (RFC 3261
    # 18.4) instead of after Timer B's 32 s.
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": ("in", None), "bob": (None, None)},
                  dialplans={"in": 'sys.Dial("bob@local")\nsys.Log("dial: %s %s" % (sys.LastFailureStatus, sys.LastFailureReason))\n'})
        async with phones(server, "bob", "carol@example.com") as (bob, carol):
            bob.close()
            started = trio.current_time()
            call = await carol.invite("alice", authenticate=False)
            final = await carol.final(call, within=10)
            assert trio.current_time() - started < 3
            # The next hop was unavailable, not this server: 500, not 503 (RFC 3261
            # 16.7 step 6, 21.5.4); the script saw the 503 itself.
            assert (final.status, final.reason) == (500, "Next hop unavailable: Service Unavailable (ICMP: ECONNREFUSED)")
        trace = await wait_rows(server, "SELECT text FROM traces", 1)
        assert "DialPlan=> dial: 503 Service Unavailable (ICMP: ECONNREFUSED)" in trace[0][0]


async def test_a_phone_challenging_our_invite_fails_the_leg_with_a_403_to_the_caller(tmp_path: Path) -> None:
    # We hold no credentials for our own users' phones: a phone that challenges the
    # INVITE ends the leg at once, and the caller (who cannot answer the phone's
    # challenge either) gets a 403 that says why, with no challenge in it.
    async with _alice_calling_bob(tmp_path) as (server, alice, bob, call, incoming):
        await bob.send(bob.reply(incoming, 401, headers=[
            ("WWW-Authenticate", 'Digest realm="bob-phone", nonce="n0nce", algorithm=MD5')]), incoming.source)
        await bob.next_request("ACK")
        final = await alice.final(call)
        assert (final.status, final.reason) == (403, "Forbidden (authentication with the next hop failed: 401)")
        assert final.headers.get("WWW-Authenticate") is None
        await bob.no_request("INVITE", 1.0)


async def test_a_late_offer_gets_its_answer_from_the_callers_ack(tmp_path: Path) -> None:
    # RFC 3264 / RFC 3261 13.2.2.4: an INVITE without SDP; the callee's 2xx carries the
    # offer and the ACK must carry the answer.  The answer comes in the caller's ACK, so
    # the callee's ACK waits for it (NAT fix applied on the way).
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": ("in", None), "bob": (None, None)},
                  dialplans={"in": 'sys.Dial("bob@local")\n'})
        async with phones(server, "bob", "carol@example.com") as (bob, carol):
            carol.auto_ack = False
            call = await carol.invite("alice", authenticate=False, body=b"")
            incoming = await bob.next_request("INVITE")
            assert incoming.request.body == b""
            await bob.answer(incoming, body=sdp("10.9.8.7", 41000))
            ok = await carol.final(call)
            assert ok.status == 200 and _c_line(ok.body) == "c=IN IP4 127.0.0.1"  # the offer
            await bob.no_request("ACK", 0.3)  # not before the answer is known
            ack = call._in_dialog("ACK", cseq=call.invite.cseq.number, body=sdp("192.168.1.20", 40000))
            await carol.send(ack)
            got = await bob.next_request("ACK")
            assert got.request.headers.get("Content-Type") == "application/sdp"
            assert _c_line(got.request.body) == "c=IN IP4 127.0.0.1" and b"m=audio 40000" in got.request.body
            # Established: a BYE crosses as usual.
            assert (await call.bye()).status == 200
            await bob.next_request("BYE")


@pytest.mark.usefixtures("short_timers")
async def test_a_late_offer_the_caller_never_answers_is_acked_bare_then_hung_up(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        _alice_dials_bob(server)
        async with phones(server, "bob", "carol@example.com") as (bob, carol):
            carol.auto_ack = False
            call = await carol.invite("alice", authenticate=False, body=b"")
            incoming = await bob.next_request("INVITE")
            await bob.answer(incoming)
            assert (await carol.final(call)).status == 200
            # No ACK from carol, ever: at 64*T1 the callee's 2xx gets its ACK (without an
            # answer: none came), then a BYE; nothing was left waiting.
            ack = await bob.next_request("ACK", within=6)
            assert ack.request.body == b""
            bye = await bob.next_request("BYE", within=3)
            assert bye.request.call_id == incoming.request.call_id
            assert len(server.calls.unacked_answers) == 0


@asynccontextmanager
async def _stoppable_server(tmp_path: Path) -> AsyncIterator[tuple[Server, trio.CancelScope]]:
    """A server like running_server's (with its default stop grace of 1 s), and the
    scope that stops it alone, so that phones go on listening while it stops."""
    server = Server(ServerConfig(data_dir=tmp_path / "data", sip_host="127.0.0.1", sip_port=free_port(),
                                 http_port=free_port(socket.SOCK_STREAM), domain="127.0.0.1"))
    scope = trio.CancelScope()

    async def serve(*, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await server.run(task_status=task_status)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve)
            yield server, scope
            scope.cancel()
    finally:
        server.store.close()


async def test_a_stopping_server_ends_its_calls_and_keeps_their_records(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # SIGTERM with one call up and one ringing: while SIP still runs, the call up gets
    # a BYE on both sides, the ringing one a 503 (try another server) and a CANCEL to
    # its callee; new calls get 503 meanwhile.  The records the calls write on their way
    # out are committed before the store's writer stops, not failed.
    async with _stoppable_server(tmp_path) as (server, stop):
        provision(server, accounts={"alice": (None, "out"), "bob": (None, None), "carol": (None, None)},
                  dialplans={"out": DIAL_DST})
        async with phones(server, "alice", "bob", "carol") as (alice, bob, carol):
            up = await alice.invite("bob")
            callee = await bob.answer(await bob.next_request("INVITE"))
            assert (await alice.final(up)).status == 200
            await bob.next_request("ACK")
            ringing = await alice.invite("carol")
            incoming = await carol.next_request("INVITE")
            await ring(alice, carol, ringing, incoming, "ring")
            stop.cancel()
            refused = await alice.final(ringing)
            assert (refused.status, refused.reason) == (503, "Service Unavailable (server shutting down)")
            cancel = await carol.next_request("CANCEL")
            assert cancel.request.call_id == incoming.request.call_id
            for phone, call_id in ((alice, up.call_id), (bob, callee.invite.call_id)):
                bye = await phone.next_request("BYE")
                assert bye.request.call_id == call_id
    store = Store.open(tmp_path / "data")
    try:
        rows = store.query_all("SELECT to_uri, leg, status, reason, hangup_reason FROM cdrs WHERE leg = 'caller'")
    finally:
        store.close()
    assert sorted((r[2], r[3], r[4]) for r in rows) == [
        (200, "OK", "Server shutting down (server)"), (503, "Service Unavailable (server shutting down)", None)]
    assert not [r for r in caplog.records if "writer stopped" in r.getMessage()]


async def test_a_stopping_server_sends_the_bye_it_held_for_an_ack_that_did_not_come(tmp_path: Path) -> None:
    # The caller has our 2xx but has not ACKed it when the server stops: its BYE waits
    # for the ACK through the stop's grace, then goes anyway (no one will be left to
    # send it when the ACK comes).
    async with _stoppable_server(tmp_path) as (server, stop):
        provision(server, accounts={"alice": (None, "out"), "bob": (None, None)}, dialplans={"out": DIAL_DST})
        async with phones(server, "alice", "bob") as (alice, bob):
            call = await alice.invite("bob")
            callee, _ = await _answered_unacked(alice, bob, call, await bob.next_request("INVITE"))
            stop.cancel()
            assert (await bob.next_request("BYE")).request.call_id == callee.invite.call_id
            bye = await alice.next_request("BYE", within=3)
            assert bye.request.call_id == call.call_id
