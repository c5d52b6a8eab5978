"""Calls whose answers, hang-ups and cancellation come in every order, some of them in
the same instant (sent with no checkpoint between them, so that the server reads them
in one batch): whatever the order, each call ends cleanly on every side.  With one
callee, and with two rung in parallel (a fork: the first 2xx wins, the other is
cancelled, or hung up if its 2xx came too).

The checks are the B2BUA's promises, not one expected flow: the caller gets a final
response; a callee whose 2xx was ACKed is sent a BYE or has its own BYE answered 200,
and so is a caller that got a 2xx; every BYE gets 200; nothing is left behind (calls,
bridges, early dialogs, open call records); nothing is logged as an error.  Seeded, so a
failure names the scenario that broke.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from engine.server import Server
from sip.message import make_cancel, new_tag
from tests.calls.helpers import (
    Answered,
    Call,
    Incoming,
    Phone,
    phones,
    provision,
    raw_socket,
    running_server,
    sdp,
)


@dataclass
class CalleePlan:
    ring: bool
    answer: float | None  # seconds after the INVITE reached the callee; None: never
    reject: bool  # the "answer" is a 486
    bye: float | None  # after the answer; 0: sent with the 2xx, at once


@dataclass
class Plan:
    callees: list[CalleePlan]
    cancel: float | None  # seconds; 0 with an answer at 0: sent together with the 2xx
    caller_bye: float


@dataclass
class Callee:
    """One callee's INVITE and what became of it."""

    phone: Phone
    plan: CalleePlan
    incoming: Incoming
    tag: str = field(default_factory=new_tag)
    answered: bool = False
    confirmed: bool = False  # the ACK of its 2xx came
    final_sent: bool = False
    ended: bool = False

    def dialog(self) -> Answered:
        ok = self.phone.reply(self.incoming, 200, to_tag=self.tag, body=sdp("127.0.0.1", 41000))
        return Answered(phone=self.phone, invite=self.incoming.request, ok=ok, peer=self.incoming.source,
                        local_tag=self.tag)


@dataclass
class Outcome:
    caller_final: int | None = None
    caller_ended: bool = False
    bye_statuses: list[int] = field(default_factory=list)


def _plan(rng: random.Random, callees: int) -> Plan:
    plan = Plan(
        callees=[CalleePlan(
            ring=rng.random() < 0.7,
            answer=rng.choice([None, 0.0, 0.0, 0.001, 0.003, 0.01]),
            reject=rng.random() < 0.15,
            bye=rng.choice([None, None, 0.0, 0.0, 0.002]),
        ) for _ in range(callees)],
        cancel=rng.choice([None, None, 0.0, 0.0, 0.001, 0.003, 0.01]),
        caller_bye=rng.choice([0.0, 0.002, 0.02]),
    )
    if plan.cancel is None and all(c.answer is None or c.reject for c in plan.callees):
        plan.cancel = 0.02  # someone must end it
    return plan


async def _one_call(plan: Plan, alice: Phone, target: str, phones_: list[Phone]) -> tuple[Outcome, list[Callee]]:
    out = Outcome()
    call = await alice.invite(target)
    callees = [Callee(phone, callee_plan, await phone.next_request("INVITE"))
               for phone, callee_plan in zip(phones_, plan.callees, strict=True)]
    for callee in callees:
        if callee.plan.ring:
            await callee.phone.send(callee.phone.reply(callee.incoming, 180, to_tag=callee.tag), callee.incoming.source)

    async with trio.open_nursery() as nursery:
        for callee in callees:
            nursery.start_soon(_callee_acts, callee)
        nursery.start_soon(_caller_acts, plan, alice, call)

    caller_bye_sent = False
    with trio.move_on_after(5):
        while True:
            for callee in callees:
                await _callee_hears(callee, out)
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
            if _settled(out, callees):
                await trio.sleep(0.1)  # anything more would be a retransmission or a fault
                if not (alice.requests or any(c.phone.requests for c in callees)):
                    break
            await trio.sleep(0.005)
    return out, callees


async def _callee_acts(callee: Callee) -> None:
    plan, phone, incoming = callee.plan, callee.phone, callee.incoming
    if plan.answer is None:
        return
    await trio.sleep(plan.answer)
    if callee.final_sent:
        return  # (cancelled meanwhile)
    if plan.reject:
        callee.final_sent = True
        await phone.send(phone.reply(incoming, 486, to_tag=callee.tag), incoming.source)
        return
    dialog = callee.dialog()
    with raw_socket(phone) as raw:
        raw.sendto(dialog.ok.to_bytes(), incoming.source)
        callee.answered = callee.final_sent = True
        if plan.bye == 0.0:
            raw.sendto(dialog.request("BYE").to_bytes(), incoming.source)
    if plan.bye:
        await trio.sleep(plan.bye)
        await phone.send(dialog.request("BYE"), incoming.source)


async def _caller_acts(plan: Plan, alice: Phone, call: Call) -> None:
    if plan.cancel is None:
        return
    await trio.sleep(plan.cancel)
    with raw_socket(alice) as raw:
        raw.sendto(make_cancel(call.invite).to_bytes(), alice.server)


T = TypeVar("T")


def _take(queue: list[T]) -> list[T]:
    taken = list(queue)
    queue.clear()
    return taken


async def _callee_hears(callee: Callee, out: Outcome) -> None:
    phone, incoming = callee.phone, callee.incoming
    for item in _take(phone.requests):
        method = item.request.method
        if method == "ACK":
            if callee.answered and item.request.cseq.number == incoming.request.cseq.number:
                callee.confirmed = True
        elif method == "CANCEL":
            await phone.send(phone.reply(item, 200), item.source)
            if not callee.final_sent:
                callee.final_sent = True
                await phone.send(phone.reply(incoming, 487, to_tag=callee.tag), incoming.source)
        elif method == "BYE":
            await phone.send(phone.reply(item, 200), item.source)
            callee.ended = True
        else:
            raise AssertionError(f"a callee got {method}")
    for response in _take(phone.responses):
        if response.call_id == incoming.request.call_id and response.cseq.method == "BYE" and response.status >= 200:
            out.bye_statuses.append(response.status)
            callee.ended = True


def _settled(out: Outcome, callees: list[Callee]) -> bool:
    return (
        out.caller_final is not None
        and (out.caller_final != 200 or out.caller_ended)
        and all(c.final_sent and (not c.confirmed or c.ended) for c in callees)
    )


def _broken_promises(out: Outcome, callees: list[Callee]) -> list[str]:
    broken = []
    if out.caller_final is None:
        broken.append("the caller got no final response")
    if out.caller_final == 200 and not out.caller_ended:
        broken.append("the caller was answered and its call never ended")
    if any(c.confirmed and not c.ended for c in callees):
        broken.append("a callee's answer was ACKed and its call never ended")
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


@pytest.mark.parametrize("dial", ["bob@local", "b1@local&b2@local", "hop@local"])
async def test_calls_end_cleanly_whatever_the_order_of_answers_hang_ups_and_cancel(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, dial: str) -> None:
    # (hop@local: an account whose In dialplan dials bob, so that the call crosses the
    # server twice, a bridge on each side of the local hop.)
    rng = random.Random(20261127)
    users = ["bob"] if dial == "hop@local" else [target.split("@")[0] for target in dial.split("&")]
    broken = []
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, "out"), "hop": ("in", None), **{user: (None, None) for user in users}},
                  dialplans={"out": f'sys.Dial("{dial}")\n', "in": 'sys.Dial("bob@local")\n'})
        async with phones(server, "alice", *users) as (alice, *callee_phones):
            for index in range(20):
                plan = _plan(rng, len(users))
                outcome, callees = await _one_call(plan, alice, "anyone", callee_phones)
                if problems := _broken_promises(outcome, callees):
                    broken.append((index, plan, outcome, callees, problems))
            left = await _clean(server)
    assert not broken, "\n".join(f"call {index}: {plan}: {problems}" for index, plan, _, _, problems in broken)
    assert left == (0, 0, 0, 0)
    assert not [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
