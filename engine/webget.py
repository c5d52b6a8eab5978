"""``sys.WebGet``, host side: a bounded HTTP GET that cannot be aimed at internal services.

A dialplan author controls the URL, so without care ``WebGet`` would let any customer
probe the operator's own network (metadata services at 169.254.169.254, admin consoles on
127.0.0.1, databases on 10.x).  :class:`WebFetcher` therefore:

* accepts only ``http``/``https`` URLs of bounded length;
* resolves the host itself (trio's ``getaddrinfo``) and refuses the request if *any*
  address is loopback, private, link-local, multicast, reserved, shared (CGNAT) or
  unspecified, IPv4 and IPv6 alike, including IPv4 addresses carried inside IPv6
  (``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo) unless the
  operator allows private addresses;
* connects to an address it checked, never to the name again: the request URL is
  rewritten to the IP address and the original name travels in the ``Host`` header and,
  for https, as the TLS SNI name (httpx's ``sni_hostname`` extension), against which the
  certificate is also verified.  A DNS answer that changes between the check and the
  connect ("DNS rebinding") thus cannot redirect the request;
* never follows redirects: a 3xx, like every non-2xx status, returns ``None``;
* reads at most ``max_bytes`` of the body (streaming, stopping early) and decodes it as
  UTF-8 with replacement characters; a multi-byte character cut by the limit is dropped;
* bounds the whole operation (DNS, connect, TLS, body) by the timeout, capped at
  ``max_timeout``; zero or a negative timeout means the cap;
* returns ``None`` on any failure, and logs why at debug level.
"""

from __future__ import annotations

import codecs
import ipaddress
import logging
import math
import socket
from types import TracebackType

import httpx
import trio

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL = 2048
"""Longest URL accepted (characters)."""

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Non-public IPv4 ranges named once more here, so that the refusal does not hinge on the
# running Python's ipaddress tables (they changed within 3.11, 3.12 and 3.13): "this
# network", shared CGNAT space (RFC 6598), IETF protocol assignments, benchmarking
# (RFC 2544) and the former class E.
_EXTRA_BLOCKED: tuple[ipaddress.IPv4Network, ...] = (
    ipaddress.IPv4Network("0.0.0.0/8"),
    ipaddress.IPv4Network("100.64.0.0/10"),
    ipaddress.IPv4Network("192.0.0.0/24"),
    ipaddress.IPv4Network("198.18.0.0/15"),
    ipaddress.IPv4Network("240.0.0.0/4"),
)


class RefusedAddress(Exception):
    """The URL's host resolves to an address WebGet may not reach."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public_address(address: IPAddress) -> bool:
    """True if ``address`` is a unicast address of the public internet."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            # ::ffff:a.b.c.d is the IPv4 host itself, reached through the IPv6 API.
            return is_public_address(address.ipv4_mapped)
        inner = embedded_ipv4(address)
        if inner is not None and not is_public_address(inner):
            return False
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return False
    if address.is_loopback or address.is_link_local or address.is_private:
        return False
    if isinstance(address, ipaddress.IPv4Address) and any(
        address in network for network in _EXTRA_BLOCKED
    ):
        return False
    return address.is_global


class WebFetcher:
    """Performs ``sys.WebGet`` requests (see the module docstring for the rules).

    ``client`` is used for every request (its redirect setting is overridden per request);
    without one the fetcher makes its own, ignoring proxy environment variables (a proxy
    would defeat the address check), and :meth:`aclose` closes it.
    """

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        allow_private: bool = False,
        max_bytes: int = 8192,
        max_timeout: float = 30.0,
    ) -> None:
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(trust_env=False, follow_redirects=False)
        self._allow_private = allow_private
        self._max_bytes = max_bytes
        self._max_timeout = max_timeout

    async def aclose(self) -> None:
        """Close the HTTP client if this fetcher made it."""
        if self._own_client:
            await self._client.aclose()

    async def __aenter__(self) -> WebFetcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def get(self, url: str, timeout_seconds: float) -> str | None:
        """The first ``max_bytes`` of the body at ``url`` as text, or None on any failure.

        ``timeout_seconds`` bounds the whole request; zero, negative or above the cap
        means the cap.  Only a 2xx answer has a body worth returning: an error page or a redirect gives
        None, exactly like a network error, so a dialplan tests one thing.
        """
        if not isinstance(url, str) or len(url) > MAX_URL:
            log.debug("WebGet refused: URL is not a string of at most %d characters", MAX_URL)
            return None
        timeout = timeout_seconds
        if math.isnan(timeout) or timeout <= 0 or timeout > self._max_timeout:
            timeout = self._max_timeout
        # One cancel scope bounds everything: DNS, connect, TLS, headers and body.
        with trio.move_on_after(timeout):
            try:
                return await self._get(url)
            except RefusedAddress as exc:
                log.info("WebGet to %s refused: %s", url, exc)
                return None
            except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
                log.debug("WebGet to %s failed: %r", url, exc)
                return None
        log.debug("WebGet to %s timed out after %.1f s", url, timeout)
        return None

    async def _get(self, url: str) -> str | None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"scheme {parsed.scheme!r} is not http or https")
        host = parsed.raw_host.decode("ascii")
        if not host:
            raise ValueError("URL has no host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = await self._resolve(host, port)
        # Host header as the server expects it: the name, with the port if not default.
        host_header = parsed.netloc.decode("ascii").rpartition("@")[2]
        extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
        last_error: Exception | None = None
        for address in addresses:
            pinned = parsed.copy_with(host=str(address))
            try:
                return await self._fetch(pinned, host_header, extensions)
            except httpx.ConnectError as exc:
                # This address does not answer; the host's next one may (IPv4 vs IPv6).
                last_error = exc
        assert last_error is not None
        raise last_error

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses: list[IPAddress] = []
        for _family, _type, _proto, _canonname, sockaddr in infos:
            # Drop an IPv6 zone ("fe80::1%eth0") before parsing; link-local is refused.
            address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise OSError(f"{host} has no addresses")
        if not self._allow_private:
            # Every address is checked, not just the first: a name with one public and
            # one private address would otherwise reach the private one on a retry.
            for address in addresses:
                if not is_public_address(address):
                    raise RefusedAddress(f"{host} resolves to {address}, which is not public")
        return addresses

    async def _fetch(
        self, url: httpx.URL, host_header: str, extensions: dict[str, str]
    ) -> str | None:
        async with self._client.stream(
            "GET",
            url,
            # "Connection: close": a kept-alive connection is pinned to one address and
            # one TLS name; closing it means a later request for another name on the
            # same address never reuses a TLS session verified for a different name.
            headers={"Host": host_header, "Connection": "close"},
            extensions=extensions,
            # The cancel scope in get() is the real bound; httpx's own is a backstop.
            timeout=self._max_timeout,
            follow_redirects=False,
        ) as response:
            if not 200 <= response.status_code < 300:
                log.debug("WebGet to %s: status %d", url, response.status_code)
                return None
            body = bytearray()
            truncated = False
            chunks = response.aiter_bytes()
            try:
                async for chunk in chunks:
                    if truncated:
                        continue
                    body += chunk
                    if len(body) >= self._max_bytes:
                        truncated = True
                        del body[self._max_bytes :]
                        # Close the connection so that no more of the body is read.
                        # httpx's body iterators are a chain of async generators, and
                        # breaking out of the loop would leave the inner ones suspended
                        # (trio warns when it collects them); going on iterating the
                        # closed response ends every one of them.
                        await response.aclose()
            except (httpx.StreamError, httpx.TransportError):
                if not truncated:
                    raise
        # A character cut by the limit is incomplete, not invalid: drop it.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return decoder.decode(bytes(body), final=not truncated)
