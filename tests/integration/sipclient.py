"""A minimal SIP user agent for tests: builds requests, sends them over UDP or TCP
from a real socket, collects responses, and answers digest challenges."""

from __future__ import annotations

import secrets
import socket

import trio

from sip.digest import authorization_for
from sip.headers import Headers
from sip.message import Request, Response, new_branch
from sip.parse import StreamFramer, parse_message_untrusted
from sip.uri import URI


class UDPClient:
    """One UDP socket on 127.0.0.1 talking to one server address."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.local: tuple[str, int] = ("127.0.0.1", 0)
        self.call_id = secrets.token_hex(8) + "@test"
        self.cseq = 0

    async def __aenter__(self) -> UDPClient:
        await self.sock.bind(("127.0.0.1", 0))
        self.local = self.sock.getsockname()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sock.close()

    def request(
        self,
        method: str,
        uri: str,
        *,
        user: str = "alice",
        domain: str = "127.0.0.1",
        contact: str | None = None,
        extra: list[tuple[str, str]] | None = None,
        call_id: str | None = None,
    ) -> Request:
        self.cseq += 1
        host, port = self.local
        headers = [
            ("Via", f"SIP/2.0/UDP {host}:{port};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{user}@{domain}>;tag={secrets.token_hex(4)}"),
            ("To", f"<sip:{user}@{domain}>"),
            ("Call-ID", call_id or self.call_id),
            ("CSeq", f"{self.cseq} {method}"),
        ]
        if contact is not None:
            headers.append(("Contact", contact))
        headers.extend(extra or [])
        return Request(method=method, uri=URI.parse(uri), headers=Headers(headers))

    async def send(self, data: Request | bytes) -> None:
        raw = data.to_bytes() if isinstance(data, Request) else data
        await self.sock.sendto(raw, self.server)

    async def receive(self, timeout: float = 5.0) -> Response | Request | bytes:
        with trio.fail_after(timeout):
            data, _ = await self.sock.recvfrom(65535)
        if not data.strip():
            return data
        return parse_message_untrusted(data)

    async def final_response(self, request: Request, timeout: float = 5.0) -> Response:
        """Send and wait for the final response (skipping provisionals and keep-alives)."""
        await self.send(request)
        while True:
            msg = await self.receive(timeout)
            if isinstance(msg, Response) and msg.status >= 200:
                return msg

    async def register(
        self,
        user: str,
        password: str,
        *,
        domain: str = "127.0.0.1",
        contact: str | None = None,
        expires: int | None = 600,
        extra: list[tuple[str, str]] | None = None,
    ) -> Response:
        """REGISTER with a digest answer to the challenge (MD5, as common phones do)."""
        uri = f"sip:{domain}"
        contact = contact if contact is not None else f"<sip:{user}@{self.local[0]}:{self.local[1]}>"
        base = list(extra or [])
        if expires is not None:
            base.append(("Expires", str(expires)))
        first = self.request("REGISTER", uri, user=user, domain=domain, contact=contact, extra=base)
        response = await self.final_response(first)
        if response.status not in (401, 407):
            return response
        header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        challenges = response.headers.get_all(header)
        md5 = next((c for c in challenges if "MD5" in c.upper() and "SHA" not in c.upper()), challenges[-1])
        auth = authorization_for(
            md5, "REGISTER", uri, user, password, nc=1, cnonce=secrets.token_hex(8)
        )
        name = "Authorization" if response.status == 401 else "Proxy-Authorization"
        second = self.request("REGISTER", uri, user=user, domain=domain, contact=contact, extra=[*base, (name, auth)])
        return await self.final_response(second)


async def tcp_exchange(server: tuple[str, int], data: bytes, timeout: float = 5.0) -> list[Response | Request]:
    """Send bytes over a new TCP connection and collect the messages that come back
    until the first final response."""
    stream = await trio.open_tcp_stream(*server)
    framer = StreamFramer()
    out: list[Response | Request] = []
    async with stream:
        await stream.send_all(data)
        with trio.fail_after(timeout):
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return out
                for raw in framer.feed(chunk):
                    msg = parse_message_untrusted(raw)
                    out.append(msg)
                    if isinstance(msg, Response) and msg.status >= 200:
                        return out
