"""A provider located through DNS (RFC 3263): the first SRV target answers 503, so the
same leg goes on to the next target with a new transaction, and the call is answered."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import trio

from engine.cli import main
from engine.locate import Resolver
from engine.server import Server
from tests.engine.test_locate import free_udp_port, require_dnsmasq
from tests.engine.test_samples_live import phone, provision, running_server, stored


def start_dnsmasq(tmp_path: Path, zone: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_udp_port()
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(zone)
    process = subprocess.Popen(
        [require_dnsmasq(), "--no-daemon", f"--conf-file={conf}", f"--port={port}",
         "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
         "--pid-file=", "--log-facility=-"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    query = dns.message.make_query("one.test", "A")
    while time.monotonic() < deadline:
        try:
            dns.query.udp(query, "127.0.0.1", port=port, timeout=0.2)
            return process, port
        except (dns.exception.Timeout, OSError):
            continue
    process.kill()
    raise RuntimeError("dnsmasq did not answer")


@asynccontextmanager
async def trunk_with_two_srv_targets(tmp_path: Path, server: Server, first_port: int,
                                     second_port: int) -> AsyncIterator[None]:
    """dnsmasq on loopback answering _sip._udp.trunk.test with two targets (priority 10
    then 20), the server resolving through it, and customer acme's account alice whose
    Out dialplan dials ${dst}@trunk (provider server trunk.test)."""
    zone = (
        "local=/test/\nlocal-ttl=60\n"
        "host-record=one.test,127.0.0.1\nhost-record=two.test,127.0.0.1\n"
        f"srv-host=_sip._udp.trunk.test,one.test,{first_port},10,0\n"
        f"srv-host=_sip._udp.trunk.test,two.test,{second_port},20,0\n"
    )
    dnsmasq, dns_port = start_dnsmasq(tmp_path, zone)
    try:
        assert server.runner.resolver is not None
        server.runner.resolver = Resolver(("127.0.0.1", dns_port), timeout=3.0)
        provision(server, "acme", {"alice": (None, "out")}, {})
        owner = server.store.customer_by_name("acme")
        assert owner is not None
        server.store.put_dialplan(owner.id, "out", 'sys.Dial("${dst}@trunk")\n', now=time.time())
        code = await trio.to_thread.run_sync(main, [
            "provider", "add", "acme", "trunk", "--server", "trunk.test",
            "--data-dir", str(server.config.data_dir)])
        assert code == 0
        yield
    finally:
        dnsmasq.terminate()
        dnsmasq.wait(timeout=10)


async def test_next_srv_target_after_a_503(tmp_path: Path) -> None:
    require_dnsmasq()
    async with running_server(tmp_path) as (server, nursery):
        first = await phone(nursery, server, "first", register=False, reject_status=503)
        second = await phone(nursery, server, "second", register=False)
        async with trunk_with_two_srv_targets(tmp_path, server, first.port, second.port):
            alice = await phone(nursery, server, "alice")
            with trio.fail_after(15):
                call = await alice.call("15551234")
                answered = await second.wait_answered()
            # One INVITE each: the 503 from the first target sent the leg to the second.
            assert [r.uri.user for r in first.invites] == ["15551234"]
            assert [r.uri.user for r in second.invites] == ["15551234"]
            assert first.invites[0].call_id == second.invites[0].call_id
            assert first.invites[0].branch != second.invites[0].branch
            assert second.invites[0].cseq.number == first.invites[0].cseq.number + 1
            with trio.fail_after(10):
                await call.hang_up()
                await answered.wait_ended()
            rows = await stored(server, "SELECT status FROM cdrs WHERE leg = 'callee'", (), 1)
            assert [r[0] for r in rows] == [200]


async def test_next_srv_target_at_once_when_the_first_is_unreachable(tmp_path: Path) -> None:
    # The first target's port is closed: its ICMP port unreachable is a transport
    # error (RFC 3261 18.4), and RFC 3263 4.3 sends the leg on to the next target now,
    # not after Timer B's 32 s.
    require_dnsmasq()
    async with running_server(tmp_path) as (server, nursery):
        second = await phone(nursery, server, "second", register=False)
        async with trunk_with_two_srv_targets(tmp_path, server, free_udp_port(), second.port):
            alice = await phone(nursery, server, "alice")
            started = trio.current_time()
            with trio.fail_after(15):
                call = await alice.call("15551234")
                answered = await second.wait_answered()
            assert trio.current_time() - started < 5
            assert [r.uri.user for r in second.invites] == ["15551234"]
            assert server.endpoint is not None and server.endpoint.counters["icmp_errors"] >= 1
            with trio.fail_after(10):
                await call.hang_up()
                await answered.wait_ended()
