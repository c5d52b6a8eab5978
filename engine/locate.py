"""Locating SIP servers (RFC 3263 section 4) with an asynchronous DNS resolver.

:func:`locate` turns the host, port and transport of a SIP URI into the list of
``(address, port, transport)`` targets to try, in order.  The caller sends to the first
one and moves to the next on a transport error, a 503 or a timeout, each time with a new
client transaction (RFC 3263 section 4.3).

The steps, as RFC 3263 section 4 orders them:

1. a numeric IP address is the target itself (4.1, 4.2);
2. a URI with a port: only A/AAAA records, with that port (4.2);
3. a URI with a ``transport`` parameter but no port: SRV for that transport (4.2);
4. otherwise NAPTR records pick the transports (4.1), each pointing at an SRV name;
5. no NAPTR: SRV ``_sip._udp``/``_sip._tcp`` (``_sips._tcp`` for sips) (4.1);
6. no SRV: A/AAAA with the default port, 5060 (5061 for TLS) (4.2).

SRV records are ordered as RFC 2782 says: ascending priority, and within one priority a
weighted random draw.  :class:`Resolver` wraps dnspython's asynchronous resolver (which
runs on trio by itself), points it at a given nameserver or the system's configuration,
and keeps answers in a bounded cache for their TTL.

Every failure is a :class:`LocateError` whose :attr:`~LocateError.failure` says why.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061}
# RFC 3263 4.1: the NAPTR services for SIP and the SRV prefixes for each transport.
_NAPTR_SERVICES = {"SIP+D2U": "UDP", "SIP+D2T": "TCP", "SIPS+D2T": "TLS"}
_SRV_PREFIX = {"UDP": "_sip._udp", "TCP": "_sip._tcp", "TLS": "_sips._tcp"}


class LocateFailure(enum.Enum):
    """Why no target could be found."""

    NXDOMAIN = "no such domain"
    NO_RECORDS = "no usable DNS records"
    TIMEOUT = "DNS timeout"
    DNS_FAILURE = "DNS server failure"
    BAD_REQUEST = "cannot be located"


class LocateError(Exception):
    """No server could be located for a URI; ``failure`` says why, the message says where."""

    def __init__(self, failure: LocateFailure, detail: str) -> None:
        super().__init__(f"{detail}: {failure.value}")
        self.failure = failure
        self.detail = detail


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One place to send a request: an IP address, a port and ``UDP``/``TCP``/``TLS``."""

    host_ip: str
    port: int
    transport: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SrvRecord:
    """One SRV record (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NaptrRecord:
    """One NAPTR record (RFC 3403) as RFC 3263 uses it."""

    order: int
    preference: int
    flags: str
    service: str
    replacement: str


class Resolver:
    """DNS lookups for :func:`locate`.

    ``nameserver`` is an ``(ip, port)`` pair; None reads the system's resolver
    configuration.  ``timeout`` bounds each lookup (all retries included).  Answers are
    cached for their TTL in an LRU cache of at most ``cache_size`` entries (negative
    answers too, as dnspython does).  ``address_types`` are the record types asked for a
    host's addresses, in the order their addresses are tried.  ``rng`` draws the RFC 2782
    weighted order.
    """

    def __init__(
        self,
        nameserver: tuple[str, int] | None = None,
        *,
        timeout: float = 5.0,
        cache_size: int = 1024,
        address_types: Sequence[str] = ("A", "AAAA"),
        rng: random.Random | None = None,
    ) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=nameserver is None)
        if nameserver is not None:
            self._resolver.nameservers = [nameserver[0]]
            self._resolver.port = nameserver[1]
        self._resolver.lifetime = timeout
        self._resolver.timeout = min(timeout, 2.0)
        self._resolver.cache = dns.resolver.LRUCache(cache_size)
        self._address_types = tuple(address_types)
        self.rng = rng if rng is not None else random.Random()

    async def _resolve(self, name: str, rdtype: str) -> dns.resolver.Answer:
        try:
            return await self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN as exc:
            raise LocateError(LocateFailure.NXDOMAIN, name) from exc
        except dns.resolver.NoAnswer as exc:
            raise LocateError(LocateFailure.NO_RECORDS, f"{name} {rdtype}") from exc
        except dns.exception.Timeout as exc:
            raise LocateError(LocateFailure.TIMEOUT, f"{name} {rdtype}") from exc
        except dns.resolver.NoNameservers as exc:
            raise LocateError(LocateFailure.DNS_FAILURE, f"{name} {rdtype}") from exc
        except dns.exception.DNSException as exc:
            raise LocateError(LocateFailure.DNS_FAILURE, f"{name} {rdtype} ({exc})") from exc

    async def naptr(self, name: str) -> list[NaptrRecord]:
        """The NAPTR records of ``name``."""
        answer = await self._resolve(name, "NAPTR")
        return [
            NaptrRecord(
                order=r.order,
                preference=r.preference,
                flags=r.flags.decode("ascii", "replace"),
                service=r.service.decode("ascii", "replace"),
                replacement=r.replacement.to_text(omit_final_dot=True),
            )
            for r in answer
        ]

    async def srv(self, name: str) -> list[SrvRecord]:
        """The SRV records of ``name``."""
        answer = await self._resolve(name, "SRV")
        return [
            SrvRecord(
                priority=r.priority,
                weight=r.weight,
                port=r.port,
                target=r.target.to_text(omit_final_dot=True),
            )
            for r in answer
        ]

    async def addresses(self, host: str) -> list[str]:
        """The IP addresses of ``host`` (A, then AAAA, by default).

        Raises :class:`LocateError` only when no type gave an address; the error of the
        first type is the one reported (NXDOMAIN is the same for every type).
        """
        found: list[str] = []
        first_error: LocateError | None = None
        for rdtype in self._address_types:
            try:
                answer = await self._resolve(host, rdtype)
            except LocateError as exc:
                first_error = first_error or exc
                if exc.failure is LocateFailure.NXDOMAIN:
                    break
                continue
            found.extend(r.address for r in answer)
        if not found:
            raise first_error or LocateError(LocateFailure.NO_RECORDS, host)
        return found


def order_srv(records: Sequence[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """``records`` in the order to try them (RFC 2782, "Usage rules").

    RFC 2782: "A client MUST attempt to contact the target host with the lowest-numbered
    priority it can reach"; within one priority, "arrange all SRV RRs (that have not been
    ordered yet) in any order, except that all those with weight 0 are placed at the
    beginning of the list.  Compute the sum of the weights ... choose a uniform random
    number between 0 and the sum computed (inclusive), and select the RR whose running sum
    value is the first in the selected order which is greater than or equal to the random
    number selected."
    """
    ordered: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        pending = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight > 0)
        while pending:
            total = sum(r.weight for r in pending)
            pick = rng.randint(0, total)
            running = 0
            for index, record in enumerate(pending):
                running += record.weight
                if running >= pick:
                    ordered.append(pending.pop(index))
                    break
    return ordered


def _ip_literal(host: str) -> str | None:
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


async def locate(
    uri_host: str,
    port: int | None,
    transport: str | None,
    scheme: str = "sip",
    *,
    resolver: Resolver,
    supported: Collection[str] = ("UDP", "TCP"),
) -> list[Target]:
    """The targets for a request to ``scheme:...@uri_host[:port][;transport=...]``, in order.

    ``supported`` are the transports the caller can send on (upper case); targets on
    others are never returned.  Raises :class:`LocateError` when nothing was found.
    """
    scheme = scheme.lower()
    wanted = {t.upper() for t in supported}
    if scheme == "sips":
        # RFC 3263 4.1: for a SIPS URI the transport is TLS, whatever else is offered.
        wanted &= {"TLS"}
    if transport is not None:
        transport = transport.upper()
        if transport not in wanted:
            raise LocateError(
                LocateFailure.BAD_REQUEST, f"{scheme}:{uri_host} with transport {transport}"
            )
    if not wanted:
        raise LocateError(LocateFailure.BAD_REQUEST, f"{scheme}:{uri_host} (no usable transport)")
    host = uri_host.rstrip(".") if not uri_host.startswith("[") else uri_host

    def fallback_transport() -> str:
        # RFC 3263 4.1: "if no transport protocol is specified, and the TARGET is a numeric
        # IP address [or a port is given], the client SHOULD use UDP for a SIP URI, and TCP
        # for a SIPS URI" (over TLS, for sips).
        if transport is not None:
            return transport
        if scheme == "sips":
            return "TLS"
        return "UDP" if "UDP" in wanted else sorted(wanted)[0]

    ip = _ip_literal(host)
    if ip is not None:
        chosen = fallback_transport()
        return [Target(host_ip=ip, port=port or DEFAULT_PORTS[chosen], transport=chosen)]
    if port is not None:
        # RFC 3263 4.2: "If the TARGET was not a numeric IP address, but a port is present
        # in the URI, the client performs an A or AAAA record lookup of the domain name."
        chosen = fallback_transport()
        addresses = await resolver.addresses(host)
        return [Target(host_ip=a, port=port, transport=chosen) for a in addresses]

    errors: list[LocateError] = []
    targets: list[Target] = []
    if transport is not None:
        # RFC 3263 4.2: "If the TARGET was not a numeric IP address, and no port was present
        # in the URI [but a transport was], the client performs an SRV query" for it.
        srv_names = [(f"{_SRV_PREFIX[transport]}.{host}", transport)]
    else:
        srv_names = await _naptr_services(host, wanted, resolver, errors)
        if not srv_names:
            # RFC 3263 4.1: "If no NAPTR records are found, the client constructs SRV
            # queries for those transport protocols it supports".
            srv_names = [
                (f"{_SRV_PREFIX[t]}.{host}", t) for t in ("UDP", "TCP", "TLS") if t in wanted
            ]
    srv_found = False
    for name, srv_transport in srv_names:
        found, srv_targets = await _srv_targets(name, srv_transport, resolver, errors)
        srv_found = srv_found or found
        targets.extend(srv_targets)
    if not srv_found:
        # RFC 3263 4.2: "If no SRV records were found, the client performs an A or AAAA
        # record lookup of the domain name", with the transport's default port.
        chosen = fallback_transport()
        try:
            addresses = await resolver.addresses(host)
        except LocateError as exc:
            errors.insert(0, exc)
        else:
            targets = [
                Target(host_ip=a, port=DEFAULT_PORTS[chosen], transport=chosen) for a in addresses
            ]
    if not targets:
        raise _most_telling(errors, host)
    unique = list(dict.fromkeys(targets))
    log.debug("located %s: %s", host, unique)
    return unique


async def _naptr_services(
    host: str, wanted: Collection[str], resolver: Resolver, errors: list[LocateError]
) -> list[tuple[str, str]]:
    """``(srv name, transport)`` from the NAPTR records of ``host``, in preference order."""
    try:
        records = await resolver.naptr(host)
    except LocateError as exc:
        errors.append(exc)
        return []
    # RFC 3263 4.1: "the client SHOULD discard any records whose services are not
    # supported" ... "order and preference ... as described in RFC 2915", and the "S" flag
    # says the replacement is an SRV name.
    usable = [
        r
        for r in records
        if r.flags.lower() == "s"
        and _NAPTR_SERVICES.get(r.service.upper()) in wanted
        and r.replacement not in ("", ".")
    ]
    usable.sort(key=lambda r: (r.order, r.preference))
    return [(r.replacement, _NAPTR_SERVICES[r.service.upper()]) for r in usable]


async def _srv_targets(
    name: str, transport: str, resolver: Resolver, errors: list[LocateError]
) -> tuple[bool, list[Target]]:
    """Whether ``name`` has SRV records, and the targets they lead to."""
    try:
        records = await resolver.srv(name)
    except LocateError as exc:
        errors.append(exc)
        return False, []
    targets: list[Target] = []
    for record in order_srv(records, resolver.rng):
        # RFC 2782: 'A Target of "." means that the service is decidedly not available at
        # this domain.'
        if record.target in ("", "."):
            continue
        try:
            addresses = await resolver.addresses(record.target)
        except LocateError as exc:
            errors.append(exc)
            continue
        targets.extend(Target(host_ip=a, port=record.port, transport=transport) for a in addresses)
    return True, targets


def _most_telling(errors: Sequence[LocateError], host: str) -> LocateError:
    """The error to report: a timeout or server failure beats "no records" anywhere."""
    for failure in (
        LocateFailure.NXDOMAIN,
        LocateFailure.TIMEOUT,
        LocateFailure.DNS_FAILURE,
    ):
        for error in errors:
            if error.failure is failure and (
                failure is not LocateFailure.NXDOMAIN or error.detail == host
            ):
                return error
    return LocateError(LocateFailure.NO_RECORDS, host)


async def udp_targets(host: str, port: int | None, resolver: Resolver | None) -> list[tuple[str, int]]:
    """Where a request for ``host[:port]`` goes over UDP, in the order to try (RFC 3263):
    a numeric address as it is, a name through ``resolver``.  Raises
    :class:`LocateError` when nothing is found (also for a name without a resolver)."""
    literal = _ip_literal(host)
    if literal is not None:
        return [(literal, port or 5060)]
    if resolver is None:
        raise LocateError(LocateFailure.BAD_REQUEST, f"{host} (no DNS resolver)")
    targets = await locate(host, port, None, resolver=resolver)
    found = [(t.host_ip, t.port) for t in targets if t.transport.upper() == "UDP"]
    if not found:
        raise LocateError(LocateFailure.NO_RECORDS, f"{host} over UDP")
    return found
