"""A server of two SIP processes on one port (``sip_processes = 2``): the test runs the
primary in-process and the primary starts the second as a real process.  Every phone
here has a socket of its own, so the kernel spreads them over both processes; which
process answered a call shows in the mark of the To tag it gave the caller."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import trio

from engine.auth import LOCKOUT_REASON
from engine.calls import CONCURRENCY_REASON
from engine.server import Server
from sip.message import Request, make_response, mark_of, new_tag
from tests.callbacks import ua as callbacks
from tests.callbacks.test_google_voice import DIALPLAN as GOOGLE_VOICE_DIALPLAN
from tests.callbacks.test_google_voice import call_back, fake_voice_service
from tests.calls.helpers import (
    PASSWORD,
    Phone,
    phones,
    provision,
    registered,
    running_server,
    sdp,
    wait_rows,
)
from tests.integration.sipclient import TCPClient

CALLERS = 16  # with two processes, all on one side by chance: 2 in 2**16


def _process_of(tag: str | None) -> int:
    index = mark_of(tag or "")
    assert index is not None, f"unmarked tag {tag!r}"
    return index


async def _answered_calls(bob: Phone, callers: list[Phone]) -> list[int]:
    """Each caller calls bob in turn and bob answers; the process that carried each."""
    carried = []
    for caller in callers:
        call = await caller.invite("bob")
        await bob.answer(await bob.next_request("INVITE"))
        final = await caller.final(call)
        assert final.status == 200
        carried.append(_process_of(final.to.tag))
    return carried


async def _secondary_bound(server: Server) -> None:
    """Wait until the second process serves (the primary is ready before it is)."""
    assert server.secondaries is not None
    with trio.fail_after(20):
        while True:
            if server.secondaries.ready(1):
                return
            await trio.sleep(0.02)


async def test_calls_are_spread_over_both_processes_and_complete(tmp_path: Path) -> None:
    async with running_server(tmp_path, sip_processes=2) as server:
        await _secondary_bound(server)
        provision(server, accounts={"alice": (None, "out"), "bob": (None, None)},
                  dialplans={"out": 'sys.Log("to bob")\nsys.Dial("bob@local")\n'})
        async with phones(server, "bob", *["alice"] * CALLERS, register=False) as (bob, *callers):
            # A registration that reaches the second process is handed to the primary.
            assert (await bob.register()).status == 200
            await registered(server, "bob@127.0.0.1")
            await trio.sleep(0.2)  # the second process's copy of the bindings
            handled_by = []
            for caller in callers:
                call = await caller.invite("bob")
                ringing = await bob.next_request("INVITE")
                answered = await bob.answer(ringing)
                final = await caller.final(call)
                assert final.status == 200
                handled_by.append(_process_of(final.to.tag))
                # The callee's ACK and BYE name the dialog of whichever process bridged it.
                await bob.next_request("ACK")
                assert (await answered.bye()).status == 200
                bye = await caller.next_request("BYE")
                await caller.send(caller.reply(bye, 200), bye.source)
            assert set(handled_by) == {0, 1}, handled_by
            # Each process wrote its calls' records into the one database.
            await wait_rows(server, "SELECT 1 FROM cdrs WHERE leg = 'caller'", CALLERS)
            # Whichever process the kernel gives bob's address to, the other's share of
            # his messages passed through the primary: his REGISTER or his answers.
            counters = server.endpoint.counters
            assert counters["handed_in"] + counters["handed_on"] > 0


async def test_registrations_from_many_addresses_all_reach_the_primary(tmp_path: Path) -> None:
    users = [f"user{i}" for i in range(12)]
    async with running_server(tmp_path, sip_processes=2) as server:
        await _secondary_bound(server)
        provision(server, accounts={user: (None, None) for user in users})
        async with phones(server, *users) as registered_phones:
            assert len(registered_phones) == len(users)
            await registered(server, *(f"{user}@127.0.0.1" for user in users))


async def test_the_concurrency_limit_holds_across_processes(tmp_path: Path) -> None:
    async with running_server(tmp_path, sip_processes=2, executions_per_customer=3) as server:
        await _secondary_bound(server)
        provision(server, accounts={"alice": (None, "out"), "bob": (None, None)},
                  dialplans={"out": 'sys.Dial("bob@local")\n'})
        async with phones(server, "bob", *["alice"] * 8) as (bob, *callers):
            await trio.sleep(0.2)
            ringing, refused = [], []
            for caller in callers:
                call = await caller.invite("bob")
                with trio.move_on_after(5):
                    while True:
                        if caller.responses and any(r.status >= 300 for r in caller.responses):
                            final = await caller.final(call)
                            refused.append((final.status, final.reason, _process_of(final.to.tag)))
                            break
                        if bob.requests and bob.requests[0].request.method == "INVITE":
                            await bob.next_request("INVITE")
                            ringing.append((caller, call))
                            break
                        await trio.sleep(0.01)
            # Three executions in all ring bob, wherever they run; the others are refused.
            assert len(ringing) == 3
            assert [(status, reason) for status, reason, _ in refused] == [(480, CONCURRENCY_REASON)] * 5
            for caller, call in ringing:
                await call.cancel()
                assert (await caller.final(call)).status == 487


async def test_a_second_process_that_dies_is_started_again(tmp_path: Path) -> None:
    async with running_server(tmp_path, sip_processes=2) as server:
        await _secondary_bound(server)
        assert server.secondaries is not None
        first = server.secondaries.pid(1)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        with trio.fail_after(20):
            while True:
                if server.secondaries.pid(1) not in (None, first) and server.secondaries.ready(1):
                    break
                await trio.sleep(0.05)
        # The new process has the bindings and carries its share of the calls.
        provision(server, accounts={"alice": (None, "out"), "bob": (None, None)},
                  dialplans={"out": 'sys.Dial("bob@local")\n'})
        async with phones(server, "bob", *["alice"] * CALLERS) as (bob, *callers):
            await trio.sleep(0.2)
            assert set(await _answered_calls(bob, callers)) == {0, 1}


async def test_console_events_of_the_second_process_reach_the_primary(tmp_path: Path) -> None:
    async with running_server(tmp_path, sip_processes=2) as server:
        await _secondary_bound(server)
        owner = provision(server, accounts={"alice": (None, "out"), "bob": (None, None)},
                          dialplans={"out": 'sys.Dial("bob@local")\n'})
        with server.events.subscribe(owner, types=["call"]) as console:
            await trio.sleep(0.2)  # the second process hears that a console listens
            async with phones(server, "bob", *["alice"] * CALLERS) as (bob, *callers):
                started = time.time()
                assert set(await _answered_calls(bob, callers)) == {0, 1}
                answered: set[str] = set()
                with trio.fail_after(10):
                    while len(answered) < CALLERS:
                        event = await console.receive()
                        assert event.time >= started - 1
                        if event.data.get("state") == "answered":
                            answered.add(event.data["call_id"])


async def test_the_primary_lists_and_hangs_up_the_calls_of_both_processes(tmp_path: Path) -> None:
    async with running_server(tmp_path, sip_processes=2) as server:
        await _secondary_bound(server)
        owner = provision(server, accounts={"alice": (None, "out"), "bob": (None, None)},
                          dialplans={"out": 'sys.Dial("bob@local")\n'})
        async with phones(server, "bob", *["alice"] * CALLERS) as (bob, *callers):
            await trio.sleep(0.2)
            assert set(await _answered_calls(bob, callers)) == {0, 1}
            listed = await server.call_control.active_calls(owner)
            assert len(listed) == CALLERS
            by_process = {mark_of(call["id"]): call for call in listed}
            assert set(by_process) == {0, 1}
            assert await server.call_control.active_calls(owner + 1) == []
            # The second process's call ends at the primary's word: both sides get a BYE.
            theirs = by_process[1]
            assert not await server.call_control.hang_up(theirs["id"], owner + 1)
            assert await server.call_control.hang_up(theirs["id"], owner)
            bye = await bob.next_request("BYE")
            await bob.send(bob.reply(bye, 200), bye.source)
            assert len(await server.call_control.active_calls(owner)) == CALLERS - 1
            assert not await server.call_control.hang_up(theirs["id"], owner)


async def test_a_dialplan_counts_the_calls_of_every_process(tmp_path: Path) -> None:
    source = "sys.Log('count %d' % sys.GetCurrentCallCount())\nsys.Dial('bob@local')\n"
    async with running_server(tmp_path, sip_processes=2) as server:
        await _secondary_bound(server)
        provision(server, accounts={"alice": (None, "out"), "bob": (None, None)}, dialplans={"out": source})
        async with phones(server, "bob", *["alice"] * CALLERS) as (bob, *callers):
            await trio.sleep(0.2)
            assert set(await _answered_calls(bob, callers)) == {0, 1}
            traces = await wait_rows(server, "SELECT text FROM traces ORDER BY created", CALLERS)
            # The n-th call's dialplan saw the n-1 established before it, wherever they run.
            counts = sorted(int(line.rsplit(" ", 1)[1]) for text, in traces
                            for line in text.splitlines() if "DialPlan=> count" in line)
            assert counts == list(range(CALLERS))


async def test_a_callback_reaches_the_process_that_waits_for_it(tmp_path: Path) -> None:
    # The caller's and the callback's sockets are new in each round, so in some rounds
    # the kernel gives the callback's INVITE to the process that is not waiting for it
    # (all on one side by chance: 2 in 2**8); the waiting process's claim brings it over.
    rounds = 8
    async with fake_voice_service() as service, \
            running_server(tmp_path, sip_processes=2, google_voice_url=service.url) as server:
        await _secondary_bound(server)
        callbacks.provision(server, "acme", {"alice": (None, "out"), "gvline": (None, None)},
                            {"out": GOOGLE_VOICE_DIALPLAN % 20})
        assert server.sip_address is not None
        port = server.sip_address[1]
        waited_in = set()
        for _ in range(rounds):
            service.connected = trio.Event()
            async with callbacks.user_agents(server, "alice") as (alice,), \
                    callbacks.user_agents(server, "pstn", register=False) as (pstn,):
                results: list[int] = []

                async def caller(alice: callbacks.UA = alice, results: list[int] = results) -> None:
                    _, final = await alice.invite_uri(f"sip:5551234@127.0.0.1:{port}", callbacks.sdp(40000))
                    results.append(final.status)
                    waited_in.add(_process_of(final.to.tag))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(caller)
                    with trio.fail_after(10):
                        await service.connected.wait()
                    status, _, dialog = await call_back(port, pstn, "gvline")
                assert status == 200 and results == [200]
                assert (await dialog.bye()).status == 200
                request, source = await alice.request("BYE")
                await alice.ok(request, source)
        assert waited_in == {0, 1}


async def test_a_phone_on_tcp_is_reached_from_both_processes(tmp_path: Path) -> None:
    # Only the primary keeps TCP connections: the other process's INVITE, ACK and BYE to
    # bob go out through it, and bob's answers come back to the process that sent them.
    async with running_server(tmp_path, sip_processes=2) as server:
        await _secondary_bound(server)
        provision(server, accounts={"alice": (None, "out"), "bob": (None, None)},
                  dialplans={"out": 'sys.Dial("bob@local")\n'})
        assert server.sip_address is not None
        async with TCPClient(server.sip_address) as bob, \
                phones(server, *["alice"] * CALLERS, register=False) as callers:
            assert (await bob.register("bob", PASSWORD)).status == 200
            await trio.sleep(0.2)

            async def next_request(method: str) -> Request:
                while True:
                    message = await bob.receive()
                    if isinstance(message, Request) and message.method == method:
                        return message

            answered_by = set()
            for caller in callers:
                call = await caller.invite("bob")
                invite = await next_request("INVITE")
                assert invite.top_via.transport == "TCP"
                tag = new_tag()
                contact = [("Contact", f"<sip:bob@{bob.local[0]}:{bob.local[1]};transport=tcp>")]
                await bob.send(make_response(invite, 180, None, to_tag=tag, headers=contact).to_bytes())
                await bob.send(make_response(invite, 200, None, to_tag=tag, body=sdp("127.0.0.1", 41000),
                                             headers=[*contact, ("Content-Type", "application/sdp")]).to_bytes())
                final = await caller.final(call)
                assert final.status == 200
                answered_by.add(_process_of(final.to.tag))
                await next_request("ACK")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(call.bye)
                    bye = await next_request("BYE")
                    await bob.send(make_response(bye, 200, None).to_bytes())
            assert answered_by == {0, 1}
            await wait_rows(server, "SELECT 1 FROM cdrs WHERE leg = 'caller' AND hangup_reason IS NOT NULL", CALLERS)


async def test_failed_passwords_count_once_for_the_whole_server(tmp_path: Path) -> None:
    # Five wrong passwords from five sockets (over both processes, most likely) lock the
    # account out everywhere: the right password is then refused by either process.
    async with running_server(tmp_path, sip_processes=2, auth_max_failures=5) as server:
        await _secondary_bound(server)
        provision(server, accounts={"alice": (None, "out"), "bob": (None, None)},
                  dialplans={"out": 'sys.Dial("bob@local")\n'})
        async with phones(server, *["alice"] * 5, register=False) as guessers, \
                phones(server, *["alice"] * CALLERS, register=False) as callers:
            for guesser in guessers:
                guesser.password = "not-" + PASSWORD
                final = await guesser.final(await guesser.invite("bob"))
                assert final.status in (403, 407)
            await trio.sleep(0.2)  # the lock-out reaches the other process
            refused_by = set()
            for caller in callers:
                final = await caller.final(await caller.invite("bob"))
                assert (final.status, final.reason) == (403, LOCKOUT_REASON)
                refused_by.add(_process_of(final.to.tag))
            assert refused_by == {0, 1}
            assert "aor:alice@local" in server.authenticator.lockouts(time.time())


async def test_a_replayed_credential_is_refused_by_every_process(tmp_path: Path) -> None:
    async with running_server(tmp_path, sip_processes=2) as server:
        await _secondary_bound(server)
        provision(server, accounts={"alice": (None, "out"), "bob": (None, None)},
                  dialplans={"out": 'sys.Dial("bob@local")\n'})
        async with phones(server, "bob", "alice", *["alice"] * CALLERS, register=False) as (bob, alice, *replayers):
            assert (await bob.register()).status == 200
            await registered(server, "bob@127.0.0.1")
            await trio.sleep(0.2)
            call = await alice.invite("bob")
            await bob.answer(await bob.next_request("INVITE"))
            assert (await alice.final(call)).status == 200
            credential = call.invite.headers.get("Proxy-Authorization")
            assert credential is not None
            # The same answer from other sockets, which the kernel spreads over both
            # processes: the one that issued the nonce has seen it, the other did not
            # issue it; each challenges again and bob hears of none of them.
            for replayer in replayers:
                replay = await replayer.invite("bob", extra=[("Proxy-Authorization", credential)],
                                               authenticate=False)
                assert (await replayer.final(replay)).status == 407
            await bob.no_request("INVITE", 0.5)
