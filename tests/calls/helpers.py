"""Helpers for the call tests: a server with its own configuration, provisioning of
customers/accounts/dialplans, and a small scripted SIP phone (UAC and UAS) on a real
UDP socket whose every step the test decides."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import trio

from engine.config import ServerConfig
from engine.server import Server
from sip.digest import authorization_for
from sip.headers import Headers
from sip.message import Request, Response, make_response, new_branch, new_tag
from sip.parse import parse_message_untrusted
from sip.uri import URI
from tests.conftest import free_port

PASSWORD = "pw-Secret1"

SDP_TEMPLATE = (
    "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def sdp(ip: str, port: int) -> bytes:
    return SDP_TEMPLATE.format(ip=ip, port=port).encode()


@asynccontextmanager
async def running_server(tmp_path: Path, **overrides: Any) -> AsyncIterator[Server]:
    """A dialspell server on 127.0.0.1 with free ports and ``overrides`` in its config."""
    settings: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "sip_host": "127.0.0.1",
        "sip_port": free_port(),
        "http_port": free_port(socket.SOCK_STREAM),
        "domain": "127.0.0.1",
        "stop_grace": 0.0,  # a test's end need not wait for its calls' last BYEs
    }
    settings.update(overrides)
    server = Server(ServerConfig(**settings))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            yield server
            nursery.cancel_scope.cancel()
    finally:
        # The endpoint's UDP socket outlives a cancelled serve() (sip/transport.py
        # wraps it without closing it); close it here so no socket leaks into later tests.
        udp = getattr(server.endpoint, "_udp", None)
        if udp is not None:
            udp.close()
        server.close()


def provision(
    server: Server,
    *,
    customer: str = "acme",
    accounts: dict[str, tuple[str | None, str | None]] | None = None,
    dialplans: dict[str, str] | None = None,
    trace_email: str | None = None,
) -> int:
    """Create a customer, its dialplans and its accounts (user -> (in, out) dialplan
    names) in the default domain; returns the customer id."""
    store = server.store
    now = time.time()
    owner = store.customer_by_name(customer) or store.add_customer(customer, PASSWORD, now=now)
    for name, source in (dialplans or {}).items():
        store.put_dialplan(owner.id, name, source, trace_email=trace_email, now=now)
    for user, (in_dp, out_dp) in (accounts or {}).items():
        store.add_account(user, "local", customer=customer, password=PASSWORD, in_dialplan=in_dp,
                          out_dialplan=out_dp, now=now)
    return owner.id


def rows(server: Server, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    return server.store.query_all(sql, params)


async def wait_rows(server: Server, sql: str, count: int, params: tuple[object, ...] = (), within: float = 10) -> list[Any]:
    """Poll the database (the writer commits asynchronously) until ``count`` rows match."""
    with trio.fail_after(within):
        while True:
            found = rows(server, sql, params)
            if len(found) >= count:
                return found
            await trio.sleep(0.05)


async def registered(server: Server, *aors: str) -> None:
    """Wait until each ``user@host`` has a binding.  (A real phone's REGISTER_OK event may
    come before the test is connected to hear it: the registrar is asked instead.)"""
    with trio.fail_after(10):
        while True:
            if all(server.registrar.lookup(aor, time.time()) for aor in aors):
                return
            await trio.sleep(0.05)


@dataclass
class Incoming:
    """A request a phone received and the address it came from."""

    request: Request
    source: tuple[str, int]


class Phone:
    """A scripted SIP user agent on one UDP socket of 127.0.0.1.

    Received requests and responses queue up separately; the test asks for the next one
    (with a hard timeout) and decides what to answer."""

    def __init__(self, server: tuple[str, int], user: str, *, password: str = PASSWORD,
                 from_host: str = "127.0.0.1") -> None:
        self.server = server
        self.user = user
        self.from_host = from_host  # not a served domain: an outside caller (In calls)
        self.password = password
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.local: tuple[str, int] = ("127.0.0.1", 0)
        self.requests: list[Incoming] = []
        self.responses: list[Response] = []
        self._arrived = trio.Event()
        self.cseq = 0
        self.auto_ack = True  # ACK 2xx to our INVITEs as they come
        self.send_trying = True  # answer each INVITE with 100 Trying at once

    async def start(self, nursery: trio.Nursery, host: str = "127.0.0.1") -> Self:
        await self.sock.bind((host, 0))
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
                if message.method == "INVITE" and self.send_trying:
                    # As phones do: 100 at once, which also lets the caller CANCEL (9.1).
                    await self.sock.sendto(make_response(message, 100).to_bytes(), source)
                self.requests.append(Incoming(message, source))
            else:
                self.responses.append(message)
            self._arrived.set()
            self._arrived = trio.Event()

    async def send(self, message: Request | Response, to: tuple[str, int] | None = None) -> None:
        await self.sock.sendto(message.to_bytes(), to or self.server)

    # -- waiting -----------------------------------------------------------------------------
    async def next_request(self, method: str | None = None, within: float = 5.0) -> Incoming:
        with trio.fail_after(within):
            while True:
                for index, item in enumerate(self.requests):
                    if method is None or item.request.method == method:
                        return self.requests.pop(index)
                await self._arrived.wait()

    async def next_response(self, *, call_id: str | None = None, method: str = "INVITE", final: bool = False,
                            within: float = 5.0) -> Response:
        with trio.fail_after(within):
            while True:
                for index, item in enumerate(self.responses):
                    if call_id is not None and item.call_id != call_id:
                        continue
                    if item.cseq.method != method or (final and item.status < 200):
                        continue
                    return self.responses.pop(index)
                await self._arrived.wait()

    async def no_request(self, method: str, seconds: float) -> None:
        """Assert that no ``method`` request arrives within ``seconds``."""
        with trio.move_on_after(seconds):
            got = await self.next_request(method, within=seconds + 1)
            raise AssertionError(f"unexpected {method}: {got.request.to_bytes()!r}")

    # -- registering --------------------------------------------------------------------------
    def _request(self, method: str, uri: str, *, to: str, call_id: str, from_tag: str,
                 extra: Iterable[tuple[str, str]] = (), body: bytes = b"",
                 cseq: int | None = None, content_type: str = "application/sdp") -> Request:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        return self.build(method, uri, from_=f"<sip:{self.user}@{self.from_host}>;tag={from_tag}", to=to,
                          call_id=call_id, cseq=cseq, extra=extra, body=body, content_type=content_type)

    def build(self, method: str, uri: str, *, from_: str, to: str, call_id: str, cseq: int,
              extra: Iterable[tuple[str, str]] = (), body: bytes = b"",
              content_type: str = "application/sdp") -> Request:
        """A request from this phone's socket with exactly these From, To and CSeq."""
        headers = [
            ("Via", f"SIP/2.0/UDP {self.local[0]}:{self.local[1]};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", from_),
            ("To", to),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", self.contact),
            *extra,
        ]
        if body:
            headers.append(("Content-Type", content_type))
        return Request(method=method, uri=URI.parse(uri), headers=Headers(headers), body=body)

    async def register(self, expires: int = 600) -> Response:
        call_id = secrets.token_hex(8) + "@reg"
        tag = new_tag()
        aor = f"<sip:{self.user}@127.0.0.1>"
        first = self._request("REGISTER", "sip:127.0.0.1", to=aor, call_id=call_id, from_tag=tag,
                              extra=[("Expires", str(expires))])
        await self.send(first)
        response = await self.next_response(call_id=call_id, method="REGISTER", final=True)
        if response.status == 401:
            auth = self._authorization(response, "REGISTER", "sip:127.0.0.1")
            second = self._request("REGISTER", "sip:127.0.0.1", to=aor, call_id=call_id, from_tag=tag,
                                   extra=[("Expires", str(expires)), ("Authorization", auth)])
            await self.send(second)
            response = await self.next_response(call_id=call_id, method="REGISTER", final=True)
        assert response.status == 200, response.to_bytes()
        return response

    def _authorization(self, challenge: Response, method: str, uri: str) -> str:
        name = "WWW-Authenticate" if challenge.status == 401 else "Proxy-Authenticate"
        offers = challenge.headers.get_all(name)
        chosen = next((c for c in offers if "MD5" in c.upper() and "SHA" not in c.upper()), offers[-1])
        return authorization_for(chosen, method, uri, self.user, self.password, nc=1, cnonce=new_tag())

    # -- calling ---------------------------------------------------------------------------------
    async def invite(self, target_user: str, *, body: bytes | None = None, max_forwards: int = 70,
                     extra: Iterable[tuple[str, str]] = (), authenticate: bool = True) -> Call:
        """Send an INVITE to ``target_user@127.0.0.1``; answer a 407 once.  Returns the
        call (the test then waits for its responses)."""
        uri = f"sip:{target_user}@127.0.0.1:{self.server[1]}"
        call_id, from_tag, to = secrets.token_hex(8) + "@uac", new_tag(), f"<sip:{target_user}@127.0.0.1>"
        offer = body if body is not None else sdp("127.0.0.1", 40000)
        headers = [*extra]
        invite = self._request("INVITE", uri, to=to, call_id=call_id, from_tag=from_tag, extra=headers, body=offer)
        invite = invite.replace(headers=invite.headers.with_replaced("Max-Forwards", str(max_forwards)))
        call = Call(phone=self, call_id=call_id, from_tag=from_tag, uri=uri, to=to, invite=invite, body=offer)
        await self.send(call.invite)
        if authenticate:
            first = await self.next_response(call_id=call.call_id, final=True)
            if first.status == 407:
                await self._ack_error(call.invite, first)
                auth = self._authorization(first, "INVITE", uri)
                call.invite = self._request("INVITE", uri, to=call.to, call_id=call.call_id, from_tag=call.from_tag,
                                            extra=[*headers, ("Proxy-Authorization", auth)], body=call.body)
                call.invite = call.invite.replace(
                    headers=call.invite.headers.with_replaced("Max-Forwards", str(max_forwards)))
                await self.send(call.invite)
            else:
                self.responses.insert(0, first)
        return call

    async def message(self, uri: str, text: str, *, to: str | None = None, max_forwards: int = 70,
                      authenticate: bool = True) -> tuple[Request, Response]:
        """Send a MESSAGE (text/plain) to ``uri``, answering a 407 once; the request sent
        last and its final response."""
        call_id, tag = secrets.token_hex(8) + "@msg", new_tag()

        async def send(extra: list[tuple[str, str]]) -> tuple[Request, Response]:
            request = self._request("MESSAGE", uri, to=to or f"<{uri}>", call_id=call_id, from_tag=tag,
                                    body=text.encode(), content_type="text/plain", extra=extra)
            request = request.replace(headers=request.headers.with_replaced("Max-Forwards", str(max_forwards)))
            await self.send(request)
            return request, await self.next_response(call_id=call_id, method="MESSAGE", final=True)

        request, final = await send([])
        if final.status == 407 and authenticate:
            request, final = await send([("Proxy-Authorization", self._authorization(final, "MESSAGE", uri))])
        return request, final

    async def _ack_error(self, invite: Request, response: Response) -> None:
        from sip.message import make_ack_for_error

        await self.send(make_ack_for_error(invite, response))

    async def final(self, call: Call, within: float = 10.0) -> Response:
        """The final response to the call's INVITE (a non-2xx is acknowledged)."""
        cseq = call.invite.cseq.number
        with trio.fail_after(within):
            while True:
                response = await self.next_response(call_id=call.call_id, final=True, within=within)
                if response.cseq.number != cseq:
                    continue
                if response.status >= 300:
                    await self._ack_error(call.invite, response)
                elif self.auto_ack:
                    await call.ack(response)
                call.final = response
                return response

    # -- answering --------------------------------------------------------------------------------
    def reply(self, incoming: Incoming, status: int, *, body: bytes = b"", to_tag: str | None = None,
              headers: Iterable[tuple[str, str]] = ()) -> Response:
        extra = list(headers)
        if status > 100:
            extra.append(("Contact", self.contact))
        if body:
            extra.append(("Content-Type", "application/sdp"))
        return make_response(incoming.request, status, None, to_tag=to_tag, headers=extra, body=body)

    async def answer(self, incoming: Incoming, *, body: bytes | None = None, ring: bool = True) -> Answered:
        """180 then 200 with SDP; returns the callee-side dialog."""
        tag = new_tag()
        if ring:
            await self.send(self.reply(incoming, 180, to_tag=tag), incoming.source)
        ok = self.reply(incoming, 200, to_tag=tag, body=body if body is not None else sdp("127.0.0.1", 41000))
        await self.send(ok, incoming.source)
        return Answered(phone=self, invite=incoming.request, ok=ok, peer=incoming.source, local_tag=tag)


@dataclass
class Call:
    """The caller's side of one call (UAC dialog)."""

    phone: Phone
    call_id: str
    from_tag: str
    uri: str
    to: str
    invite: Request  # the last one sent (the second if the first was challenged)
    body: bytes = b""
    final: Response | None = None
    cseq: int = 10

    def _in_dialog(self, method: str, *, cseq: int | None = None, body: bytes = b"",
                   content_type: str = "application/sdp", extra: Iterable[tuple[str, str]] = ()) -> Request:
        assert self.final is not None
        contact = self.final.contacts[0].uri if self.final.contacts else URI.parse(self.uri)
        to = self.final.headers.get("To") or self.to
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        headers = [
            ("Via", f"SIP/2.0/UDP {self.phone.local[0]}:{self.phone.local[1]};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{self.phone.user}@{self.phone.from_host}>;tag={self.from_tag}"),
            ("To", to),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", self.phone.contact),
            *extra,
        ]
        if body:
            headers.append(("Content-Type", content_type))
        return Request(method=method, uri=contact, headers=Headers(headers), body=body)

    async def ack(self, response: Response) -> None:
        self.final = response
        await self.phone.send(self._in_dialog("ACK", cseq=response.cseq.number))

    async def cancel(self) -> None:
        from sip.message import make_cancel

        await self.phone.send(make_cancel(self.invite))

    async def bye(self) -> Response:
        request = self._in_dialog("BYE")
        await self.phone.send(request)
        return await self.phone.next_response(call_id=self.call_id, method="BYE", final=True)

    async def send_in_dialog(self, method: str, body: bytes = b"", *, content_type: str = "application/sdp",
                             headers: Iterable[tuple[str, str]] = ()) -> Response:
        """A request other than INVITE/ACK/BYE in the dialog; its final response."""
        request = self._in_dialog(method, body=body, content_type=content_type, extra=list(headers))
        await self.phone.send(request)
        while True:
            response = await self.phone.next_response(call_id=self.call_id, method=method, final=True)
            if response.cseq.number == request.cseq.number:
                return response

    async def reinvite(self, body: bytes) -> Response:
        request = self._in_dialog("INVITE", body=body)
        await self.phone.send(request)
        while True:
            response = await self.phone.next_response(call_id=self.call_id, final=True)
            if response.cseq.number == request.cseq.number:
                break
        if 200 <= response.status < 300:
            await self.phone.send(self._in_dialog("ACK", cseq=request.cseq.number))
        return response


@dataclass
class Answered:
    """The callee's side of one call (UAS dialog)."""

    phone: Phone
    invite: Request
    ok: Response
    peer: tuple[str, int]
    local_tag: str
    cseq: int = 1

    def request(self, method: str, body: bytes = b"", *, content_type: str = "application/sdp",
                extra: Iterable[tuple[str, str]] = ()) -> Request:
        contact = self.invite.contacts[0].uri
        self.cseq += 1
        headers = [
            ("Via", f"SIP/2.0/UDP {self.phone.local[0]}:{self.phone.local[1]};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"{self.invite.headers.get('To')};tag={self.local_tag}"),
            ("To", self.invite.headers.get("From") or ""),
            ("Call-ID", self.invite.call_id),
            ("CSeq", f"{self.cseq} {method}"),
            ("Contact", self.phone.contact),
            *extra,
        ]
        if body:
            headers.append(("Content-Type", content_type))
        return Request(method=method, uri=contact, headers=Headers(headers), body=body)

    async def send_in_dialog(self, method: str, body: bytes = b"", *, content_type: str = "application/sdp",
                             headers: Iterable[tuple[str, str]] = ()) -> Response:
        """A request other than INVITE/ACK/BYE in the dialog; its final response."""
        request = self.request(method, body, content_type=content_type, extra=list(headers))
        await self.phone.send(request, self.peer)
        while True:
            response = await self.phone.next_response(call_id=self.invite.call_id, method=method, final=True)
            if response.cseq.number == request.cseq.number:
                return response

    async def bye(self) -> Response:
        request = self.request("BYE")
        await self.phone.send(request, self.peer)
        return await self.phone.next_response(call_id=self.invite.call_id, method="BYE", final=True)

    async def reinvite(self, body: bytes) -> Response:
        request = self.request("INVITE", body=body)
        await self.phone.send(request, self.peer)
        while True:
            response = await self.phone.next_response(call_id=self.invite.call_id, final=True)
            if response.cseq.number == request.cseq.number:
                break
        if 200 <= response.status < 300:
            ack = self.request("ACK")
            ack = ack.replace(headers=ack.headers.with_replaced("CSeq", f"{request.cseq.number} ACK"))
            await self.phone.send(ack, self.peer)
        return response

    async def ok_to(self, incoming: Incoming, body: bytes = b"") -> None:
        await self.phone.send(self.phone.reply(incoming, 200, body=body), incoming.source)


@asynccontextmanager
async def phones(server: Server, *users: str, register: bool = True) -> AsyncIterator[list[Phone]]:
    """Phones for ``users`` (registered unless told otherwise), closed at the end.  A
    user written ``name@host`` is an outside caller with that From host."""
    assert server.sip_address is not None
    async with trio.open_nursery() as nursery:
        started = []
        for spec in users:
            user, _, host = spec.partition("@")
            started.append(await Phone(server.sip_address, user, from_host=host or "127.0.0.1").start(nursery))
        try:
            if register:
                for phone in started:
                    if phone.from_host == "127.0.0.1":
                        await phone.register()
            yield started
        finally:
            for phone in started:
                phone.close()
            nursery.cancel_scope.cancel()


async def ring(caller: Phone, callee: Phone, call: Call, incoming: Incoming, to_tag: str) -> Response:
    """``callee`` rings (180 to ``incoming``, the INVITE of ``call``) and the caller waits
    for that 180; returns it (its To tag names the early dialog it opened)."""
    await callee.send(callee.reply(incoming, 180, to_tag=to_tag), incoming.source)
    while True:
        response = await caller.next_response(call_id=call.call_id)
        if response.status == 180:
            return response


async def ends_cancelled(phone: Phone, ringing: Incoming, to_tag: str) -> None:
    """``phone`` gets our CANCEL of the INVITE ``ringing``, and answers 200, then 487."""
    cancel = await phone.next_request("CANCEL")
    assert cancel.request.call_id == ringing.request.call_id
    await phone.send(phone.reply(cancel, 200), cancel.source)
    await phone.send(phone.reply(ringing, 487, to_tag=to_tag), ringing.source)


def raw_socket(phone: Phone) -> socket.socket:
    """A second handle on ``phone``'s socket, to send from without a trio checkpoint:
    datagrams sent back to back wait together in the server's socket, which reads them
    in one batch."""
    return socket.socket(fileno=os.dup(phone.sock.fileno()))
