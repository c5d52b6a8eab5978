"""The sample dialplans (sample_dialplans/*.py): each compiles, behaves as its comment
says in the simulator, and the main ones route real calls through a real server:
simulated phones (engine/softphone.py) for the accounts, and small SIP user agents
answering 503 or 200 for the providers."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from engine.cli import main
from engine.config import ServerConfig
from engine.server import Server
from engine.simulator import CallOutcome, CallSpec, simulate
from engine.softphone import PhoneError, SoftPhone
from sandbox import SandboxPool
from tests.conftest import free_port

SAMPLES = Path(__file__).resolve().parents[2] / "sample_dialplans"
SEED_SAMPLES = {"google_voice.py", "in_like_direct.py", "webcallback_regex_test.py"}
FEATURE_SAMPLES = {"provider_failover.py", "day_night.py", "blacklist.py", "number_routing.py"}


def sample(name: str) -> str:
    return (SAMPLES / name).read_text(encoding="utf-8")


# -- every sample: compiles, says what it does, is documented --------------------------------


async def test_every_sample_compiles_starts_with_its_comment_and_is_documented() -> None:
    names = {p.name for p in SAMPLES.glob("*.py")}
    assert names >= SEED_SAMPLES | FEATURE_SAMPLES
    guide = (SAMPLES.parent / "docs" / "dialplans.md").read_text(encoding="utf-8")
    async with SandboxPool(workers=1) as pool:
        for name in sorted(names):
            source = sample(name)
            assert source.startswith("# "), f"{name} does not start with a comment"
            assert await pool.compile_errors(source) == [], name
            assert f"sample_dialplans/{name}" in guide, f"docs/dialplans.md does not explain {name}"


# -- the simulator: what each sample does, without a network ----------------------------------


async def test_google_voice_falls_back_to_the_provider() -> None:
    async with SandboxPool(workers=1) as pool:
        call = await simulate(pool, sample("google_voice.py"),
                              CallSpec(to="15551234", direction="out", answer=re.compile("myprovider")), {})
    assert call.outcome is CallOutcome.ANSWERED and call.answered_by == "15551234@myprovider"
    assert call.log[0] == "starting dialplan..." and "Sorry, Google Voice Call failed." in call.log


async def test_provider_failover_in_the_simulator() -> None:
    source = sample("provider_failover.py")
    async with SandboxPool(workers=1) as pool:
        backup = await simulate(pool, source, CallSpec(to="15551234", direction="out",
                                                        answer=re.compile("@backup$")), {})
        assert backup.answered_by == "15551234@backup"
        assert backup.legs == ("15551234@primary", "15551234@backup")
        primary = await simulate(pool, source, CallSpec(to="+4420123", direction="out",
                                                         answer=re.compile("@primary$")), {})
        assert primary.answered_by == "+4420123@primary" and primary.legs == ("+4420123@primary",)
        down = await simulate(pool, source, CallSpec(to="15551234", direction="out"), {})
        assert (down.status, down.reason) == (503, "All providers failed")
        assert down.log[-1] == "both providers failed (Failed): 480 Temporarily Unavailable"
        junk = await simulate(pool, source, CallSpec(to="bob", direction="out"), {})
        assert (junk.status, junk.legs) == (484, ())


async def test_day_night_in_the_simulator() -> None:
    source = sample("day_night.py")
    db: dict[str, str] = {}
    phones = re.compile("^owner@local$")
    async with SandboxPool(workers=1) as pool:
        day = await simulate(pool, source, CallSpec(answer=phones), db)
        assert day.answered_by == "owner@local"
        unanswered = await simulate(pool, source, CallSpec(), db)
        assert unanswered.legs == ("owner@local", "vm-owner@voicemail")
        night_on = await simulate(pool, source, CallSpec(to="*28", direction="out"), db)
        assert (night_on.status, night_on.reason) == (480, "Night mode on") and db == {"mode": "night"}
        night = await simulate(pool, source, CallSpec(answer=phones), db)
        assert night.legs == ("vm-owner@voicemail",) and night.status == 480
        assert night.log == ("night mode: alice goes to voicemail",)
        night_off = await simulate(pool, source, CallSpec(to="*29", direction="out"), db)
        assert night_off.reason == "Night mode off" and db == {}
        out = await simulate(pool, source, CallSpec(to="5550100", direction="out",
                                                     answer=re.compile("@main$")), db)
        assert out.answered_by == "5550100@main"


# -- live: a real server, real SIP over loopback -----------------------------------------------


@asynccontextmanager
async def running_server(tmp_path: Path) -> AsyncIterator[tuple[Server, trio.Nursery]]:
    config = ServerConfig(data_dir=tmp_path / "data", sip_host="127.0.0.1", sip_port=free_port(),
                          http_port=free_port(socket.SOCK_STREAM), domain="127.0.0.1",
                          sandbox_workers=1)
    server = Server(config)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            yield server, nursery
            nursery.cancel_scope.cancel()
    finally:
        server.store.close()


async def phone(nursery: trio.Nursery, server: Server, user: str, *, register: bool = True,
                **options: Any) -> SoftPhone:
    assert server.sip_address is not None
    ua = SoftPhone(user=user, password=f"{user}-pw", domain="127.0.0.1", server=server.sip_address,
                   answer_delay=0.05, **options)
    await nursery.start(ua.run)
    if register:
        with trio.fail_after(5):
            await ua.register()
    return ua


def provision(server: Server, customer: str, accounts: dict[str, tuple[str | None, str | None]],
              dialplans: dict[str, str]) -> int:
    """A customer, its dialplans (name -> sample file) and accounts (user -> (in, out))."""
    store = server.store
    now = time.time()
    owner = store.customer_by_name(customer) or store.add_customer(customer, "pw", now=now)
    for name, file in dialplans.items():
        store.put_dialplan(owner.id, name, sample(file), now=now)
    for user, (in_dp, out_dp) in accounts.items():
        store.add_account(user, "local", customer=customer, password=f"{user}-pw",
                          in_dialplan=in_dp, out_dialplan=out_dp, now=now)
    return owner.id


async def stored(server: Server, sql: str, params: tuple[object, ...], count: int) -> list[Any]:
    """Rows the server writes from its own tasks once a call ends (no notification
    exists), re-read after each commit of the writer; bounded by a hard timeout."""
    with trio.fail_after(10):
        while True:
            await server.store.write(lambda conn: None)
            found = server.store.query_all(sql, params)
            if len(found) >= count:
                return found
            await trio.sleep(0.05)


async def trace_of(server: Server, dialplan: str, count: int = 1) -> str:
    rows = await stored(server, "SELECT text FROM traces WHERE dialplan = ? ORDER BY created",
                        (dialplan,), count)
    return str(rows[count - 1][0])


async def test_defaultin_rings_the_bindings_exactly_like_direct(tmp_path: Path) -> None:
    async with running_server(tmp_path) as (server, nursery):
        provision(server, "acme", {"alice": (None, None), "bob": ("defaultin", None),
                                   "carol": (None, None)}, {"defaultin": "in_like_direct.py"})
        alice = await phone(nursery, server, "alice")
        bob = await phone(nursery, server, "bob")
        with trio.fail_after(10):
            call = await alice.call("bob")
            answered = await bob.wait_answered()
            assert answered.remote_sdp.startswith(b"v=0")
            assert (await call.hang_up()).status == 200
            await answered.wait_ended()
        trace = await trace_of(server, "defaultin")
        assert "DialPlan=> call from sip:alice@127.0.0.1 to bob." in trace
        assert "answered" in trace

        # Without a binding the dialplan ends as Direct does: 480, for bob (dialplan)
        # and carol (no dialplan) alike.
        with trio.fail_after(5):
            await bob.register(expires=0)
        outcomes = []
        for callee in ("bob", "carol"):
            with trio.fail_after(10), pytest.raises(PhoneError) as failed:
                await alice.call(callee)
            outcomes.append(failed.value.status)
        assert outcomes == [480, 480]


async def test_blacklist_declines_listed_callers_and_rings_for_others(tmp_path: Path) -> None:
    async with running_server(tmp_path) as (server, nursery):
        owner = provision(server, "acme", {"bob": ("blacklist", None)}, {"blacklist": "blacklist.py"})
        provision(server, "others", {"alice": (None, None), "carol": (None, None)}, {})
        await server.store.write(lambda conn: conn.execute(
            "INSERT INTO kv (customer_id, key, value, updated) VALUES (?, 'block:carol', '1', 0)",
            (owner,)))
        bob = await phone(nursery, server, "bob")
        carol = await phone(nursery, server, "carol", register=False)
        alice = await phone(nursery, server, "alice", register=False)

        with trio.fail_after(10), pytest.raises(PhoneError) as declined:
            await carol.call("bob")
        assert (declined.value.status, declined.value.reason) == (603, "Decline")
        assert bob.invites == []
        assert "DialPlan=> rejecting blacklisted caller carol" in await trace_of(server, "blacklist")

        with trio.fail_after(10):
            call = await alice.call("bob")
            answered = await bob.wait_answered()
            await call.hang_up()
            await answered.wait_ended()
        assert [str(r.from_.uri) for r in bob.invites] == ["sip:alice@127.0.0.1"]


async def test_provider_failover_reaches_the_backup_when_the_primary_answers_503(tmp_path: Path) -> None:
    async with running_server(tmp_path) as (server, nursery):
        provision(server, "acme", {"alice": (None, "failover")}, {"failover": "provider_failover.py"})
        primary = await phone(nursery, server, "primary", register=False, reject_status=503)
        backup = await phone(nursery, server, "backup", register=False)
        data = str(server.config.data_dir)
        for name, trunk in (("primary", primary), ("backup", backup)):
            code = await trio.to_thread.run_sync(main, [
                "provider", "add", "acme", name, "--server", f"127.0.0.1:{trunk.port}",
                "--header", f"X-Trunk: {name}", "--data-dir", data])
            assert code == 0
        alice = await phone(nursery, server, "alice")

        with trio.fail_after(15):
            call = await alice.call("15551234")
            answered = await backup.wait_answered()
        assert [r.uri.user for r in primary.invites] == ["15551234"]
        assert [r.uri.user for r in backup.invites] == ["15551234"]
        assert backup.invites[0].headers.get("X-Trunk") == "backup"
        with trio.fail_after(10):
            await call.hang_up()
            await answered.wait_ended()
        cdrs = await stored(server, "SELECT to_uri, status FROM cdrs WHERE leg = 'callee' "
                            "ORDER BY created", (), 2)
        assert [(str(uri).split(":")[-1], status) for uri, status in cdrs] == [
            (str(primary.port), 503), (str(backup.port), 200)]

        # Both providers down: one clear 503.  A busy callee at the backup: 486 as is.
        backup.reject_status = 503
        with trio.fail_after(15), pytest.raises(PhoneError) as down:
            await alice.call("15551234")
        assert (down.value.status, down.value.reason) == (503, "All providers failed")
        backup.reject_status = 486
        with trio.fail_after(15), pytest.raises(PhoneError) as busy:
            await alice.call("15551234")
        assert busy.value.status == 486
        trace = await trace_of(server, "failover", 3)
        assert re.search(r"DialPlan=> both providers failed \(\w+\): 486 Busy Here", trace)


async def test_day_night_switches_with_feature_codes(tmp_path: Path) -> None:
    async with running_server(tmp_path) as (server, nursery):
        provision(server, "acme", {"alice": ("daynight", "daynight")}, {"daynight": "day_night.py"})
        provision(server, "others", {"carol": (None, None)}, {})
        voicemail = await phone(nursery, server, "voicemail", register=False)
        assert await trio.to_thread.run_sync(main, [
            "provider", "add", "acme", "voicemail", "--server", f"127.0.0.1:{voicemail.port}",
            "--data-dir", str(server.config.data_dir)]) == 0
        alice = await phone(nursery, server, "alice")
        carol = await phone(nursery, server, "carol", register=False)

        with trio.fail_after(10):
            call = await carol.call("alice")
            by_day = await alice.wait_answered()
            await call.hang_up()
            await by_day.wait_ended()
        assert voicemail.invites == []

        with trio.fail_after(10), pytest.raises(PhoneError) as switched:
            await alice.call("*28")
        assert switched.value.reason == "Night mode on"
        ringing_before = len(alice.invites)
        with trio.fail_after(10):
            call = await carol.call("alice")
            at_night = await voicemail.wait_answered()
            await call.hang_up()
            await at_night.wait_ended()
        assert len(alice.invites) == ringing_before
        assert [r.uri.user for r in voicemail.invites] == ["vm-alice"]
