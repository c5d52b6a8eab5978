"""Callbacks: calls that come back to us and are joined to a caller who waits for them
(``sys.GoogleVoiceCall``, ``sys.HttpCallback``), and two-leg click-to-call
(``sys.Callback``).  Design notes and the HTTP protocols: docs/callbacks.md.

* :class:`CallbackWaiters` is the server's registry of *waiters*: "the next incoming call
  to any account of customer N whose From user matches this regex, within S seconds".
  The call engine offers every new In call to it (:meth:`CallbackService.offer`) before
  running the account's dialplan; a match answers both calls with each other's SDP and
  bridges them (:func:`bridge_inbound`).
* :class:`CallbackService` holds the waiters, the HTTP client that asks a service to
  ring back, and the callback-affinity record a front proxy reads in a multi-server
  deployment (:class:`CallbackAffinity`).
* :class:`CallbackMethods` is the host side of the three ``sys`` members, mixed into
  :class:`engine.dialplan_host.DialplanHost`.

User patterns are compiled with RE2 (linear time): a dialplan author's regex is matched
against attacker-chosen From users, so backtracking engines are not an option.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import re2
import trio

from engine.bridge import Bridge, Side, fix_sdp
from engine.calls import Call
from engine.dialstring import DialStringError, LegKind, classify, parse_dial_string
from engine.events import Event
from engine.forking import Forker, PlannedLeg
from engine.legs import (
    Credentials,
    InboundLeg,
    OutboundLeg,
    advertised,
    build_invite,
    reason_value,
    request_in,
)
from engine.records import Placed
from engine.webget import is_public_address
from sandbox import HostReply, PlainValue
from sip.message import Response, new_call_id, new_tag

if TYPE_CHECKING:
    from engine.calls import CallEngine
    from engine.dialplan_host import DialplanRunner
    from engine.storage import Account

log = logging.getLogger(__name__)

WAIT_MIN, WAIT_MAX, WAIT_DEFAULT = 3, 60, 30
AFFINITY_SECONDS = 30.0
CALLBACK_RING_SECONDS = 60.0
HTTP_TIMEOUT = 10.0


class CallbackRequestError(Exception):
    """The service that should ring back refused or could not be reached."""


# -- waiters ----------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Waiter:
    """One dialplan waiting for a callback.  ``bridged`` is set once a call matched and
    the two were joined; ``callback`` is that call."""

    owner: int
    pattern: str
    compiled: Any  # re2._Regexp (RE2 ships no type information)
    deadline: float  # trio clock
    caller: Call | None
    bridged: trio.Event = field(default_factory=trio.Event)
    callback: Call | None = None

    def wants(self, owner: int, from_user: str, now: float) -> bool:
        return owner == self.owner and now < self.deadline and self.compiled.search(from_user) is not None


class CallbackWaiters:
    """The registry of waiters of one server.  Every operation is synchronous and runs
    in the trio thread, so a match and the removal of its waiter happen at once: two
    callbacks can never both claim one waiter."""

    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self._clock = clock
        self._waiters: list[Waiter] = []

    def add(self, owner: int, pattern: str, seconds: int, caller: Call | None = None) -> Waiter:
        """Register a waiter; ``seconds`` outside 3-60 means 30.  Raises ValueError for a
        pattern RE2 cannot compile (backreferences, look-around...)."""
        if not WAIT_MIN <= seconds <= WAIT_MAX:
            seconds = WAIT_DEFAULT
        try:
            compiled = re2.compile(pattern)
        except re2.error as exc:
            raise ValueError(f"fromUserPattern is not a valid RE2 expression: {exc}") from exc
        waiter = Waiter(owner=owner, pattern=pattern, compiled=compiled, deadline=self._clock() + seconds, caller=caller)
        self._waiters.append(waiter)
        return waiter

    def remove(self, waiter: Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def match(self, owner_customer_id: int, from_user: str) -> Waiter | None:
        """The oldest live waiter of this owner whose pattern matches ``from_user``; it is
        removed from the registry (claimed).  Expired waiters are dropped on the way."""
        now = self._clock()
        self._waiters = [w for w in self._waiters if w.deadline > now]
        for waiter in self._waiters:
            if waiter.wants(owner_customer_id, from_user, now):
                self._waiters.remove(waiter)
                return waiter
        return None

    def pending(self, owner: int | None = None) -> list[Waiter]:
        now = self._clock()
        return [w for w in self._waiters if w.deadline > now and (owner is None or w.owner == owner)]


# -- the multi-server rule ------------------------------------------------------------------------


class CallbackAffinity:
    """"The next incoming call of these accounts belongs to this server until T".

    Kept in memory (:meth:`server_for`) and, when ``path`` is given, written atomically
    to a text file a front proxy or its sidecar reads: one line per account,
    ``user@domain<TAB>sip:host:port<TAB>expires-unix-time``, expired lines left out.
    """

    def __init__(self, *, server_uri: str, path: Path | None = None, wall_clock: Callable[[], float] = time.time) -> None:
        self.server_uri = server_uri
        self.path = path
        self._clock = wall_clock
        self._entries: dict[str, float] = {}  # "user@domain" -> expires
        #: Told of every claim (the processes of a multi-process server share them).
        self.on_claim: Callable[[list[str], float], None] | None = None

    def claim(self, aors: list[str], seconds: float = AFFINITY_SECONDS) -> None:
        if self.on_claim is not None:
            self.on_claim(aors, seconds)
        expires = self._clock() + seconds
        for aor in aors:
            self._entries[aor.lower()] = max(expires, self._entries.get(aor.lower(), 0.0))
        self._write()

    def server_for(self, aor: str) -> str | None:
        expires = self._entries.get(aor.lower())
        return self.server_uri if expires is not None and expires > self._clock() else None

    def _write(self) -> None:
        now = self._clock()
        self._entries = {aor: t for aor, t in self._entries.items() if t > now}
        if self.path is None:
            return
        lines = "".join(f"{aor}\t{self.server_uri}\t{int(t)}\n" for aor, t in sorted(self._entries.items()))
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            temporary.write_text(lines, encoding="utf-8")
            os.replace(temporary, self.path)  # readers see the old or the new file, never half
        except OSError as exc:
            log.warning("callback affinity file %s not written: %s", self.path, exc)


# -- joining two inbound calls ------------------------------------------------------------------------


def bridge_inbound(engine: CallEngine, caller: Call, callback: Call) -> Bridge:
    """Answer ``caller`` with the callback's SDP and ``callback`` with the caller's, and
    join the two UAS dialogs the way :meth:`CallEngine.bridge` joins a UAS and a UAC one."""
    assert engine.endpoint is not None and engine.nursery is not None
    caller_leg, callback_leg = caller.leg, callback.leg
    callback_dialog = callback_leg.answer(fix_sdp(caller_leg.request.body, caller_leg.source))
    caller_dialog = caller_leg.answer(fix_sdp(callback_leg.request.body, callback_leg.source))
    bridge_id = new_tag() + new_tag()
    bridge = Bridge(
        endpoint=engine.endpoint,
        caller=Side(dialog=caller_dialog, transport=caller_leg.transport, name="caller"),
        callee=Side(dialog=callback_dialog, transport=callback_leg.transport, name="callee"),
        # The engine's own end handler forgets the dialogs later, publishes and writes CDRs.
        on_end=engine._bridge_ended,
        bridge_id=bridge_id,
    )
    bridge.call = caller
    caller.bridge = callback.bridge = bridge
    engine.runner.records.inbound_bridged(caller, callback, bridge, engine.wall_clock())
    # We answered both sides: each 2xx is retransmitted until its ACK.
    engine.join_bridge(bridge, answered=[(bridge.caller, caller_leg), (bridge.callee, callback_leg)])
    engine.publish(caller, "call", state="answered", bridge=bridge_id, callback=callback_leg.request.call_id)
    return bridge


# -- the service ------------------------------------------------------------------------------------


class CallbackService:
    """Per-server callback state: waiters, the HTTP client and the affinity record.

    ``google_voice_url`` is the base URL of the GoogleVoiceCall service (docs/callbacks.md
    defines its three requests); ``allow_private`` lets ``sys.HttpCallback`` reach
    loopback/private addresses (the same operator switch as WebGet's)."""

    def __init__(
        self,
        *,
        google_voice_url: str | None,
        allow_private: bool = False,
        affinity: CallbackAffinity | None = None,
        client: httpx.AsyncClient | None = None,
        http_timeout: float = HTTP_TIMEOUT,
    ) -> None:
        self.waiters = CallbackWaiters()
        self.google_voice_url = google_voice_url.rstrip("/") if google_voice_url else None
        self.allow_private = allow_private
        self.affinity = affinity
        self.http_timeout = http_timeout
        self._own_client = client is None
        # Proxies from the environment would defeat the address check: ignore them.
        self.client = client or httpx.AsyncClient(trust_env=False, follow_redirects=False)

    async def aclose(self) -> None:
        if self._own_client:
            await self.client.aclose()

    async def __aenter__(self) -> CallbackService:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the call engine's hook -------------------------------------------------------------
    def offer(self, engine: CallEngine, call: Call) -> bool:
        """Called for each new In call (account resolved) before its dialplan runs: True
        when a waiter took it (both calls are then answered and bridged)."""
        account = call.account
        if account is None:
            return False
        from_user = call.leg.request.from_.uri.unescaped_user or ""
        while True:
            waiter = self.waiters.match(account.customer_id, from_user)
            if waiter is None:
                return False
            caller = waiter.caller
            if caller is None or caller.leg.final_status is not None or caller.leg.cancelled.is_set():
                continue  # that caller is gone: the call may still fit another waiter
            waiter.callback = call
            bridge_inbound(engine, caller, call)
            waiter.bridged.set()
            return True

    # -- HTTP -------------------------------------------------------------------------------
    async def post(self, url: str, data: dict[str, str], *, token: str | None = None, check_address: bool = True) -> httpx.Response:
        """POST form data; a refused address, a network error or a non-2xx status raises
        CallbackRequestError.  Checked URLs are connected to by the address that was
        checked (the name goes in Host), so a DNS answer cannot change in between."""
        headers = {"Connection": "close"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            target = httpx.URL(url)
            if target.scheme not in ("http", "https"):
                raise CallbackRequestError(f"{url}: only http and https URLs can be used")
            if check_address and not self.allow_private:
                target, headers["Host"] = await self._pinned(target)
            with trio.fail_after(self.http_timeout):
                response = await self.client.post(target, data=data, headers=headers, timeout=self.http_timeout)
        except trio.TooSlowError as exc:
            raise CallbackRequestError(f"{url}: no answer within {self.http_timeout:g} s") from exc
        except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
            raise CallbackRequestError(f"{url}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise CallbackRequestError(f"{url}: HTTP {response.status_code}")
        return response

    async def _pinned(self, url: httpx.URL) -> tuple[httpx.URL, str]:
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]
        if not addresses:
            raise CallbackRequestError(f"{host} has no addresses")
        for address in addresses:
            if not is_public_address(address):
                raise CallbackRequestError(f"{host} resolves to {address}, which is not public")
        return url.copy_with(host=str(addresses[0])), url.netloc.decode("ascii").rpartition("@")[2]

    # -- the GoogleVoiceCall service (docs/callbacks.md) ---------------------------------------
    async def google_voice_connect(self, email: str, password: str, forwarding: str, destination: str, phone_type: int) -> tuple[str, str]:
        """Log in and ask for the callback; returns (token, request id)."""
        if self.google_voice_url is None:
            raise CallbackRequestError("no GoogleVoiceCall service is configured on this server")
        base = self.google_voice_url
        login = await self.post(f"{base}/login", {"email": email, "password": password}, check_address=False)
        token = _json_field(login, "token")
        connect = await self.post(
            f"{base}/connect",
            {"forwardingNumber": forwarding, "destinationNumber": destination, "phoneType": str(phone_type)},
            token=token,
            check_address=False,
        )
        return token, _json_field(connect, "id")

    async def google_voice_cancel(self, token: str, request_id: str) -> None:
        assert self.google_voice_url is not None
        await self.post(f"{self.google_voice_url}/cancel", {"id": request_id}, token=token, check_address=False)


def _json_field(response: httpx.Response, name: str) -> str:
    try:
        value = response.json()[name]
    except (ValueError, KeyError, TypeError) as exc:
        raise CallbackRequestError(f"the service's answer has no {name!r}") from exc
    if not isinstance(value, str) or not value:
        raise CallbackRequestError(f"the service's {name!r} is not a string")
    return value


# -- sys.Callback: two-leg click-to-call ----------------------------------------------------------------


def placeholder_offer(host: str) -> bytes:
    """The SDP offered to the first leg of sys.Callback before the second leg exists.

    An audio stream to the discard port (9) of our own address, sendrecv: the phone's
    answer then carries its real address and codecs, which become the offer to the
    second leg.  (An ``a=inactive`` offer would force an inactive answer, and the second
    leg would be offered an inactive stream.)  Whatever the first phone sends before
    the re-INVITE goes to port 9 and is dropped."""
    session = str(int(time.time()))
    return (
        f"v=0\r\no=dialspell {session} 1 IN IP4 {host}\r\ns=dialspell callback\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        "m=audio 9 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n"
    ).encode()


def with_origin(body: bytes, offer: bytes) -> bytes:
    """``body`` with the o= line of our earlier ``offer`` (version + 1): to the first
    phone the session stays ours (RFC 3264 8: only the version changes in a re-offer)."""
    origin = next((line for line in offer.split(b"\r\n") if line.startswith(b"o=")), None)
    if origin is None:
        return body
    parts = origin.split(b" ")
    if len(parts) >= 3 and parts[2].isdigit():
        parts[2] = str(int(parts[2]) + 1).encode()
    newline = b"\r\n" if b"\r\n" in body else b"\n"
    lines = [b" ".join(parts) if line.startswith(b"o=") else line for line in body.split(newline)]
    return newline.join(lines)


class _ReInvite:
    """Context of our re-INVITE to the first leg: ACK its 2xx (13.2.2.4), each
    retransmission with the same ACK, kept as the bridge side's ``last_ack`` (so the
    bridge resends it too once this transaction has ended)."""

    def __init__(self, engine: CallEngine, leg: OutboundLeg, cseq: int, side: Side) -> None:
        self.engine, self.leg, self.cseq, self.side = engine, leg, cseq, side
        self.done = trio.Event()
        self.status = 0

    def on_response(self, response: Response) -> None:
        if response.status < 200:
            return
        dialog = self.leg.dialog
        endpoint = self.engine.endpoint
        if 200 <= response.status < 300 and dialog is not None and endpoint is not None:
            ack = self.side.last_ack
            if ack is None or ack.cseq.number != self.cseq:
                ack = self.side.last_ack = request_in(endpoint, dialog, "ACK", cseq=self.cseq)
            endpoint.send_message(ack, dialog.destination() or self.leg.destination, self.leg.transport)
        self.status = self.status or response.status
        self.done.set()

    def on_timeout(self) -> None:
        self.status = self.status or 408
        self.done.set()


# -- the sys members ----------------------------------------------------------------------------------


class CallbackMethods:
    """``sys.Callback``, ``sys.GoogleVoiceCall`` and ``sys.HttpCallback`` for
    :class:`~engine.dialplan_host.DialplanHost`.

    Relies on the host's ``active`` (the :class:`Call`; its ``account`` is the owner,
    its ``leg`` the waiting caller), ``engine`` (the :class:`CallEngine`, whose
    ``callbacks`` attribute is the server's :class:`CallbackService`), ``runner``
    (``wall_clock``, ``resolver``, ``records``) and ``trace_line``."""

    if TYPE_CHECKING:
        active: Call
        runner: DialplanRunner

        @property
        def engine(self) -> CallEngine: ...

        def trace_line(self, line: str) -> None: ...

    def _callback_service(self) -> CallbackService | None:
        service = getattr(self.engine, "callbacks", None)
        return service if isinstance(service, CallbackService) else None

    async def _sys_GoogleVoiceCall(
        self, email: PlainValue, password: PlainValue, forwarding: PlainValue, destination: PlainValue,
        pattern: PlainValue = ".*", phone_type: PlainValue = 2, seconds: PlainValue = WAIT_DEFAULT,
    ) -> HostReply:
        service = self._callback_service()
        if service is None or service.google_voice_url is None:
            return HostReply(error="sys.GoogleVoiceCall(): no callback service is configured on this server")
        ticket: list[tuple[str, str]] = []

        async def request() -> None:
            ticket.append(await service.google_voice_connect(str(email), str(password), str(forwarding), str(destination), _int(phone_type, 2)))

        async def cancel() -> None:
            if ticket:
                await service.google_voice_cancel(*ticket[0])

        return await self._wait_for_callback(service, "GoogleVoiceCall", str(pattern), _int(seconds, WAIT_DEFAULT), request, cancel)

    async def _sys_HttpCallback(
        self, url: PlainValue, params: PlainValue, pattern: PlainValue = ".*", seconds: PlainValue = WAIT_DEFAULT
    ) -> HostReply:
        service = self._callback_service()
        if service is None:
            return HostReply(error="sys.HttpCallback(): callbacks are not enabled on this server")
        form = {str(k): str(v) for k, v in params.items()} if isinstance(params, dict) else {}

        async def request() -> None:
            await service.post(str(url), form)

        return await self._wait_for_callback(service, "HttpCallback", str(pattern), _int(seconds, WAIT_DEFAULT), request, None)

    async def _wait_for_callback(
        self,
        service: CallbackService,
        name: str,
        pattern: str,
        seconds: int,
        request: Callable[[], Awaitable[None]],
        cancel: Callable[[], Awaitable[None]] | None,
    ) -> HostReply:
        call = self.active
        account = call.account
        leg = getattr(call, "leg", None)
        if account is None or not isinstance(leg, InboundLeg) or leg.final_status is not None:
            return HostReply(error=f"sys.{name}(): there is no waiting caller to connect the callback to")
        try:
            waiter = service.waiters.add(account.customer_id, pattern, seconds, caller=call)
        except ValueError as exc:
            return HostReply(error=f"sys.{name}(): {exc}")
        # The caller hears ringing while the service calls back (the waiter exists before
        # the request goes out: a quick service may ring back before it answers us).
        leg.progress(180)
        if service.affinity is not None:
            service.affinity.claim(self._owner_aors(account))
        window = waiter.deadline - trio.current_time()
        try:
            try:
                await request()
            except CallbackRequestError as exc:
                self.trace_line(f"{name}: the callback request failed: {exc}")
                return HostReply()
            self.trace_line(f"{name}: waiting up to {window:.0f} s for a call from a user matching {pattern!r}.")
            with trio.move_on_at(waiter.deadline):
                await waiter.bridged.wait()
            if waiter.bridged.is_set():
                callback = waiter.callback
                who = callback.leg.request.from_.uri if callback is not None else "?"
                self.trace_line(f"{name}: callback from {who} answered and bridged.")
                return HostReply(value=True, end=True)
            self.trace_line(f"{name}: no callback arrived in time.")
            return HostReply()
        finally:
            service.waiters.remove(waiter)
            if cancel is not None and not waiter.bridged.is_set():
                # Also on the caller's CANCEL (this task is then being cancelled).
                with trio.CancelScope(shield=True), trio.move_on_after(service.http_timeout):
                    try:
                        await cancel()
                    except CallbackRequestError as exc:
                        log.info("%s cancel request failed: %s", name, exc)

    def _owner_aors(self, account: Account) -> list[str]:
        domain = self.engine.config.default_domain
        accounts = [a for a in self.engine.store.directory().accounts.values() if a.customer_id == account.customer_id]
        return [f"{a.user}@{domain if a.domain == 'local' else a.domain}" for a in accounts]

    # -- sys.Callback -------------------------------------------------------------------------
    async def _sys_Callback(self, dest1: PlainValue, dest2: PlainValue, delay: PlainValue = 0) -> HostReply:
        engine = self.engine
        account = self.active.account
        if engine.nursery is None or engine.endpoint is None or account is None:
            return HostReply(error="sys.Callback(): calls cannot be placed now")
        seconds = min(max(_int(delay, 0), 0), 15)
        self.trace_line(f"Callback: {dest1} then {dest2} in {seconds} s.")
        engine.nursery.start_soon(self._click_to_call, account, str(dest1), str(dest2), float(seconds))
        return HostReply()

    async def _click_to_call(self, account: Account, dest1: str, dest2: str, delay: float) -> None:
        engine = self.engine
        assert engine.endpoint is not None and engine.nursery is not None
        await trio.sleep(delay)
        host = advertised(engine.endpoint.local[0])
        offer = placeholder_offer(host)
        records = self.runner.records
        owner = Placed(account)  # whose legs' CDRs these are
        first = await self._ring(owner, dest1, offer, caller_user=_user_of(dest2))
        if first is None or first.final is None:
            self._callback_event(account, "failed", dest1, "the first destination did not answer")
            return
        first_answer = fix_sdp(first.final.body, first.destination)
        second = await self._ring_while_up(first, owner, dest2, first_answer, caller_user=_user_of(dest1))
        if first.long_wait is not None and first.long_wait.is_set():
            # The first phone hung up while the second rang: the ringing stopped, and
            # its BYE gets its 200 now.
            first.hangup()  # (its BYE is answered: the record says "BYE from callee")
            if second is not None:
                second.hangup(reason_value(487, "The other party hung up"), note="The other party hung up (server)")
            self._callback_event(account, "failed", dest1, "the first destination hung up")
            return
        if second is None or second.final is None or second.dialog is None or first.dialog is None:
            first.hangup(reason_value(480, "The other party did not answer"),
                         note="The other party did not answer (server)")
            self._callback_event(account, "failed", dest2, "the second destination did not answer")
            return
        bridge_id = new_tag() + new_tag()
        bridge = Bridge(
            endpoint=engine.endpoint,
            caller=Side(dialog=first.dialog, transport=first.transport, name="caller"),
            callee=Side(dialog=second.dialog, transport=second.transport, name="callee"),
            on_end=engine._bridge_ended,
            bridge_id=bridge_id,
        )
        bridge.call = owner
        records.legs_bridged(owner, bridge, (first, second), self.runner.wall_clock())
        engine.bridges[bridge_id] = bridge
        engine.dialogs[first.dialog.key] = (bridge, bridge.caller)
        engine.dialogs[second.dialog.key] = (bridge, bridge.callee)
        engine.hand_over(bridge, bridge.caller, first)
        engine.hand_over(bridge, bridge.callee, second)
        if bridge.ended.is_set():
            self._callback_event(account, "failed", dest2, "the second destination hung up")
            return
        # Now the first phone learns where the second one's media is.
        body = with_origin(fix_sdp(second.final.body, second.destination), offer)
        reinvite = request_in(engine.endpoint, first.dialog, "INVITE", body=body, content_type="application/sdp")
        context = _ReInvite(engine, first, reinvite.cseq.number, bridge.caller)
        transaction = engine.endpoint.request(reinvite, first.dialog.destination() or first.destination, first.transport)
        transaction.context = context  # type: ignore[attr-defined]
        with trio.move_on_after(32):
            await context.done.wait()
        if not 200 <= context.status < 300:
            bridge.hang_up(by="server", reason=f"re-INVITE of the first leg failed ({context.status})")
            self._callback_event(account, "failed", dest1, f"re-INVITE answered {context.status}")
            return
        self._callback_event(account, "answered", f"{dest1} <-> {dest2}", "bridged", bridge=bridge_id)

    async def _ring_while_up(self, first: OutboundLeg, owner: Placed, dest: str, body: bytes, *,
                             caller_user: str) -> OutboundLeg | None:
        """:meth:`_ring` the second destination, stopped if the answered ``first`` leg
        hangs up meanwhile (its BYE is held on it: ``long_wait``)."""
        first.long_wait = trio.Event()
        if any(request.method == "BYE" for _, request in first.held_requests):
            first.long_wait.set()  # (a BYE that came with its 2xx)
        answered: list[OutboundLeg | None] = [None]
        async with trio.open_nursery() as nursery:
            async def ring() -> None:
                answered[0] = await self._ring(owner, dest, body, caller_user=caller_user)
                nursery.cancel_scope.cancel()

            nursery.start_soon(ring)
            await first.long_wait.wait()
            nursery.cancel_scope.cancel()
        return answered[0]

    async def _ring(self, owner: Placed, dest: str, body: bytes, *, caller_user: str) -> OutboundLeg | None:
        """Ring one destination (every binding of a local account in parallel) offering
        ``body``; the answered leg, or None.  The legs' records are ``owner``'s."""
        plans = self._callback_plans(owner, dest, body, caller_user)
        if not plans:
            return None
        forker = Forker(progress=lambda leg, status, reason, sdp: None, trace=self.trace_line)
        outcome = await forker.dial([plans], CALLBACK_RING_SECONDS)
        return outcome.winner if outcome.result == "Answered" else None

    def _callback_plans(self, owner: Placed, dest: str, body: bytes, caller_user: str) -> list[PlannedLeg]:
        engine = self.engine
        account = owner.account
        now = self.runner.wall_clock()
        try:
            parsed = parse_dial_string(dest, substitutions={})
        except DialStringError as exc:
            self.trace_line(f"Callback: {dest}: {exc}")
            return []
        target = parsed.groups[0][0]
        providers = self.runner.records.providers(account.customer_id)
        kind = classify(
            target,
            provider_names=[p.name for p in providers],
            is_local_domain=lambda h: engine.registrar.resolve_domain(h, now) is not None,
        )
        from_host = engine.config.default_domain

        def plan(uri: str, to: str, where: Callable[[], Awaitable[tuple[str, int] | None]], transport: str = "UDP",
                 credentials: Credentials | None = None, from_user: str | None = None,
                 via_host: str | None = None) -> PlannedLeg:
            async def start() -> OutboundLeg | None:
                destination = await where()
                if destination is None:
                    return None
                leg = self._send_invite(uri, to, destination, transport, body, credentials,
                                        f"<sip:{from_user or caller_user or account.user}@{via_host or from_host}>")
                if leg is not None:
                    self.runner.records.leg_started(owner, leg, self.runner.wall_clock())
                return leg
            return PlannedLeg(description=uri, start=start)

        if kind is LegKind.LOCAL:
            domain = engine.registrar.resolve_domain(target.host, now) or "local"
            callee = engine.find_account(target.user or "", domain)
            if callee is None or callee.customer_id != account.customer_id:
                self.trace_line(f"Callback: {dest} is not one of your accounts.")
                return []
            to = f"<sip:{callee.user}@{from_host if callee.domain == 'local' else callee.domain}>"
            plans = []
            for binding in engine.registrar.bindings_of(callee.id, now):
                plans.append(plan(str(binding.contact), to, _fixed(binding.received), binding.transport))
            if not plans:
                self.trace_line(f"Callback: {dest} has no current bindings.")
            return plans
        if kind is LegKind.PROVIDER:
            provider = next(p for p in providers if p.name.lower() == target.host.lower())
            uri = f"sip:{target.user}@{provider.server_host}" + (f":{provider.server_port}" if provider.server_port else "")
            credentials = Credentials(username=provider.username, password=provider.password or "") if provider.username else None
            return [plan(uri, f"<sip:{target.user}@{provider.server_host}>",
                         lambda: self._where(provider.proxy_host or provider.server_host, provider.proxy_port or provider.server_port),
                         credentials=credentials, from_user=provider.from_user,
                         via_host=provider.from_host or provider.server_host)]
        uri = target.uri or (f"sip:{target.user}@{target.host}" if target.user else f"sip:{target.host}")
        if target.port and not target.uri:
            uri += f":{target.port}"
        return [plan(uri, f"<{uri}>", lambda: self._where(target.host, target.port))]

    async def _where(self, host: str, port: int | None) -> tuple[str, int] | None:
        bare = host.strip("[]")
        try:
            ipaddress.ip_address(bare)
            return (bare, port or 5060)
        except ValueError:
            pass
        resolver = self.runner.resolver
        if resolver is None:
            return None
        from engine.locate import LocateError, locate

        try:
            targets = await locate(host, port, None, resolver=resolver)
        except LocateError as exc:
            self.trace_line(f"Callback: cannot locate {host}: {exc}")
            return None
        return (targets[0].host_ip, targets[0].port) if targets else None

    def _send_invite(self, uri: str, to: str, destination: tuple[str, int], transport: str, body: bytes,
                     credentials: Credentials | None, from_header: str) -> OutboundLeg | None:
        engine = self.engine
        assert engine.endpoint is not None
        local_host, local_port = engine.endpoint.local
        our_host = advertised(local_host)
        try:
            invite = build_invite(
                target=to, request_uri=uri, from_header=from_header, call_id=new_call_id(our_host),
                contact=engine.contact, via_host=our_host, via_port=local_port, transport=transport,
                max_forwards=70, body=body,
            )
        except Exception as exc:  # a URI the parser refuses: this leg fails alone
            self.trace_line(f"Callback: cannot call {uri}: {exc}")
            return None
        leg = OutboundLeg(endpoint=engine.endpoint, request=invite, destination=destination, transport=transport,
                          credentials=credentials, on_answer=engine.leg_answered)
        leg.start()
        return leg

    def _callback_event(self, account: Account, state: str, dest: str, detail: str, **extra: object) -> None:
        engine = self.engine
        self.trace_line(f"Callback: {state}: {dest}: {detail}")
        engine.events.publish(Event(
            owner=account.customer_id, type="call",
            data={"callback": state, "destination": dest, "detail": detail, **extra},
            time=self.runner.wall_clock(),
        ))


def _fixed(address: tuple[str, int]) -> Callable[[], Awaitable[tuple[str, int] | None]]:
    async def where() -> tuple[str, int] | None:
        return address

    return where


def _user_of(dest: str) -> str:
    text = dest.split(":", 1)[1] if dest.lower().startswith(("sip:", "sips:")) else dest
    user = text.split("@", 1)[0] if "@" in text else ""
    return "".join(c for c in user if c.isalnum() or c in "-_.+")[:64]


def _int(value: PlainValue, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default

