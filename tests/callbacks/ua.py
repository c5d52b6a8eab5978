"""A small scripted SIP user agent on a real UDP socket of 127.0.0.1, and a server with
provisioning, for the callback tests.  The test decides every step; each wait has a
hard timeout."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from engine.config import ServerConfig
from engine.server import Server
from sip.digest import authorization_for
from sip.headers import Headers
from sip.message import Request, Response, make_ack_for_error, make_response, new_branch, new_tag
from sip.parse import parse_message_untrusted
from sip.uri import URI
from tests.conftest import free_port

PASSWORD = "pw-Secret1"


def sdp(port: int, ip: str = "127.0.0.1") -> bytes:
    return (
        f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()


@asynccontextmanager
async def running_server(tmp_path: Path, **overrides: Any) -> AsyncIterator[Server]:
    settings: dict[str, Any] = {
        "data_dir": tmp_path / "data", "sip_host": "127.0.0.1", "sip_port": free_port(),
        "http_port": free_port(socket.SOCK_STREAM), "domain": "127.0.0.1",
    }
    settings.update(overrides)
    server = Server(ServerConfig(**settings))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            yield server
            nursery.cancel_scope.cancel()
    finally:
        server.store.close()


def provision(server: Server, customer: str, accounts: dict[str, tuple[str | None, str | None]] | None = None,
              dialplans: dict[str, str] | None = None) -> int:
    """A customer with dialplans and accounts (user -> (In, Out) dialplan) in the default domain."""
    store, now = server.store, time.time()
    owner = store.customer_by_name(customer) or store.add_customer(customer, PASSWORD, now=now)
    for name, source in (dialplans or {}).items():
        store.put_dialplan(owner.id, name, source, now=now)
    for user, (in_dp, out_dp) in (accounts or {}).items():
        store.add_account(user, "local", customer=customer, password=PASSWORD, in_dialplan=in_dp,
                          out_dialplan=out_dp, now=now)
    return owner.id


@dataclass
class Dialog:
    """One established call as this UA sees it."""

    ua: UA
    call_id: str
    local: str  # our From/To value with tag
    remote: str
    target: URI
    peer: tuple[str, int]
    cseq: int = 100

    def request(self, method: str, cseq: int | None = None) -> Request:
        if cseq is None:
            self.cseq += 1
        return self.ua.build(method, str(self.target), from_=self.local, to=self.remote, call_id=self.call_id,
                             cseq=cseq or self.cseq)

    async def bye(self) -> Response:
        request = self.request("BYE")
        await self.ua.send(request, self.peer)
        return await self.ua.response(self.call_id, "BYE")


class UA:
    def __init__(self, server: tuple[str, int], user: str, *, domain: str = "127.0.0.1") -> None:
        self.server, self.user, self.domain = server, user, domain
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.local: tuple[str, int] = ("127.0.0.1", 0)
        self.requests: list[tuple[Request, tuple[str, int]]] = []
        self.responses: list[Response] = []
        self._arrived = trio.Event()

    async def start(self, nursery: trio.Nursery) -> UA:
        await self.sock.bind(("127.0.0.1", 0))
        self.local = self.sock.getsockname()
        nursery.start_soon(self._reader)
        return self

    def close(self) -> None:
        self.sock.close()

    @property
    def contact(self) -> str:
        return f"<sip:{self.user}@{self.local[0]}:{self.local[1]}>"

    async def _reader(self) -> None:
        while True:
            try:
                data, source = await self.sock.recvfrom(65535)
            except (OSError, trio.ClosedResourceError):
                return
            if not data.strip():
                continue
            message = parse_message_untrusted(data)
            if isinstance(message, Request):
                self.requests.append((message, source))
            else:
                self.responses.append(message)
            self._arrived.set()
            self._arrived = trio.Event()

    async def send(self, message: Request | Response, to: tuple[str, int] | None = None) -> None:
        await self.sock.sendto(message.to_bytes(), to or self.server)

    def build(self, method: str, uri: str, *, from_: str, to: str, call_id: str, cseq: int,
              extra: tuple[tuple[str, str], ...] = (), body: bytes = b"") -> Request:
        items = [
            ("Via", f"SIP/2.0/UDP {self.local[0]}:{self.local[1]};branch={new_branch()};rport"),
            ("Max-Forwards", "70"), ("From", from_), ("To", to), ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"), ("Contact", self.contact), *extra,
        ]
        if body:
            items.append(("Content-Type", "application/sdp"))
        return Request(method=method, uri=URI.parse(uri), headers=Headers(items), body=body)

    async def request(self, method: str | None = None, seconds: float = 10.0) -> tuple[Request, tuple[str, int]]:
        with trio.fail_after(seconds):
            while True:
                for index, (request, _source) in enumerate(self.requests):
                    if method is None or request.method == method:
                        return self.requests.pop(index)
                await self._arrived.wait()

    async def response(self, call_id: str, method: str = "INVITE", *, seconds: float = 10.0,
                       final: bool = True) -> Response:
        with trio.fail_after(seconds):
            while True:
                for index, item in enumerate(self.responses):
                    if item.call_id == call_id and item.cseq.method == method and (item.status >= 200 or not final):
                        return self.responses.pop(index)
                await self._arrived.wait()

    def _auth(self, challenge: Response, method: str, uri: str) -> tuple[str, str]:
        name, answer = (("WWW-Authenticate", "Authorization") if challenge.status == 401
                        else ("Proxy-Authenticate", "Proxy-Authorization"))
        offer = next(v for v in challenge.headers.get_all(name) if "MD5" in v.upper())
        return answer, authorization_for(offer, method, uri, self.user, PASSWORD, nc=1, cnonce=new_tag())

    async def register(self) -> None:
        call_id, tag, uri = secrets.token_hex(8) + "@reg", new_tag(), f"sip:{self.domain}"
        aor = f"<sip:{self.user}@{self.domain}>"
        first = self.build("REGISTER", uri, from_=f"{aor};tag={tag}", to=aor, call_id=call_id, cseq=1,
                           extra=(("Expires", "600"),))
        await self.send(first)
        response = await self.response(call_id, "REGISTER")
        if response.status == 401:
            again = self.build("REGISTER", uri, from_=f"{aor};tag={tag}", to=aor, call_id=call_id, cseq=2,
                               extra=(("Expires", "600"), self._auth(response, "REGISTER", uri)))
            await self.send(again)
            response = await self.response(call_id, "REGISTER")
        assert response.status == 200, response.to_bytes()

    async def invite(self, target: str, body: bytes, *, from_user: str | None = None,
                     from_domain: str | None = None, to: tuple[str, int] | None = None) -> tuple[Request, Response]:
        """INVITE ``target`` (answering a 407 once); returns the request and its final
        response, ACKed.  ``from_user``/``from_domain`` let it pose as a foreign caller."""
        call_id = secrets.token_hex(8) + "@ua"
        from_ = f"<sip:{from_user or self.user}@{from_domain or self.domain}>;tag={new_tag()}"
        to_header = f"<{target}>"
        invite = self.build("INVITE", target, from_=from_, to=to_header, call_id=call_id, cseq=1, body=body)
        await self.send(invite, to)
        final = await self.response(call_id, seconds=70)
        if final.status == 407:
            await self.send(make_ack_for_error(invite, final), to)
            invite = self.build("INVITE", target, from_=from_, to=to_header, call_id=call_id, cseq=2, body=body,
                                extra=(self._auth(final, "INVITE", target),))
            await self.send(invite, to)
            final = await self.response(call_id, seconds=70)
        if final.status >= 300:
            await self.send(make_ack_for_error(invite, final), to)
        else:
            dialog = self.dialog_as_uac(invite, final, to or self.server)
            await self.send(dialog.request("ACK", cseq=invite.cseq.number), dialog.peer)
        return invite, final

    def dialog_as_uac(self, invite: Request, final: Response, peer: tuple[str, int]) -> Dialog:
        target = final.contacts[0].uri if final.contacts else invite.uri
        return Dialog(ua=self, call_id=invite.call_id, local=invite.headers.get("From") or "",
                      remote=final.headers.get("To") or "", target=target, peer=peer, cseq=invite.cseq.number)

    async def answer(self, invite: Request, source: tuple[str, int], body: bytes) -> Dialog:
        tag = new_tag()
        await self.send(self._reply(invite, 180, tag), source)
        await self.send(self._reply(invite, 200, tag, body), source)
        remote_contact = invite.contacts[0].uri
        return Dialog(ua=self, call_id=invite.call_id, local=f"{invite.headers.get('To')};tag={tag}",
                      remote=invite.headers.get("From") or "", target=remote_contact, peer=source)

    def _reply(self, request: Request, status: int, tag: str | None = None, body: bytes = b"") -> Response:
        extra = [("Contact", self.contact)]
        if body:
            extra.append(("Content-Type", "application/sdp"))
        return make_response(request, status, to_tag=tag, headers=extra, body=body)

    async def ok(self, request: Request, source: tuple[str, int], body: bytes = b"") -> None:
        await self.send(self._reply(request, 200, body=body), source)


@asynccontextmanager
async def user_agents(server: Server, *users: str, register: bool = True) -> AsyncIterator[list[UA]]:
    assert server.sip_address is not None
    async with trio.open_nursery() as nursery:
        agents = [await UA(server.sip_address, user).start(nursery) for user in users]
        try:
            if register:
                for agent in agents:
                    await agent.register()
            yield agents
        finally:
            for agent in agents:
                agent.close()
            nursery.cancel_scope.cancel()
