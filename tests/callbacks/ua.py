"""The callback tests' user agent: the call tests' scripted :class:`Phone` (one real UDP
socket of 127.0.0.1, every step decided by the test, each wait with a hard timeout)
with the steps these tests take, such as posing as a caller from a foreign network."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from engine.server import Server
from sip.message import Request, Response, make_ack_for_error, make_response, new_tag
from sip.uri import URI
from tests.calls import helpers
from tests.calls.helpers import PASSWORD, Phone, running_server

__all__ = ["PASSWORD", "UA", "Dialog", "provision", "running_server", "sdp", "user_agents"]


def sdp(port: int, ip: str = "127.0.0.1") -> bytes:
    return helpers.sdp(ip, port)


def provision(server: Server, customer: str, accounts: dict[str, tuple[str | None, str | None]] | None = None,
              dialplans: dict[str, str] | None = None) -> int:
    """A customer with dialplans and accounts (user -> (In, Out) dialplan) in the default domain."""
    return helpers.provision(server, customer=customer, accounts=accounts, dialplans=dialplans)


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


class UA(Phone):
    """A :class:`Phone` with INVITE and answer steps of its own, which take and give raw
    requests, sources and SDP (these tests script both ends of callbacks): :meth:`invite_uri`
    and :meth:`answer_request` beside the phone's :meth:`~Phone.invite` and
    :meth:`~Phone.answer`.  ``domain`` is its From host."""

    def __init__(self, server: tuple[str, int], user: str, *, domain: str = "127.0.0.1") -> None:
        super().__init__(server, user, from_host=domain)
        self.send_trying = False  # these tests answer every INVITE themselves

    async def request(self, method: str | None = None, seconds: float = 10.0) -> tuple[Request, tuple[str, int]]:
        incoming = await self.next_request(method, within=seconds)
        return incoming.request, incoming.source

    async def response(self, call_id: str, method: str = "INVITE", *, seconds: float = 10.0,
                       final: bool = True) -> Response:
        return await self.next_response(call_id=call_id, method=method, final=final, within=seconds)

    async def invite_uri(self, target: str, body: bytes, *, from_user: str | None = None,
                     from_domain: str | None = None, to: tuple[str, int] | None = None) -> tuple[Request, Response]:
        """INVITE ``target`` (answering a 407 once); returns the request and its final
        response, ACKed.  ``from_user``/``from_domain`` let it pose as a foreign caller."""
        call_id = secrets.token_hex(8) + "@ua"
        from_ = f"<sip:{from_user or self.user}@{from_domain or self.from_host}>;tag={new_tag()}"
        to_header = f"<{target}>"
        invite = self.build("INVITE", target, from_=from_, to=to_header, call_id=call_id, cseq=1, body=body)
        await self.send(invite, to)
        final = await self.response(call_id, seconds=70)
        if final.status == 407:
            await self.send(make_ack_for_error(invite, final), to)
            auth = ("Proxy-Authorization", self._authorization(final, "INVITE", target))
            invite = self.build("INVITE", target, from_=from_, to=to_header, call_id=call_id, cseq=2, body=body,
                                extra=(auth,))
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

    async def answer_request(self, invite: Request, source: tuple[str, int], body: bytes) -> Dialog:
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
