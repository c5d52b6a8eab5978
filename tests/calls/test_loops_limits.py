"""Loops and limits exactly as docs/dialplan-api.md states them, through real calls."""

from __future__ import annotations

from pathlib import Path

import trio

from engine.calls import CONCURRENCY_REASON
from engine.server import Server
from tests.calls.helpers import Phone, phones, provision, rows, running_server, wait_rows

OUTSIDE = "carol@example.com"  # a caller from a domain we do not serve: an In call


async def _far_phone(server: Server, nursery: trio.Nursery) -> Phone:
    """A phone on 127.0.0.2: a host that is not a served domain, so a dial string
    naming it is a plain SIP URI call (a served domain is local in every form)."""
    assert server.sip_address is not None
    return await Phone(server.sip_address, "busy").start(nursery, host="127.0.0.2")


async def _reject_all(phone: Phone, status: int) -> None:
    """Answer every INVITE with ``status`` (and swallow the ACKs)."""
    while True:
        incoming = await phone.next_request("INVITE", within=60)
        await phone.send(phone.reply(incoming, status, to_tag="rej"), incoming.source)


async def test_two_accounts_dialling_each_other_end_with_482(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(
            server,
            accounts={"alice": ("in_alice", None), "bob": ("in_bob", None)},
            dialplans={"in_alice": 'sys.Dial("bob@local")\n', "in_bob": 'sys.Dial("alice@local")\n'},
        )
        async with phones(server, OUTSIDE) as (carol,):
            with trio.fail_after(10):
                call = await carol.invite("alice", authenticate=False)
                final = await carol.final(call)
        assert final.status == 482
        assert "Loop Detected" in final.reason
        # alice's dialplan ran once, bob's once; the third entry was refused.
        await wait_rows(server, "SELECT 1 FROM traces", 2)
        await trio.sleep(0.3)
        traces = rows(server, "SELECT dialplan FROM traces ORDER BY created")
        assert sorted(r[0] for r in traces) == ["in_alice", "in_bob"]


async def test_account_dialling_itself_rings_its_own_bindings(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": ("in", None)}, dialplans={"in": 'sys.Dial("alice@local")\n'})
        async with phones(server, "alice", OUTSIDE) as (alice, carol):
            call = await carol.invite("alice", authenticate=False)
            incoming = await alice.next_request("INVITE")
            assert incoming.request.uri.user == "alice"
            await alice.answer(incoming)
            final = await carol.final(call)
            assert final.status == 200
            assert len(rows(server, "SELECT 1 FROM traces")) <= 1  # only one execution


async def test_fan_out_through_ten_accounts_is_bounded(tmp_path: Path) -> None:
    users = [f"u{i}" for i in range(10)]
    dialplans = {
        f"in_{u}": 'sys.Dial("' + "&".join(f"u{(i + k) % 10}@local" for k in (1, 2, 3)) + '")\n'
        for i, u in enumerate(users)
    }
    async with running_server(tmp_path) as server:
        provision(server, accounts={u: (f"in_{u}", None) for u in users}, dialplans=dialplans)
        async with phones(server, OUTSIDE) as (carol,):
            started = trio.current_time()
            with trio.fail_after(20):
                call = await carol.invite("u0", authenticate=False)
                final = await carol.final(call, within=20)
            elapsed = trio.current_time() - started
        # A clear refusal, soon: the chain rules (482/483) and the 5-executions cap
        # (480) cut the tree; no leg ever rings a phone.
        assert final.status in (480, 482, 483), (final.status, final.reason)
        assert elapsed < 10
        with trio.fail_after(10):
            while True:
                executions = len(rows(server, "SELECT 1 FROM traces"))
                await trio.sleep(0.5)
                if executions == len(rows(server, "SELECT 1 FROM traces")):
                    break
        # A tree of depth 5 with 3 branches has at most 1+3+9+27+81 nodes.
        assert 1 <= executions <= 121, executions


async def test_max_forwards_zero_is_483(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, None)})
        async with phones(server, "alice", OUTSIDE) as (alice, carol):
            call = await carol.invite("alice", authenticate=False, max_forwards=0)
            final = await carol.final(call)
            assert final.status == 483
            await alice.no_request("INVITE", 0.5)


async def test_sixth_concurrent_execution_gets_480(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": ("in", None)}, dialplans={"in": 'sys.Dial("alice@local")\n'})
        async with phones(server, "alice", OUTSIDE) as (alice, carol):
            calls = []
            for _ in range(5):
                calls.append(await carol.invite("alice", authenticate=False))
                await alice.next_request("INVITE")  # ringing: its execution is parked in Dial
            sixth = await carol.invite("alice", authenticate=False)
            final = await carol.final(sixth)
            assert (final.status, final.reason) == (480, CONCURRENCY_REASON)
            # Its record says why, as the caller was told.
            refused = await wait_rows(server, "SELECT leg, status, reason FROM cdrs WHERE call_id = ?", 1,
                                      (sixth.call_id,))
            assert refused == [("caller", 480, CONCURRENCY_REASON)]
            for call in calls:
                await call.cancel()
            for call in calls:
                assert (await carol.final(call)).status == 487
            # The slots are free again.
            seventh = await carol.invite("alice", authenticate=False)
            incoming = await alice.next_request("INVITE")
            assert incoming.request.call_id != sixth.call_id
            await seventh.cancel()
            assert (await carol.final(seventh)).status == 487


async def test_the_server_cap_answers_503_with_retry_after(tmp_path: Path) -> None:
    # Two customers, two executions in all: the third caller is told to come back.
    async with running_server(tmp_path, executions_per_server=2) as server:
        provision(server, customer="acme", accounts={"alice": ("in", None)}, dialplans={"in": 'sys.Dial("alice@local")\n'})
        provision(server, customer="zeta", accounts={"zoe": ("in", None)}, dialplans={"in": 'sys.Dial("zoe@local")\n'})
        async with phones(server, "alice", "zoe", OUTSIDE) as (alice, zoe, carol):
            first = await carol.invite("alice", authenticate=False)
            await alice.next_request("INVITE")
            second = await carol.invite("zoe", authenticate=False)
            await zoe.next_request("INVITE")
            third = await carol.invite("zoe", authenticate=False)
            final = await carol.final(third)
            assert (final.status, final.reason) == (503, "Server busy")
            assert final.headers.get("Retry-After") == str(server.config.retry_after)
            await zoe.no_request("INVITE", 0.3)
            for call in (first, second):
                await call.cancel()
                assert (await carol.final(call)).status == 487


async def test_twenty_legs_per_execution(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server, trio.open_nursery() as nursery:
        busy = await _far_phone(server, nursery)
        nursery.start_soon(_reject_all, busy, 486)
        port = busy.local[1]
        source = (
            "for i in range(21):\n"
            f"    r = sys.Dial('sip:n%d@127.0.0.2:{port}' % i)\n"
            "    sys.Log('dial %d %s' % (i, r))\n"
        )
        provision(server, accounts={"alice": ("in", None)}, dialplans={"in": source})
        async with phones(server, OUTSIDE) as (carol,):
            call = await carol.invite("alice", authenticate=False)
            final = await carol.final(call)
        assert final.status == 500
        assert "at most 20 legs" in final.reason
        trace = (await wait_rows(server, "SELECT text FROM traces", 1))[0][0]
        assert "DialPlan=> dial 19 NoAnswer" in trace
        assert "dial 20" not in trace
        busy.close()
        nursery.cancel_scope.cancel()


async def test_outcomes_error_last_failure_or_480(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server, trio.open_nursery() as nursery:
        busy = await _far_phone(server, nursery)
        nursery.start_soon(_reject_all, busy, 486)
        provision(
            server,
            accounts={"err": ("in_err", None), "fail": ("in_fail", None), "none": ("in_none", None)},
            dialplans={
                "in_err": "x = 1\ny = x / 0\n",
                "in_fail": f"sys.Dial('sip:b@127.0.0.2:{busy.local[1]}')\nsys.Log('after')\n",
                "in_none": "sys.Log('nothing to do')\n",
            },
        )
        async with phones(server, OUTSIDE) as (carol,):
            answers = {}
            for user in ("err", "fail", "none"):
                call = await carol.invite(user, authenticate=False)
                answers[user] = await carol.final(call)
        assert answers["err"].status == 500
        assert "ZeroDivisionError" in answers["err"].reason and "line 2" in answers["err"].reason
        assert "/" not in answers["err"].reason.replace("x / 0", "")  # no host paths
        assert answers["fail"].status == 486
        assert answers["none"].status == 480
        busy.close()
        nursery.cancel_scope.cancel()
