"""A provider located through DNS (RFC 3263): the first SRV target answers 503, so the
same leg goes on to the next target with a new transaction, and the call is answered."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import trio

from engine.cli import main
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


async def test_next_srv_target_after_a_503(tmp_path: Path) -> None:
    require_dnsmasq()
    async with running_server(tmp_path) as (server, nursery):
        first = await phone(nursery, server, "first", register=False, reject_status=503)
        second = await phone(nursery, server, "second", register=False)
        zone = (
            "local=/test/\nlocal-ttl=60\n"
            "host-record=one.test,127.0.0.1\nhost-record=two.test,127.0.0.1\n"
            f"srv-host=_sip._udp.trunk.test,one.test,{first.port},10,0\n"
            f"srv-host=_sip._udp.trunk.test,two.test,{second.port},20,0\n"
        )
        dnsmasq, dns_port = start_dnsmasq(tmp_path, zone)
        try:
            assert server.runner.resolver is not None
            from engine.locate import Resolver

            server.runner.resolver = Resolver(("127.0.0.1", dns_port), timeout=3.0)
            provision(server, "acme", {"alice": (None, "out")}, {})
            server.store.put_dialplan(server.store.customer_by_name("acme").id, "out",  # type: ignore[union-attr]
                                      'sys.Dial("${dst}@trunk")\n', now=time.time())
            code = await trio.to_thread.run_sync(main, [
                "provider", "add", "acme", "trunk", "--server", "trunk.test",
                "--data-dir", str(server.config.data_dir)])
            assert code == 0
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
        finally:
            dnsmasq.terminate()
            dnsmasq.wait(timeout=10)


async def test_next_srv_target_at_once_when_the_first_is_unreachable(tmp_path: Path) -> None:
    # The first target's port is closed: its ICMP port unreachable is a transport
    # error (RFC 3261 18.4), and RFC 3263 4.3 sends the leg on to the next target now,
    # not after Timer B's 32 s.
    require_dnsmasq()
    async with running_server(tmp_path) as (server, nursery):
        second = await phone(nursery, server, "second", register=False)
        closed = free_udp_port()
        zone = (
            "local=/test/\nlocal-ttl=60\n"
            "host-record=one.test,127.0.0.1\nhost-record=two.test,127.0.0.1\n"
            f"srv-host=_sip._udp.trunk.test,one.test,{closed},10,0\n"
            f"srv-host=_sip._udp.trunk.test,two.test,{second.port},20,0\n"
        )
        dnsmasq, dns_port = start_dnsmasq(tmp_path, zone)
        try:
            from engine.locate import Resolver

            server.runner.resolver = Resolver(("127.0.0.1", dns_port), timeout=3.0)
            provision(server, "acme", {"alice": (None, "out")}, {})
            server.store.put_dialplan(server.store.customer_by_name("acme").id, "out",  # type: ignore[union-attr]
                                      'sys.Dial("${dst}@trunk")\n', now=time.time())
            code = await trio.to_thread.run_sync(main, [
                "provider", "add", "acme", "trunk", "--server", "trunk.test",
                "--data-dir", str(server.config.data_dir)])
            assert code == 0
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
        finally:
            dnsmasq.terminate()
            dnsmasq.wait(timeout=10)
