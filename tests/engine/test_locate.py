"""RFC 3263 server location against a real dnsmasq serving SRV, NAPTR and A records."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest
import trio

from engine.locate import (
    LocateError,
    LocateFailure,
    Resolver,
    SrvRecord,
    Target,
    locate,
    order_srv,
)

DNSMASQ_INSTALL = "apt-get install -y dnsmasq-base"

# The zone the tests resolve in.  "local=/test/" makes dnsmasq answer NXDOMAIN for
# unknown names there instead of REFUSED; local-ttl makes answers cacheable.
ZONE = """
local=/test/
local-ttl=60
host-record=a.test,127.0.0.11
host-record=b.test,127.0.0.12
host-record=c.test,127.0.0.13
host-record=dual.test,127.0.0.14,::1
host-record=plain.test,127.0.0.15
# priorities: b (10) before a (20); TCP has its own record
srv-host=_sip._udp.prio.test,a.test,5070,20,0
srv-host=_sip._udp.prio.test,b.test,5071,10,0
srv-host=_sip._tcp.prio.test,c.test,5072,10,0
host-record=prio.test,127.0.0.99
# weights within one priority: a 75 %, b 25 %
srv-host=_sip._udp.weight.test,a.test,5060,10,60
srv-host=_sip._udp.weight.test,b.test,5060,10,20
# NAPTR: TCP (order 10, pref 10) before UDP (order 10, pref 20); TLS has order 5
naptr-record=naptr.test,10,20,s,SIP+D2U,,_sip._udp.naptr.test
naptr-record=naptr.test,10,10,S,SIP+D2T,,_sip._tcp.naptr.test
naptr-record=naptr.test,5,10,s,SIPS+D2T,,_sips._tcp.naptr.test
naptr-record=naptr.test,1,10,u,E2U+sip,!^.*$!sip:x@y!,
srv-host=_sip._udp.naptr.test,a.test,5080,10,0
srv-host=_sip._tcp.naptr.test,b.test,5081,10,0
srv-host=_sips._tcp.naptr.test,c.test,5082,10,0
# an SRV record with target "." means "no service here"
srv-host=_sip._udp.none.test
host-record=none.test,127.0.0.16
srv-host=_sip._udp.dangling.test,missing.test,5060,10,0
"""


def require_dnsmasq() -> str:
    """dnsmasq's path: skip locally with the install command, fail in CI."""
    path = shutil.which("dnsmasq") or next(
        (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.access(p, os.X_OK)), None
    )
    if path is None:
        message = f"dnsmasq is not installed: {DNSMASQ_INSTALL}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_udp_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


class Dnsmasq:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_udp_port()
        conf = tmp_path / "dnsmasq.conf"
        conf.write_text(ZONE)
        self.process = subprocess.Popen(
            [
                require_dnsmasq(),
                "--no-daemon",
                f"--conf-file={conf}",
                f"--port={self.port}",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--pid-file=",
                "--log-facility=-",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        # dnsmasq has no readiness signal; ask it until it answers (bounded).
        deadline = time.monotonic() + 10
        query = dns.message.make_query("a.test", "A")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                assert self.process.stderr is not None
                raise RuntimeError(f"dnsmasq exited: {self.process.stderr.read()!r}")
            try:
                dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.2)
                return
            except (dns.exception.Timeout, OSError):
                continue
        raise RuntimeError("dnsmasq did not answer within 10 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        assert self.process.stderr is not None
        self.process.stderr.close()


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    server = Dnsmasq(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def resolver_for(server: Dnsmasq) -> Resolver:
    return Resolver(("127.0.0.1", server.port), timeout=3.0)


def t(ip: str, port: int, transport: str = "UDP") -> Target:
    return Target(host_ip=ip, port=port, transport=transport)


async def test_srv_priorities_then_tcp_then_nothing_else(dnsmasq: Dnsmasq) -> None:
    with trio.fail_after(10):
        targets = await locate("prio.test", None, None, resolver=resolver_for(dnsmasq))
    # No NAPTR: _sip._udp then _sip._tcp (RFC 3263 4.1); lowest priority first; the A
    # record of prio.test itself is not used because SRV records exist.
    assert targets == [t("127.0.0.12", 5071), t("127.0.0.11", 5070), t("127.0.0.13", 5072, "TCP")]


async def test_srv_weights_are_a_weighted_random_draw(dnsmasq: Dnsmasq) -> None:
    resolver = resolver_for(dnsmasq)
    firsts: Counter[str] = Counter()
    with trio.fail_after(30):
        for _ in range(400):
            targets = await locate("weight.test", None, None, resolver=resolver)
            assert sorted(x.host_ip for x in targets) == ["127.0.0.11", "127.0.0.12"]
            firsts[targets[0].host_ip] += 1
    # Weight 60 against 20: a is first with probability 3/4 (300 of 400, sd ~8.7).
    assert 250 <= firsts["127.0.0.11"] <= 350, firsts


def test_order_srv_follows_rfc2782() -> None:
    records = [
        SrvRecord(priority=20, weight=0, port=1, target="late"),
        SrvRecord(priority=10, weight=0, port=2, target="zero"),
        SrvRecord(priority=10, weight=1000, port=3, target="heavy"),
    ]
    firsts: Counter[str] = Counter()
    for seed in range(200):
        ordered = order_srv(records, random.Random(seed))
        assert ordered[-1].target == "late"
        firsts[ordered[0].target] += 1
    # Weight 0 is chosen first only when the draw is exactly 0 (1 chance in 1001).
    assert firsts["heavy"] >= 195


async def test_naptr_order_and_preference(dnsmasq: Dnsmasq) -> None:
    resolver = resolver_for(dnsmasq)
    with trio.fail_after(10):
        targets = await locate("naptr.test", None, None, resolver=resolver)
        with_tls = await locate(
            "naptr.test", None, None, resolver=resolver, supported=("UDP", "TCP", "TLS")
        )
        sips = await locate("naptr.test", None, None, "sips", resolver=resolver, supported=("TLS",))
    # TLS (order 5) is skipped when unsupported; TCP has the better preference in order 10;
    # the E2U record (not a SIP service) is ignored.
    assert targets == [t("127.0.0.12", 5081, "TCP"), t("127.0.0.11", 5080)]
    assert with_tls == [
        t("127.0.0.13", 5082, "TLS"),
        t("127.0.0.12", 5081, "TCP"),
        t("127.0.0.11", 5080),
    ]
    assert sips == [t("127.0.0.13", 5082, "TLS")]


async def test_transport_parameter_selects_one_srv_name(dnsmasq: Dnsmasq) -> None:
    with trio.fail_after(10):
        targets = await locate("prio.test", None, "tcp", resolver=resolver_for(dnsmasq))
    assert targets == [t("127.0.0.13", 5072, "TCP")]


async def test_fallback_to_address_records(dnsmasq: Dnsmasq) -> None:
    resolver = resolver_for(dnsmasq)
    with trio.fail_after(10):
        assert await locate("plain.test", None, None, resolver=resolver) == [t("127.0.0.15", 5060)]
        assert await locate("dual.test", None, None, resolver=resolver) == [
            t("127.0.0.14", 5060),
            t("::1", 5060),
        ]
        # RFC 2782: SRV target "." says "no service here", so the A record of none.test
        # is not a fallback (RFC 3263 falls back only when no SRV records exist).
        with pytest.raises(LocateError) as none:
            await locate("none.test", None, None, resolver=resolver)
        assert await locate(
            "plain.test", None, None, "sips", resolver=resolver, supported=("TLS",)
        ) == [t("127.0.0.15", 5061, "TLS")]
    assert none.value.failure is LocateFailure.NO_RECORDS


async def test_explicit_port_uses_address_records_only(dnsmasq: Dnsmasq) -> None:
    with trio.fail_after(10):
        targets = await locate("prio.test", 5099, None, resolver=resolver_for(dnsmasq))
    assert targets == [t("127.0.0.99", 5099)]


async def test_numeric_ip_needs_no_dns() -> None:
    # A resolver pointed at a port where nothing answers: any query would fail.
    resolver = Resolver(("127.0.0.1", free_udp_port()), timeout=0.5)
    with trio.fail_after(5):
        assert await locate("127.0.0.7", None, None, resolver=resolver) == [t("127.0.0.7", 5060)]
        assert await locate("127.0.0.7", 5070, "tcp", resolver=resolver) == [
            t("127.0.0.7", 5070, "TCP")
        ]
        assert await locate("[::1]", None, None, resolver=resolver) == [t("::1", 5060)]


async def test_nxdomain(dnsmasq: Dnsmasq) -> None:
    with trio.fail_after(10), pytest.raises(LocateError) as info:
        await locate("nope.test", None, None, resolver=resolver_for(dnsmasq))
    assert info.value.failure is LocateFailure.NXDOMAIN
    assert str(info.value) == "nope.test: no such domain"


async def test_srv_target_without_address_is_no_records(dnsmasq: Dnsmasq) -> None:
    with trio.fail_after(10), pytest.raises(LocateError) as info:
        await locate("dangling.test", None, None, resolver=resolver_for(dnsmasq))
    # missing.test does not exist, but the name asked for (dangling.test) does have
    # records, so the user is told there is nothing usable rather than "no such domain".
    assert info.value.failure is LocateFailure.NO_RECORDS
    assert "dangling.test" in str(info.value)


async def test_unsupported_transport_is_refused() -> None:
    resolver = Resolver(("127.0.0.1", free_udp_port()), timeout=0.5)
    with pytest.raises(LocateError, match="transport TLS"):
        await locate("127.0.0.1", None, "tls", resolver=resolver)
    with pytest.raises(LocateError, match="no usable transport"):
        await locate("example.test", None, None, "sips", resolver=resolver)


async def test_timeout_when_the_server_never_answers() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        resolver = Resolver(("127.0.0.1", silent.getsockname()[1]), timeout=0.3)
        with trio.fail_after(10), pytest.raises(LocateError) as info:
            await locate("a.test", 5060, None, resolver=resolver)
    assert info.value.failure is LocateFailure.TIMEOUT
    assert "DNS timeout" in str(info.value)


async def test_answers_are_cached_for_their_ttl(dnsmasq: Dnsmasq) -> None:
    resolver = resolver_for(dnsmasq)
    with trio.fail_after(10):
        first = await locate("prio.test", None, None, resolver=resolver)
        dnsmasq.stop()
        # The server is gone; the 60 s TTL answers (and the negative NAPTR answer) serve.
        assert await locate("prio.test", None, None, resolver=resolver) == first
