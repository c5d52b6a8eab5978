"""A small simulated SIP phone, built on our own ``sip`` package, for ``dialspell demo``
and for tests that need real phones without external programs.

:class:`SoftPhone` is a user agent on UDP (and TCP, which it never uses) on one loopback
port.  It can

* REGISTER its account, answering the 401/407 digest challenge;
* answer an incoming INVITE: 180 Ringing, then (after ``answer_delay``) 200 OK with an
  SDP answer, retransmitted until the ACK arrives (RFC 3261 13.3.1.4); or reject it
  with ``reject_status``;
* place a call: INVITE with an SDP offer, answering a 407 (or 401) challenge once, ACK
  the 2xx (and every retransmission of it), and report the final failure otherwise;
* hang up with BYE, and answer the peer's BYE with 200.

It carries no media: the SDP names an RTP port nobody listens on, which is all a B2BUA
that only relays signalling needs.  What happens is reported to ``on_event`` as short
lines (``"alice: 180 Ringing"``), so a CLI can print them and a test can read them.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from sip.dialog import Dialog
from sip.digest import authorization_for, choose_challenge
from sip.errors import SIPError
from sip.headers import Headers
from sip.message import Request, Response, make_response, new_branch, new_tag
from sip.transaction import (
    AckReceived,
    Action,
    CancelReceived,
    ClientTransaction,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    StrayResponse,
    TimedOut,
)
from sip.transport import SIPEndpoint
from sip.uri import URI

log = logging.getLogger(__name__)

Address = tuple[str, int]

# RFC 3261 17.1.1.1 / 13.3.1.4: the 2xx is retransmitted from T1, doubling up to T2,
# until the ACK arrives or 64*T1 has passed.
T1 = 0.5
T2 = 4.0


class PhoneError(Exception):
    """A request the phone sent failed: ``status`` is the final response's (408 when
    nothing came back)."""

    def __init__(self, what: str, status: int, reason: str) -> None:
        super().__init__(f"{what} failed: {status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(eq=False)
class PhoneCall:
    """One established call of a :class:`SoftPhone`."""

    phone: SoftPhone
    dialog: Dialog
    remote_sdp: bytes
    direction: str  # "in" (we answered) or "out" (we called)
    acked: trio.Event = field(default_factory=trio.Event)
    ended: trio.Event = field(default_factory=trio.Event)
    ended_by: str | None = None

    async def hang_up(self) -> Response:
        """Send BYE and wait for its final response (408 if Timer F fires)."""
        phone = self.phone
        bye = self.dialog.create_request("BYE", via_host=phone.host, via_port=phone.port)
        self._end("local")
        return await phone.send_request(bye, self.dialog.destination() or phone.server)

    async def wait_ended(self) -> None:
        """Until either side has hung up."""
        await self.ended.wait()

    def _end(self, by: str) -> None:
        if not self.ended.is_set():
            self.ended_by = by
            self.ended.set()
            self.phone.calls.pop(self.dialog.key, None)


class _Waiter:
    """The context of one client transaction: every response goes into a channel."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[Response | None](64)

    def deliver(self, response: Response | None) -> None:
        try:
            self.send.send_nowait(response)
        except trio.WouldBlock:
            pass  # a flood of retransmissions: the first ones are enough


class SoftPhone:
    """A simulated phone for the account ``user@domain`` that talks to ``server``."""

    def __init__(
        self,
        *,
        user: str,
        password: str,
        domain: str,
        server: Address,
        host: str = "127.0.0.1",
        answer_delay: float = 0.2,
        reject_status: int | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.user = user
        self.password = password
        self.domain = domain
        self.server = server
        self.host = host
        self.port = 0
        self.answer_delay = answer_delay
        self.reject_status = reject_status
        self.on_event = on_event
        self.calls: dict[tuple[str, str, str], PhoneCall] = {}
        self.answered: list[PhoneCall] = []
        self.invites: list[Request] = []
        self._answered_send, self._answered_receive = trio.open_memory_channel[PhoneCall](16)
        self._endpoint: SIPEndpoint | None = None
        self._nursery: trio.Nursery | None = None
        self._cseq = 0
        self._register_call_id = f"{secrets.token_hex(8)}@{host}"

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; reports the bound ``(host, port)``."""
        endpoint = SIPEndpoint(host=self.host, port=0, handler=self._on_action)
        self._endpoint = endpoint
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                address = await nursery.start(endpoint.serve)
                self.port = address[1]
                task_status.started(address)
        finally:
            # SIPEndpoint.serve leaves its UDP socket open when it is cancelled.
            udp = getattr(endpoint, "_udp", None)
            if udp is not None:
                udp.close()

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    @property
    def contact(self) -> str:
        return f"<sip:{self.user}@{self.host}:{self.port}>"

    def _event(self, text: str) -> None:
        log.debug("%s: %s", self.user, text)
        if self.on_event is not None:
            self.on_event(f"{self.user}: {text}")

    # -- client side ----------------------------------------------------------------------
    def _request(self, method: str, uri: str, *, to: str, call_id: str, from_tag: str,
                 extra: list[tuple[str, str]], body: bytes = b"",
                 content_type: str = "application/sdp") -> Request:
        self._cseq += 1
        headers = [
            ("Via", f"SIP/2.0/UDP {self.host}:{self.port};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<{self.aor}>;tag={from_tag}"),
            ("To", to),
            ("Call-ID", call_id),
            ("CSeq", f"{self._cseq} {method}"),
            ("Contact", self.contact),
            ("User-Agent", "dialspell-softphone"),
            *extra,
        ]
        if body:
            headers.append(("Content-Type", content_type))
        return Request(method=method, uri=URI.parse(uri), headers=Headers(headers), body=body)

    def _target_uri(self, target: str) -> str:
        """``target`` as a URI: a ``sip:``/``sips:`` URI as it is, else a user at our domain."""
        return target if target.startswith(("sip:", "sips:")) else f"sip:{target}@{self.domain}"

    def _start(self, request: Request, destination: Address) -> _Waiter:
        assert self._endpoint is not None, "start the phone with nursery.start(phone.run)"
        waiter = _Waiter()
        tx = self._endpoint.request(request, destination, "UDP")
        assert isinstance(tx, ClientTransaction)
        tx.context = waiter
        return waiter

    async def send_request(self, request: Request, destination: Address) -> Response:
        """Send a non-INVITE request and return its final response (a local 408 when
        Timer F fires: RFC 3261 8.1.3.1).  Bound the wait with ``trio.fail_after``."""
        waiter = self._start(request, destination)
        while True:
            response = await waiter.receive.receive()
            if response is None:
                return make_response(request, 408, "Request Timeout")
            if response.status >= 200:
                return response

    def _answer_challenge(self, request: Request, response: Response) -> tuple[str, str] | None:
        header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        challenge = choose_challenge(response.headers.get_all(header))
        if challenge is None:
            return None
        value = authorization_for(challenge, request.method, str(request.uri), self.user,
                                  self.password, nc=1, cnonce=secrets.token_hex(8))
        return ("Authorization" if response.status == 401 else "Proxy-Authorization", value)

    async def register(self, expires: int = 600) -> Response:
        """REGISTER our contact, answering one digest challenge.  Raises
        :class:`PhoneError` unless the final answer is 2xx."""
        uri = f"sip:{self.domain}"
        tag = new_tag()
        extra = [("Expires", str(expires))]
        to = f"<{self.aor}>"
        first = self._request("REGISTER", uri, to=to, call_id=self._register_call_id,
                              from_tag=tag, extra=extra)
        response = await self.send_request(first, self.server)
        if response.status in (401, 407):
            auth = self._answer_challenge(first, response)
            if auth is not None:
                second = self._request("REGISTER", uri, to=to, call_id=self._register_call_id,
                                       from_tag=tag, extra=[*extra, auth])
                response = await self.send_request(second, self.server)
        if not 200 <= response.status < 300:
            raise PhoneError("REGISTER", response.status, response.reason)
        self._event(f"registered {self.aor} (contact {self.contact})")
        return response

    async def message(self, target: str, text: str) -> Response:
        """Send ``text`` to ``target`` (a user at our domain, or a ``sip:`` URI) as a
        MESSAGE, answering one digest challenge; its final response."""
        uri = self._target_uri(target)
        call_id, tag = f"{secrets.token_hex(8)}@{self.host}", new_tag()
        body = text.encode()

        def request(extra: list[tuple[str, str]]) -> Request:
            return self._request("MESSAGE", uri, to=f"<{uri}>", call_id=call_id, from_tag=tag,
                                 extra=extra, body=body, content_type="text/plain;charset=utf-8")

        first = request([])
        self._event(f"MESSAGE {uri}: {text!r}")
        response = await self.send_request(first, self.server)
        if response.status in (401, 407):
            auth = self._answer_challenge(first, response)
            if auth is not None:
                self._event(f"{response.status} {response.reason}: answering the digest challenge")
                response = await self.send_request(request([auth]), self.server)
        self._event(f"MESSAGE answered {response.status} {response.reason}")
        return response

    async def call(self, target: str) -> PhoneCall:
        """Call ``target`` (a user at our domain, or a ``sip:`` URI) and return the
        established call; raises :class:`PhoneError` with the final failure."""
        uri = self._target_uri(target)
        call_id = f"{secrets.token_hex(8)}@{self.host}"
        tag = new_tag()
        offer = self.sdp()
        invite = self._request("INVITE", uri, to=f"<{uri}>", call_id=call_id, from_tag=tag,
                               extra=[], body=offer)
        self._event(f"INVITE {uri}")
        waiter = self._start(invite, self.server)
        challenged = False
        while True:
            response = await waiter.receive.receive()
            if response is None:
                raise PhoneError("INVITE", 408, "Request Timeout")
            if response.status < 200:
                if response.status > 100:
                    self._event(f"{response.status} {response.reason}")
                continue
            if response.status in (401, 407) and not challenged:
                challenged = True
                self._event(f"{response.status} {response.reason}: answering the digest challenge")
                auth = self._answer_challenge(invite, response)
                if auth is None:
                    raise PhoneError("INVITE", response.status, response.reason)
                invite = self._request("INVITE", uri, to=f"<{uri}>", call_id=call_id,
                                       from_tag=tag, extra=[auth], body=offer)
                waiter = self._start(invite, self.server)
                continue
            if response.status >= 300:
                self._event(f"{response.status} {response.reason}")
                raise PhoneError("INVITE", response.status, response.reason)
            return self._established(invite, response, waiter)

    def _established(self, invite: Request, response: Response, waiter: _Waiter) -> PhoneCall:
        dialog = Dialog.as_uac(invite, response, flow=self.server, transport="UDP",
                               contact=self.contact)
        call = PhoneCall(phone=self, dialog=dialog, remote_sdp=response.body, direction="out")
        self.calls[dialog.key] = call
        self._send_ack(call, invite.cseq.number)
        call.acked.set()
        self._event(f"{response.status} {response.reason}: call established, ACK sent")
        assert self._nursery is not None
        self._nursery.start_soon(self._ack_retransmissions, call, invite.cseq.number, waiter)
        return call

    def _send_ack(self, call: PhoneCall, cseq: int) -> None:
        assert self._endpoint is not None
        ack = call.dialog.create_request("ACK", via_host=self.host, via_port=self.port, cseq=cseq)
        self._endpoint.send_message(ack, call.dialog.destination() or self.server, "UDP")

    async def _ack_retransmissions(self, call: PhoneCall, cseq: int, waiter: _Waiter) -> None:
        # 13.2.2.4: every retransmission of the 2xx is answered with the ACK again.
        with trio.move_on_after(64 * T1):
            async for response in waiter.receive:
                if response is None:
                    return
                if 200 <= response.status < 300 and not call.ended.is_set():
                    self._send_ack(call, cseq)

    # -- server side ----------------------------------------------------------------------
    async def wait_answered(self) -> PhoneCall:
        """The next incoming call this phone answered (once its ACK arrived)."""
        return await self._answered_receive.receive()

    def sdp(self) -> bytes:
        """Our SDP (offer or answer): PCMU on an RTP port nobody listens on."""
        session = secrets.randbelow(10**9)
        rtp = 20000 + 2 * secrets.randbelow(10000)
        return (
            f"v=0\r\no=- {session} {session} IN IP4 {self.host}\r\ns=dialspell softphone\r\n"
            f"c=IN IP4 {self.host}\r\nt=0 0\r\nm=audio {rtp} RTP/AVP 0\r\n"
            "a=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
        ).encode()

    def _on_action(self, action: Action) -> None:
        if isinstance(action, ResponseReceived):
            if isinstance(action.transaction.context, _Waiter):
                action.transaction.context.deliver(action.response)
        elif isinstance(action, TimedOut):
            if isinstance(action.transaction.context, _Waiter):
                action.transaction.context.deliver(None)
        elif isinstance(action, StrayResponse):
            self._on_stray(action.response)
        elif isinstance(action, RequestReceived):
            self._on_request(action.transaction, action.request)
        elif isinstance(action, AckReceived):
            call = self.calls.get(Dialog.key_of(action.request))
            if call is not None and not call.acked.is_set():
                call.acked.set()
                self.answered.append(call)
                self._event("ACK received: call established")
                self._answered_send.send_nowait(call)
        elif isinstance(action, CancelReceived):
            self._respond(action.transaction, make_response(action.transaction.request, 200))
            invite = action.invite
            if invite.last_response is None or invite.last_response.status < 200:
                tag = invite.context if isinstance(invite.context, str) else new_tag()
                self._respond(invite, make_response(invite.request, 487, to_tag=tag))
                self._event("CANCEL received: 487 Request Terminated")

    def _on_stray(self, response: Response) -> None:
        try:
            key = (response.call_id, response.from_.tag or "", response.to.tag or "")
        except SIPError:
            return
        call = self.calls.get(key)
        if call is not None and response.is_success and response.cseq.method == "INVITE":
            self._send_ack(call, response.cseq.number)

    def _respond(self, tx: ServerTransaction, response: Response) -> None:
        assert self._endpoint is not None
        self._endpoint.respond(tx, response)

    def _on_request(self, tx: ServerTransaction, request: Request) -> None:
        try:
            to_tag = request.to.tag
        except SIPError:
            return
        if to_tag:
            call = self.calls.get(Dialog.key_of(request))
            if call is None:
                self._respond(tx, make_response(request, 481, "Call/Transaction Does Not Exist"))
                return
            if request.method == "BYE":
                self._respond(tx, make_response(request, 200))
                call._end("remote")
                self._event("BYE received: 200 OK, call ended")
            elif request.method == "INVITE":
                self._respond(tx, make_response(request, 200, headers=(
                    ("Contact", self.contact), ("Content-Type", "application/sdp")), body=self.sdp()))
            else:
                self._respond(tx, make_response(request, 200))
            return
        if request.method == "INVITE":
            self.invites.append(request)
            assert self._nursery is not None
            self._nursery.start_soon(self._answer, tx, request)
        elif request.method in ("OPTIONS", "NOTIFY"):
            self._respond(tx, make_response(request, 200, to_tag=new_tag()))
        elif request.method == "MESSAGE":
            text = request.body.decode("utf-8", "replace")
            self._event(f"message from {request.from_.uri}: {text!r}")
            self._respond(tx, make_response(request, 200, to_tag=new_tag()))
        else:
            self._respond(tx, make_response(request, 405, to_tag=new_tag(),
                                            headers=(("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, MESSAGE"),)))

    async def _answer(self, tx: ServerTransaction, request: Request) -> None:
        tag = new_tag()
        tx.context = tag  # a CANCEL's 487 carries the same To tag as our 180
        self._event(f"incoming INVITE from {request.from_.uri}")
        if self.reject_status is not None:
            self._respond(tx, make_response(request, self.reject_status, to_tag=tag))
            self._event(f"rejected with {self.reject_status}")
            return
        self._respond(tx, make_response(request, 180, to_tag=tag, headers=(("Contact", self.contact),)))
        self._event("180 Ringing sent")
        await trio.sleep(self.answer_delay)
        if tx.last_response is not None and tx.last_response.status >= 200:
            return  # cancelled meanwhile (487 already sent)
        dialog = Dialog.as_uas(request, local_tag=tag, contact=self.contact, flow=tx.source,
                               transport="UDP")
        call = PhoneCall(phone=self, dialog=dialog, remote_sdp=request.body, direction="in")
        self.calls[dialog.key] = call
        ok = make_response(request, 200, to_tag=tag, body=self.sdp(), headers=(
            ("Contact", self.contact), ("Content-Type", "application/sdp")))
        self._respond(tx, ok)
        self._event("200 OK sent (answered)")
        # 13.3.1.4: the UAS core retransmits the 2xx until the ACK arrives.
        interval = T1
        with trio.move_on_after(64 * T1):
            while not call.acked.is_set():
                with trio.move_on_after(interval):
                    await call.acked.wait()
                if not call.acked.is_set():
                    assert self._endpoint is not None
                    self._endpoint.send_message(ok, tx.destination, "UDP")
                    interval = min(2 * interval, T2)
        if not call.acked.is_set():
            self._event("no ACK for the 200 OK: hanging up")
            await call.hang_up()
