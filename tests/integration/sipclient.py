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

Message = Request | Response


def pick_md5(challenges: list[str]) -> str:
    """The MD5 challenge among those offered (what common phones answer)."""
    return next((c for c in challenges if "MD5" in c.upper() and "SHA" not in c.upper()), challenges[-1])


class _Client:
    """Request building and the REGISTER dialogue, shared by both transports."""

    transport = "UDP"

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.local: tuple[str, int] = ("127.0.0.1", 0)
        self.call_id = secrets.token_hex(8) + "@test"
        self.cseq = 0

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
            ("Via", f"SIP/2.0/{self.transport} {host}:{port};branch={new_branch()};rport"),
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
        raise NotImplementedError

    async def receive(self, limit: float = 5.0) -> Message | bytes:
        raise NotImplementedError

    async def final_response(self, request: Request, limit: float = 5.0) -> Response:
        """Send and wait for the final response to ``request`` (skipping provisionals,
        keep-alives and stray responses to earlier requests)."""
        await self.send(request)
        cseq = request.headers.get("CSeq")
        while True:
            msg = await self.receive(limit)
            if (
                isinstance(msg, Response)
                and msg.status >= 200
                and msg.headers.get("CSeq") == cseq
            ):
                return msg

    async def register(
        self,
        user: str,
        password: str | None,
        *,
        domain: str = "127.0.0.1",
        contact: str | None = None,
        expires: int | None = 600,
        extra: list[tuple[str, str]] | None = None,
        limit: float = 5.0,
    ) -> Response:
        """REGISTER, answering the challenge with MD5 digest (as common phones do).

        ``contact=""`` sends no Contact (a query of the current bindings);
        ``password=None`` returns the challenge itself."""
        uri = f"sip:{domain}"
        if contact is None:
            transport = "" if self.transport == "UDP" else ";transport=tcp"
            contact = f"<sip:{user}@{self.local[0]}:{self.local[1]}{transport}>"
        base = list(extra or [])
        if expires is not None:
            base.append(("Expires", str(expires)))
        first = self.request("REGISTER", uri, user=user, domain=domain, contact=contact or None, extra=base)
        response = await self.final_response(first, limit)
        if response.status not in (401, 407) or password is None:
            return response
        header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        auth = authorization_for(
            pick_md5(response.headers.get_all(header)), "REGISTER", uri, user, password,
            nc=1, cnonce=secrets.token_hex(8),
        )
        name = "Authorization" if response.status == 401 else "Proxy-Authorization"
        second = self.request("REGISTER", uri, user=user, domain=domain, contact=contact or None,
                              extra=[*base, (name, auth)])
        return await self.final_response(second, limit)


class UDPClient(_Client):
    """One UDP socket on 127.0.0.1 talking to one server address."""

    transport = "UDP"

    def __init__(self, server: tuple[str, int]) -> None:
        super().__init__(server)
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def __aenter__(self) -> UDPClient:
        await self.sock.bind(("127.0.0.1", 0))
        self.local = self.sock.getsockname()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sock.close()

    async def send(self, data: Request | bytes) -> None:
        raw = data.to_bytes() if isinstance(data, Request) else data
        await self.sock.sendto(raw, self.server)

    async def receive_raw(self, limit: float = 5.0) -> bytes:
        with trio.fail_after(limit):
            data, _ = await self.sock.recvfrom(65535)
        return data

    async def receive(self, limit: float = 5.0) -> Message | bytes:
        data = await self.receive_raw(limit)
        if not data.strip():
            return data
        return parse_message_untrusted(data)


class TCPClient(_Client):
    """One TCP connection to the server; every message goes over it, and whatever
    comes back over it is framed and parsed."""

    transport = "TCP"

    def __init__(self, server: tuple[str, int]) -> None:
        super().__init__(server)
        self.stream: trio.SocketStream | None = None
        self._framer = StreamFramer()
        self._pending: list[bytes] = []

    async def __aenter__(self) -> TCPClient:
        with trio.fail_after(5):
            self.stream = await trio.open_tcp_stream(*self.server)
        name = self.stream.socket.getsockname()
        self.local = (name[0], name[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.stream is not None:
            await self.stream.aclose()

    async def send(self, data: Request | bytes) -> None:
        assert self.stream is not None
        raw = data.to_bytes() if isinstance(data, Request) else data
        await self.stream.send_all(raw)

    async def receive(self, limit: float = 5.0) -> Message | bytes:
        """The next message from the connection; raises EOFError if the server closed it."""
        assert self.stream is not None
        with trio.fail_after(limit):
            while not self._pending:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise EOFError("the server closed the connection")
                self._pending.extend(self._framer.feed(chunk))
        return parse_message_untrusted(self._pending.pop(0))


async def tcp_exchange(server: tuple[str, int], data: bytes, limit: float = 5.0) -> list[Message]:
    """Send bytes over a new TCP connection and collect the messages that come back
    until the first final response."""
    out: list[Message] = []
    with trio.fail_after(limit):
        stream = await trio.open_tcp_stream(*server)
        framer = StreamFramer()
        async with stream:
            await stream.send_all(data)
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return out
                for raw in framer.feed(chunk):
                    msg = parse_message_untrusted(raw)
                    out.append(msg)
                    if isinstance(msg, Response) and msg.status >= 200:
                        return out
