"""sys.WebGet's host side against a real HTTP(S) server on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial

import httpx
import pytest
import trio
import trustme

from engine.webget import WebFetcher, is_public_address

BIG = ("0123456789abcdef" * 65536).encode()  # 1 MiB
HUGE_CHUNK = b"z" * 65536
HUGE_SIZE = 256 * 1024 * 1024  # more than any socket buffer could absorb


@dataclass
class HTTPServer:
    """A tiny HTTP/1.1 server: one request per connection, routes by path."""

    port: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)
    body_bytes_sent: int = 0
    finished: trio.Event = field(default_factory=trio.Event)  # set when a request ends
    tls: ssl.SSLContext | None = None

    async def handle(self, stream: trio.abc.Stream) -> None:
        if self.tls is not None:
            stream = trio.SSLStream(stream, self.tls, server_side=True)
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = await stream.receive_some(4096)
                if not data:
                    return
                head += data
            lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
            self.requests.append((path, headers.get("host", "")))
            status, extra, body = await self.route(path, headers)
            response = (
                f"HTTP/1.1 {status}\r\n{extra}"
                + ("" if "Content-Length" in extra else f"Content-Length: {len(body)}\r\n")
                + "Connection: close\r\n\r\n"
            ).encode()
            await stream.send_all(response)
            if path == "/huge":
                for _ in range(HUGE_SIZE // len(HUGE_CHUNK)):
                    await stream.send_all(HUGE_CHUNK)
                    self.body_bytes_sent += len(HUGE_CHUNK)
            else:
                for start in range(0, len(body), 65536):
                    await stream.send_all(body[start : start + 65536])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client stopped reading, as WebGet does after max_bytes
        finally:
            await trio.aclose_forcefully(stream)
            self.finished.set()

    async def route(self, path: str, headers: dict[str, str]) -> tuple[str, str, bytes]:
        if path == "/hello":
            return "200 OK", "Content-Type: text/plain; charset=utf-8\r\n", "hello ☎".encode()
        if path == "/big":
            return "200 OK", "", BIG
        if path == "/huge":
            # Content-Length only: the body is streamed by handle() to count what is sent.
            return "200 OK", f"Content-Length: {HUGE_SIZE}\r\n", b""
        if path == "/split":
            # 8191 ASCII bytes, then a 3-byte character across the 8 KiB limit.
            return "200 OK", "", b"a" * 8191 + "☎".encode() + b"tail"
        if path == "/latin1":
            return "200 OK", "", b"caf\xe9"
        if path == "/host":
            return "200 OK", "", headers.get("host", "").encode()
        if path == "/slow":
            await trio.sleep(30)
            return "200 OK", "", b"late"
        if path == "/redirect":
            return "302 Found", f"Location: http://127.0.0.1:{self.port}/hello\r\n", b""
        if path == "/created":
            return "201 Created", "", b"made"
        return "404 Not Found", "", b"no such page"


async def start(nursery: trio.Nursery, tls: ssl.SSLContext | None = None) -> HTTPServer:
    server = HTTPServer(tls=tls)
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    server.port = listeners[0].socket.getsockname()[1]
    return server


@pytest.fixture
async def http(nursery: trio.Nursery) -> HTTPServer:
    return await start(nursery)


@pytest.fixture
async def fetcher() -> AsyncIterator[WebFetcher]:
    async with WebFetcher(allow_private=True) as fetcher:
        yield fetcher


async def test_body_of_a_200(http: HTTPServer, fetcher: WebFetcher) -> None:
    with trio.fail_after(10):
        assert await fetcher.get(f"http://127.0.0.1:{http.port}/hello", 10) == "hello ☎"
        assert await fetcher.get(f"http://127.0.0.1:{http.port}/created", 10) == "made"


async def test_at_most_8_kib_of_a_1_mib_body(http: HTTPServer, fetcher: WebFetcher) -> None:
    with trio.fail_after(10):
        text = await fetcher.get(f"http://127.0.0.1:{http.port}/big", 10)
    assert text == BIG[:8192].decode()


async def test_reading_stops_at_the_limit(http: HTTPServer, fetcher: WebFetcher) -> None:
    with trio.fail_after(10):
        text = await fetcher.get(f"http://127.0.0.1:{http.port}/huge", 10)
        # The server stops when its send fails on the connection WebGet closed.
        await http.finished.wait()
    assert text == "z" * 8192
    assert http.body_bytes_sent < HUGE_SIZE // 4


async def test_a_character_cut_by_the_limit_is_dropped(
    http: HTTPServer, fetcher: WebFetcher
) -> None:
    with trio.fail_after(10):
        assert await fetcher.get(f"http://127.0.0.1:{http.port}/split", 10) == "a" * 8191
        # Invalid UTF-8 (not cut by the limit) becomes a replacement character.
        assert await fetcher.get(f"http://127.0.0.1:{http.port}/latin1", 10) == "caf\ufffd"


async def test_max_bytes_is_configurable(http: HTTPServer) -> None:
    async with WebFetcher(allow_private=True, max_bytes=5) as small:
        with trio.fail_after(10):
            assert await small.get(f"http://127.0.0.1:{http.port}/big", 10) == "01234"


async def test_timeout_gives_none(http: HTTPServer, fetcher: WebFetcher) -> None:
    started = trio.current_time()
    with trio.fail_after(10):
        assert await fetcher.get(f"http://127.0.0.1:{http.port}/slow", 0.5) is None
    assert 0.4 < trio.current_time() - started < 3


async def test_timeout_is_capped(http: HTTPServer) -> None:
    async with WebFetcher(allow_private=True, max_timeout=0.5) as capped:
        started = trio.current_time()
        with trio.fail_after(10):
            assert await capped.get(f"http://127.0.0.1:{http.port}/slow", 1000) is None
            assert await capped.get(f"http://127.0.0.1:{http.port}/slow", 0) is None
    assert trio.current_time() - started < 3


async def test_non_2xx_and_redirects_give_none(http: HTTPServer, fetcher: WebFetcher) -> None:
    with trio.fail_after(10):
        assert await fetcher.get(f"http://127.0.0.1:{http.port}/missing", 10) is None
        assert await fetcher.get(f"http://127.0.0.1:{http.port}/redirect", 10) is None
    # The redirect was not followed.
    assert [path for path, _ in http.requests] == ["/missing", "/redirect"]


async def test_network_errors_and_bad_urls_give_none(fetcher: WebFetcher) -> None:
    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    with trio.fail_after(10):
        assert await fetcher.get(f"http://127.0.0.1:{closed_port}/", 5) is None
        assert await fetcher.get("ftp://127.0.0.1/file", 5) is None
        assert await fetcher.get("file:///etc/passwd", 5) is None
        assert await fetcher.get("http://", 5) is None
        assert await fetcher.get("not a url at all", 5) is None
        assert await fetcher.get("http://127.0.0.1/" + "a" * 3000, 5) is None
        assert await fetcher.get("http://no-such-host.invalid/", 5) is None


async def test_the_request_goes_to_the_checked_address_with_the_original_host(
    http: HTTPServer, fetcher: WebFetcher
) -> None:
    with trio.fail_after(10):
        echoed = await fetcher.get(f"http://localhost:{http.port}/host", 10)
    assert echoed == f"localhost:{http.port}"


async def test_https_verifies_the_certificate_for_the_name(nursery: trio.Nursery) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    server = await start(nursery, tls=server_context)
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)
    async with (
        httpx.AsyncClient(verify=trusting) as client,
        httpx.AsyncClient() as untrusting,
    ):
        fetcher = WebFetcher(client, allow_private=True)
        with trio.fail_after(10):
            # Connected to 127.0.0.1, yet the certificate (issued for "localhost" only)
            # is checked against the URL's name, sent as SNI.
            assert await fetcher.get(f"https://localhost:{server.port}/hello", 10) == "hello ☎"
            # The IP is not a name on the certificate: refused.
            assert await fetcher.get(f"https://127.0.0.1:{server.port}/hello", 10) is None
            # An unknown CA: refused.
            stranger = WebFetcher(untrusting, allow_private=True)
            assert await stranger.get(f"https://localhost:{server.port}/hello", 10) is None


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1.2.3",
        "localhost",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
    ],
)
async def test_loopback_refused_unless_allowed(http: HTTPServer, host: str) -> None:
    async with WebFetcher() as strict:
        with trio.fail_after(10):
            assert await strict.get(f"http://{host}:{http.port}/hello", 5) is None
    # Refused before connecting: the server saw nothing.
    assert http.requests == []


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::7f00:1",
        "2002:7f00:1::1",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo carrying 127.0.0.1
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))
