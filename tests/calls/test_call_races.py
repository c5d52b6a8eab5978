"""Calls whose answer, hang-ups and cancellation come in every order, some of them in
the same instant (sent with no checkpoint between them, so that the server reads them
in one batch): whatever the order, each call ends cleanly on both sides.

The checks are the B2BUA's promises, not one expected flow: the caller gets a final
response; a callee whose 2xx was ACKed is sent a BYE or has its own BYE answered 200,
and so is a caller that got a 2xx; every BYE gets 200; nothing is left behind (calls,
bridges, early dialogs, open call records); nothing is logged as an error.  Seeded, so a
failure names the scenario that broke.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from engine.server import Server
from sip.message import make_cancel, new_tag
from tests.calls.helpers import Answered, Incoming, Phone, phones, provision, running_server, sdp

DIAL_DST = 'sys.Dial("%s@local" % req.URI.User)\n'


@dataclass
class Plan:
    ring: bool
    answer: float | None  # seconds after the INVITE reached the callee; None: never
    reject: bool  # the "answer" is a 486
    callee_bye: float | None  # after the answer; 0: sent with the 2xx, at once
    cancel: float | None  # seconds; 0 with answer 0: sent together with the 2xx
    caller_bye: float


@dataclass
class Outcome:
    caller_final: int | None = None
    caller_ended: bool = False
    callee_answered: bool = False
    callee_confirmed: bool = False  # the ACK of its 2xx came
    callee_final_sent: bool = False
    callee_ended: bool = False
    bye_statuses: list[int] = field(default_factory=list)


def _plan(rng: random.Random) -> Plan:
    plan = Plan(
        ring=rng.random() < 0.7,
        answer=rng.choice([None, 0.0, 0.0, 0.001, 0.003, 0.01]),
        reject=rng.random() < 0.15,
        callee_bye=rng.choice([None, None, 0.0, 0.0, 0.002]),
        cancel=rng.choice([None, None, 0.0, 0.0, 0.001, 0.003, 0.01]),
        caller_bye=rng.choice([0.0, 0.002, 0.02]),
    )
    if plan.answer is None and plan.cancel is None:
        plan.cancel = 0.02  # someone must act
    return plan


def _raw(phone: Phone) -> socket.socket:
    """The phone's socket, for sends with no checkpoint between them."""
    return socket.socket(fileno=os.dup(phone.sock.fileno()))


async def _one_call(plan: Plan, alice: Phone, bob: Phone) -> Outcome:
    out = Outcome()
    call = await alice.invite("bob")
    incoming = await bob.next_request("INVITE")
    tag = new_tag()
    ok = bob.reply(incoming, 200, to_tag=tag, body=sdp("127.0.0.1", 41000))
    callee = Answered(phone=bob, invite=incoming.request, ok=ok, peer=incoming.source, local_tag=tag)
    if plan.ring:
        await bob.send(bob.reply(incoming, 180, to_tag=tag), incoming.source)

    async def callee_acts() -> None:
        if plan.answer is None:
            return
        await trio.sleep(plan.answer)
        if plan.reject:
            out.callee_final_sent = True
            await bob.send(bob.reply(incoming, 486, to_tag=tag), incoming.source)
            return
        with _raw(bob) as raw:
            raw.sendto(ok.to_bytes(), incoming.source)
            out.callee_answered = out.callee_final_sent = True
            if plan.callee_bye == 0.0:
                raw.sendto(callee.request("BYE").to_bytes(), incoming.source)
        if plan.callee_bye:
            await trio.sleep(plan.callee_bye)
            await bob.send(callee.request("BYE"), incoming.source)

    async def caller_acts() -> None:
        if plan.cancel is None:
            return
        await trio.sleep(plan.cancel)
        with _raw(alice) as raw:
            raw.sendto(make_cancel(call.invite).to_bytes(), alice.server)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(callee_acts)
        nursery.start_soon(caller_acts)

    caller_bye_sent = False
    with trio.move_on_after(5):
        while True:
            for item in _take(bob.requests):
                await _callee_hears(item, bob, incoming, tag, plan, out)
            for response in _take(bob.responses):
                if (response.call_id == incoming.request.call_id and response.cseq.method == "BYE"
                        and response.status >= 200):
                    out.bye_statuses.append(response.status)
                    out.callee_ended = True
            for item in _take(alice.requests):
                assert item.request.method == "BYE", item.request.method
                await alice.send(alice.reply(item, 200), item.source)
                out.caller_ended = True
            for response in _take(alice.responses):
                if response.call_id != call.call_id or response.status < 200:
                    continue
                if response.cseq.method == "BYE":
                    out.bye_statuses.append(response.status)
                    out.caller_ended = True
                elif response.cseq.method == "INVITE" and response.cseq.number == call.invite.cseq.number:
                    out.caller_final = response.status
                    if response.status >= 300:
                        await alice._ack_error(call.invite, response)
                    else:
                        call.final = response
                        await call.ack(response)
            if out.caller_final == 200 and not out.caller_ended and not caller_bye_sent:
                caller_bye_sent = True
                await trio.sleep(plan.caller_bye)
                call.cseq = call.invite.cseq.number
                await alice.send(call._in_dialog("BYE"))
            if _settled(out):
                await trio.sleep(0.1)  # anything more would be a retransmission or a fault
                if not (bob.requests or alice.requests):
                    break
            await trio.sleep(0.005)
    return out


def _take(queue: list) -> list:  # type: ignore[type-arg]
    taken = list(queue)
    queue.clear()
    return taken


async def _callee_hears(item: Incoming, bob: Phone, incoming: Incoming, tag: str, plan: Plan, out: Outcome) -> None:
    method = item.request.method
    if method == "ACK":
        if out.callee_answered and item.request.cseq.number == incoming.request.cseq.number:
            out.callee_confirmed = True
    elif method == "CANCEL":
        await bob.send(bob.reply(item, 200), item.source)
        if not out.callee_final_sent:
            out.callee_final_sent = True
            await bob.send(bob.reply(incoming, 487, to_tag=tag), incoming.source)
    elif method == "BYE":
        await bob.send(bob.reply(item, 200), item.source)
        out.callee_ended = True
    else:
        raise AssertionError(f"the callee got {method}")


def _settled(out: Outcome) -> bool:
    return (
        out.caller_final is not None
        and (out.caller_final != 200 or out.caller_ended)
        and out.callee_final_sent
        and (not out.callee_confirmed or out.callee_ended)
    )


def _broken_promises(out: Outcome) -> list[str]:
    broken = []
    if out.caller_final is None:
        broken.append("the caller got no final response")
    if out.caller_final == 200 and not out.caller_ended:
        broken.append("the caller was answered and its call never ended")
    if out.callee_confirmed and not out.callee_ended:
        broken.append("the callee's answer was ACKed and its call never ended")
    if any(status != 200 for status in out.bye_statuses):
        broken.append(f"a BYE was answered {out.bye_statuses}")
    return broken


async def _clean(server: Server) -> tuple[int, ...]:
    with trio.move_on_after(5):
        while True:
            left = (len(server.calls.bridges), len(server.calls.calls), len(server.calls.early_dialogs),
                    len(server.runner.records._open))
            if left == (0, 0, 0, 0):
                break
            await trio.sleep(0.05)
    return left


async def test_calls_end_cleanly_whatever_the_order_of_answer_hang_ups_and_cancel(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(20261127)
    broken = []
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, "out"), "bob": (None, None)}, dialplans={"out": DIAL_DST})
        async with phones(server, "alice", "bob") as (alice, bob):
            for index in range(20):
                plan = _plan(rng)
                outcome = await _one_call(plan, alice, bob)
                if problems := _broken_promises(outcome):
                    broken.append((index, plan, outcome, problems))
            left = await _clean(server)
    assert not broken
    assert left == (0, 0, 0, 0)
    assert not [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
