"""The two kinds of call leg a B2BUA holds, on top of the transaction layer.

* :class:`InboundLeg`: the caller's INVITE, which we answer as a UAS (RFC 3261 13.3).
  It sends provisional and final responses, retransmits its 2xx until the ACK arrives
  (13.3.1.4), and is cancelled by the caller's CANCEL.
* :class:`OutboundLeg`: an INVITE we send as a UAC (13.2) to a phone, a provider or our
  own server.  It answers digest challenges, acknowledges a 2xx (13.2.2.4), and can be
  cancelled (9.1) or hung up.

Both create a :class:`~sip.dialog.Dialog` once answered; :mod:`engine.bridge` joins two
dialogs.  Everything here runs in the server's trio loop and is driven by the events the
transaction layer hands to the call engine.
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from sip.dialog import Address, Dialog
from sip.digest import authorization_for, parse_challenge
from sip.errors import SIPError
from sip.headers import Headers, sent_via
from sip.message import Request, Response, make_response, new_branch, new_tag, stateless_tag
from sip.transaction import ClientTransaction, ServerTransaction

if TYPE_CHECKING:
    from sip.transport import SIPEndpoint

log = logging.getLogger(__name__)

#: The methods a call's dialogs take from either party (RFC 3261 20.5: sent in our
#: INVITEs and 2xx answers).  REFER is not among them: see ``bridge.Bridge.on_request``.
DIALOG_ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"

#: The header a 401 or 407 cannot be sent without.
_CHALLENGE_HEADERS = {401: "www-authenticate", 407: "proxy-authenticate"}

T1 = 0.5
T2 = 4.0


def reason_value(cause: int, text: str) -> str:
    """A Reason header value (RFC 3326) for a BYE or CANCEL we send: the SIP status
    that stands for why, and the words."""
    quoted = text.replace("\\", "").replace('"', "'")
    return f'SIP;cause={cause};text="{quoted}"'


# 2xx from further dialogs (a forking proxy beyond the callee) ACKed and hung up per
# leg; more are ignored, so a peer inventing To tags costs a bounded amount of work.
MAX_OTHER_ANSWERS = 8
# For a leg given up because the call went elsewhere.
CANCELLED_REASON = reason_value(200, "Call completed elsewhere")
# Why an answered leg outside a bridge was hung up, for its call record.
ANSWERED_AFTER_CANCEL = "Answered after the call was cancelled (server)"
ANSWERED_AFTER_DIAL = "Answered after the Dial ended (server)"
ANSWERED_ELSEWHERE = "Call completed elsewhere (server)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """Digest credentials for a provider leg."""

    username: str
    password: str


class InboundLeg:
    """The caller's side: a server INVITE transaction we answer, then a UAS dialog."""

    def __init__(self, *, endpoint: SIPEndpoint, transaction: ServerTransaction, contact: str) -> None:
        self.endpoint = endpoint
        self.transaction = transaction
        self.request = transaction.request
        self.local_tag = new_tag()
        self.contact = contact
        self.dialog: Dialog | None = None
        self.final_status: int | None = None
        self.final_reason: str | None = None  # the reason phrase of our final response
        self.cancelled = trio.Event()
        self._answer: Response | None = None
        self.progress_sent = False

    @property
    def source(self) -> Address:
        return self.transaction.source

    @property
    def transport(self) -> str:
        return self.transaction.transport

    @property
    def answered(self) -> bool:
        return self.final_status is not None and 200 <= self.final_status < 300

    @property
    def answer_response(self) -> Response | None:
        """The 2xx we sent the caller, once answered."""
        return self._answer

    def progress(self, status: int, reason: str | None = None, *, body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()) -> None:
        """Send a provisional response (180/183, with SDP for early media)."""
        if self.final_status is not None:
            return
        extra = list(headers)
        extra.append(("Contact", self.contact))
        if body:
            extra.append(("Content-Type", "application/sdp"))
        response = make_response(self.request, status, reason, to_tag=self.local_tag, headers=extra, body=body)
        self.progress_sent = True
        self.endpoint.respond(self.transaction, response)

    def reject(self, status: int, reason: str | None = None, *, headers: tuple[tuple[str, str], ...] = ()) -> None:
        if self.final_status is not None:
            return
        challenge = _CHALLENGE_HEADERS.get(status)
        if challenge is not None and not any(name.lower() == challenge for name, _ in headers):
            # A 401/407 must carry its challenge (RFC 3261 20.44, 20.27).  One without it
            # is a next hop's challenge the caller cannot answer: a provider's refusal
            # of our credentials after its challenge was answered once, or a phone
            # asking for credentials we do not hold.  The caller gets 403.
            status, reason = 403, f"Forbidden (authentication with the next hop failed: {status})"
        self.final_status = status
        response = make_response(self.request, status, reason, to_tag=self.local_tag, headers=headers)
        self.final_reason = response.reason
        self.endpoint.respond(self.transaction, response)

    def challenge(self, status: int, headers: tuple[tuple[str, str], ...]) -> None:
        """Answer 401/407 without keeping the transaction (RFC 3261 8.2.7): a flood of
        unauthenticated INVITEs leaves no state behind, and a retransmitted INVITE is
        challenged again, with the same To tag."""
        assert self.final_status is None
        self.final_status = status
        response = make_response(self.request, status, to_tag=stateless_tag(self.request), headers=headers)
        self.final_reason = response.reason
        self.endpoint.respond_statelessly(self.transaction, response)

    def answer(self, body: bytes, *, headers: tuple[tuple[str, str], ...] = ()) -> Dialog:
        """Send 200 OK with ``body`` (the SDP answer) and create the UAS dialog."""
        assert self.final_status is None
        self.final_status = 200
        extra = [("Contact", self.contact), ("Allow", DIALOG_ALLOW), *headers]
        if body:
            extra.append(("Content-Type", "application/sdp"))
        response = make_response(self.request, 200, to_tag=self.local_tag, headers=extra, body=body)
        self.final_reason = response.reason
        self._answer = response
        self.dialog = Dialog.as_uas(
            self.request, local_tag=self.local_tag, contact=self.contact, flow=self.source, transport=self.transport
        )
        self.endpoint.respond(self.transaction, response)
        return self.dialog

    def resend_answer(self) -> None:
        assert self._answer is not None
        self.endpoint.send_message(self._answer, self.transaction.destination, self.transport)


class AnswerRetransmitter:
    """Retransmits the 2xx of answered inbound legs until their ACK (13.3.1.4: T1,
    doubling to T2, for 64*T1; over TCP only the 64*T1 wait), for every call from one
    task that sleeps until the next one is due, instead of a task per call.  A leg
    whose ACK never comes gets ``on_no_ack()`` (the UAS then ends the dialog)."""

    #: Due retransmissions are sent together, up to this late (T1 is 0.5 s).
    GRANULE = 0.05

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Unacked]] = []
        self._count = 0
        self._running = False

    def watch(self, leg: InboundLeg, acked: trio.Event, on_no_ack: Callable[[], None], nursery: trio.Nursery) -> None:
        """Retransmit ``leg``'s 2xx until ``acked`` is set."""
        now = trio.current_time()
        give_up = now + 64 * T1
        first = give_up if leg.transport.upper() != "UDP" else now + T1
        self._push(first, _Unacked(leg, acked, on_no_ack, give_up, T1))
        if not self._running:
            self._running = True
            nursery.start_soon(self._run)

    def __len__(self) -> int:
        return len(self._heap)

    def _push(self, due: float, entry: _Unacked) -> None:
        self._count += 1
        heapq.heappush(self._heap, (due, self._count, entry))

    async def _run(self) -> None:
        heap = self._heap
        try:
            while heap:
                await trio.sleep_until(heap[0][0] + self.GRANULE)
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    entry = heapq.heappop(heap)[2]
                    if entry.acked.is_set():
                        continue
                    if now >= entry.give_up:
                        entry.on_no_ack()
                        continue
                    entry.leg.resend_answer()
                    entry.interval = min(entry.interval * 2, T2)
                    self._push(min(now + entry.interval, entry.give_up), entry)
        finally:
            self._running = False


@dataclass(slots=True)
class _Unacked:
    leg: InboundLeg
    acked: trio.Event
    on_no_ack: Callable[[], None]
    give_up: float
    interval: float


class OutboundLeg:
    """An INVITE we send (UAC).  Responses arrive through :meth:`on_response`."""

    def __init__(
        self,
        *,
        endpoint: SIPEndpoint,
        request: Request,
        destination: Address,
        transport: str = "UDP",
        credentials: Credentials | None = None,
        on_provisional: Callable[[OutboundLeg, Response], None] | None = None,
        on_answer: Callable[[OutboundLeg], None] | None = None,
        alternates: list[Address] | None = None,
    ) -> None:
        self.endpoint = endpoint
        # Further targets of the same destination (RFC 3263 4.3), tried in order.
        self.alternates = list(alternates or ())
        self.request = request
        self.destination = destination
        self.transport = transport
        self.credentials = credentials
        self.on_provisional = on_provisional
        # Told of the 2xx that makes the dialog (also of one that crossed our CANCEL,
        # before the leg hangs it up).
        self.on_answer = on_answer
        # Requests the callee sent in that dialog before a bridge took it over (a BYE
        # right after its 2xx, read in the same batch): the bridge handles them once
        # built, or hangup() answers them.
        self.held_requests: list[tuple[ServerTransaction, Request]] = []
        # Made by a caller of ours that waits long before bridging this leg (sys.Callback,
        # while its second destination rings), and set if the callee's BYE comes
        # meanwhile.  Other requests are then answered at once instead of held.
        self.long_wait: trio.Event | None = None
        self.transaction: ClientTransaction | None = None
        self.final: Response | None = None
        self.final_event = trio.Event()
        self._on_final: list[Callable[[Response], None]] = []
        self._on_hung_up: list[Callable[[str], None]] = []
        self.dialog: Dialog | None = None
        self.cancel_requested = False
        self.provisional: Response | None = None
        self._auth_attempts = 0
        # Late offer (an INVITE without SDP): the 2xx carries the offer, and its ACK must
        # carry the answer (RFC 3261 13.2.2.4, RFC 3264), which is in the caller's ACK.
        # None until known; the 2xx whose ACK waits for it meanwhile.
        self.late_answer: bytes | None = None
        self._ack_waiting: Response | None = None
        # The ACK sent for the answer, and where it went: each retransmission of that 2xx
        # gets the very same ACK (13.2.2.4), during the transaction and after it.
        self._ack: tuple[Request, Address] | None = None
        # ACKs of 2xx from other branches of a forking proxy beyond the callee (another
        # To tag): each such dialog is ACKed and hung up once, its ACK resent as above.
        self._other_answers: dict[str, tuple[Request, Address]] = {}
        self.started_at: float | None = None
        self.progress_at: float | None = None
        self.answered_at: float | None = None

    @property
    def call_id(self) -> str:
        return self.request.call_id

    def start(self) -> None:
        self.started_at = trio.current_time()
        self._send(self.request)

    def _send(self, request: Request) -> None:
        self.release()  # a retry: the previous transaction has had its final response
        self.request = request
        tx = self.endpoint.request(request, self.destination, self.transport)
        assert isinstance(tx, ClientTransaction)
        tx.context = self
        self.transaction = tx

    def release(self) -> None:
        """Stop hearing from the INVITE transaction.  It lingers after its final response
        (up to 32 s, Timer D/M) to absorb retransmissions, and must not keep this leg,
        and the call behind it, alive that long."""
        if self.transaction is not None and self.transaction.context is self:
            self.transaction.context = None

    # -- events from the transaction layer (via the call engine) -------------------------
    def on_response(self, response: Response) -> None:
        status = response.status
        if status < 200:
            if status > 100:
                self.provisional = response
                if self.progress_at is None:
                    self.progress_at = trio.current_time()
                if self.on_provisional is not None and not self.cancel_requested:
                    self.on_provisional(self, response)
            return
        if status == 503 and self._try_next_target():
            return
        if status in (401, 407) and self.credentials is not None and not self.cancel_requested and (
            self._auth_attempts < 1 or (self._auth_attempts < 2 and _stale(response))
        ):
            # 22.2: answer the challenge with a new INVITE (CSeq + 1, new branch): once,
            # and once more if the second challenge only says our nonce was stale (RFC
            # 2617 3.2.1: the credentials were right; retry "without reprompting").
            self._auth_attempts += 1
            retry = self._authenticated_retry(response)
            if retry is not None:
                self._send(retry)
                return
        if 200 <= status < 300:
            if self.final is not None:
                self._acknowledge(response)
                return  # a retransmitted 2xx (Accepted state passes each up)
            self.answered_at = trio.current_time()
            self.dialog = Dialog.as_uac(
                self.request, response, flow=self.destination, transport=self.transport, contact=self._contact()
            )
            self._acknowledge(response)
            if self.final is None:
                self._set_final(response)
            if self.on_answer is not None:
                self.on_answer(self)
            if self.cancel_requested:
                # Our CANCEL crossed the callee's 2xx (RFC 3261 9.1: the CANCEL then has
                # no effect and the call is up).  Nobody wants this leg any more and no
                # one waits on it once cancelled, so end the dialog here (15: BYE).
                self.hangup(CANCELLED_REASON, note=ANSWERED_AFTER_CANCEL)
            return
        if self.final is None:
            self._set_final(response)
        if status >= 300:
            self.release()  # 3xx-6xx: nothing more comes up from this transaction

    def on_timeout(self) -> None:
        if self._try_next_target():
            return
        if self.final is None:
            # 8.1.3.1: a transaction timeout is treated as a 408.
            self._set_final(make_response(self.request, 408, "No answer from the destination"))

    def _try_next_target(self) -> bool:
        """RFC 3263 4.3: after a 503 or a timeout with no response at all, the request
        goes to the next located target, as a new transaction (new branch, CSeq + 1)."""
        if not self.alternates or self.cancel_requested or self.provisional is not None or self.final is not None:
            return False
        self.destination = self.alternates.pop(0)
        cseq = self.request.cseq
        via = self.request.top_via.with_params(branch=new_branch())
        headers = (
            self.request.headers.with_replaced("CSeq", f"{cseq.number + 1} {cseq.method}")
            .with_first_value_removed("Via")
            .with_added("Via", str(via), first=True)
        )
        self._send(self.request.replace(headers=headers))
        return True

    def on_transport_error(self, reason: str) -> None:
        """The request could not be delivered (an ICMP unreachable, a refused TCP
        connection).  RFC 3263 4.3: like a timeout, try the next target; with none
        left, the leg fails with 503 (RFC 3261 8.1.3.1)."""
        if self._try_next_target():
            return
        if self.final is None:
            self._set_final(make_response(self.request, 503, f"Service Unavailable ({reason})"))

    def _set_final(self, response: Response) -> None:
        self.final = response
        self.final_event.set()
        if response.status >= 300:
            self._on_hung_up = []  # (no dialog to hang up; and the callbacks refer to us)
        callbacks, self._on_final = self._on_final, []
        for callback in callbacks:
            callback(response)

    def take_held_requests(self) -> list[tuple[ServerTransaction, Request]]:
        """The leg is bridged: what its callee sent before (``held_requests``) is the
        bridge's now, and the bridge ends the dialog, so no hang-up is reported (the
        callbacks are dropped: they refer to this leg, and must not keep it alive)."""
        held, self.held_requests = self.held_requests, []
        self._on_hung_up = []
        return held

    def when_hung_up(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(why)`` when :meth:`hangup` ends this leg's dialog outside a
        bridge (a bridge ends its dialogs itself), with ``why`` for its record."""
        self._on_hung_up.append(callback)

    def when_final(self, callback: Callable[[Response], None]) -> None:
        """Call ``callback(final response)`` once it is known (at once if it is); a
        timeout arrives as a synthesized 408.  For bookkeeping that needs no task."""
        if self.final is not None:
            callback(self.final)
        else:
            self._on_final.append(callback)

    def _contact(self) -> str:
        return self.request.headers.get("Contact") or ""

    def _acknowledge(self, response: Response) -> None:
        """ACK a 2xx (13.2.2.4): a new request in the dialog with the INVITE's CSeq number,
        sent directly (no transaction), to the flow the answer came from, and sent again
        unchanged for each retransmission of that 2xx.  After a late offer, it waits for
        the answer (:meth:`answer_late_offer`) unless the leg is being given up.  A 2xx
        from another dialog (a forking proxy beyond the callee answered on two
        branches) is ACKed and hung up: this leg keeps one dialog."""
        first = self._ack[0].to.tag if self._ack is not None else (
            self._ack_waiting.to.tag if self._ack_waiting is not None else None)
        tag = response.to.tag or ""
        if first is not None and tag != first:
            self._end_other_answer(response, tag)
            return
        if self._ack is not None:
            ack, destination = self._ack
            self.endpoint.send_message(ack, destination, self.transport)
            return
        if self.awaits_late_answer and not self.cancel_requested:
            self._ack_waiting = response
            return
        dialog = self.dialog or Dialog.as_uac(
            self.request, response, flow=self.destination, transport=self.transport, contact=self._contact()
        )
        answer = self.late_answer
        ack = self._ack_in(dialog, body=answer or b"", content_type="application/sdp" if answer else None)
        self._ack = (ack, dialog.destination() or self.destination)
        self.endpoint.send_message(ack, self._ack[1], self.transport)

    def _ack_in(self, dialog: Dialog, *, body: bytes = b"", content_type: str | None = None) -> Request:
        return request_in(self.endpoint, dialog, "ACK", cseq=self.request.cseq.number, body=body,
                          content_type=content_type)

    def _end_other_answer(self, response: Response, tag: str) -> None:
        sent = self._other_answers.get(tag)
        if sent is not None:
            self.endpoint.send_message(sent[0], sent[1], self.transport)
            return
        if len(self._other_answers) >= MAX_OTHER_ANSWERS:
            log.debug("leg %s: another 2xx from a new dialog past %d, ignored", self.call_id, MAX_OTHER_ANSWERS)
            return
        dialog = Dialog.as_uac(self.request, response, flow=self.destination, transport=self.transport,
                               contact=self._contact())
        destination = dialog.destination() or self.destination
        ack = self._ack_in(dialog)
        self._other_answers[tag] = (ack, destination)
        self.endpoint.send_message(ack, destination, self.transport)
        self._bye_in(dialog, CANCELLED_REASON)

    def _bye_in(self, dialog: Dialog, reason: str | None) -> None:
        """Send BYE in ``dialog`` (fire and forget: its transaction retransmits)."""
        bye = request_in(self.endpoint, dialog, "BYE", headers=(("Reason", reason),) if reason else ())
        self.endpoint.request(bye, dialog.destination() or self.destination, self.transport)

    def acknowledge(self, response: Response) -> None:
        """ACK a retransmission of this leg's 2xx that outlived its transaction."""
        self._acknowledge(response)

    def answer_late_offer(self, answer: bytes) -> None:
        """The answer to the offer in this leg's 2xx (from the caller's ACK): send the
        ACK that waited for it; retransmitted 2xx get the same ACK."""
        if self.late_answer is not None:
            return
        self.late_answer = answer
        waiting, self._ack_waiting = self._ack_waiting, None
        if waiting is not None:
            self._acknowledge(waiting)

    @property
    def awaits_late_answer(self) -> bool:
        """A late offer whose answer is not known yet (the caller has not ACKed)."""
        return self.late_answer is None and not self.request.body

    def _authenticated_retry(self, challenge: Response) -> Request | None:
        assert self.credentials is not None
        header, answer_name = (
            ("WWW-Authenticate", "Authorization") if challenge.status == 401 else ("Proxy-Authenticate", "Proxy-Authorization")
        )
        values = challenge.headers.lines(header)
        if not values:
            return None
        chosen = next((v for v in values if "SHA-256" in v.upper()), values[0])
        uri = str(self.request.uri)
        try:
            auth = authorization_for(
                chosen, "INVITE", uri, self.credentials.username, self.credentials.password, nc=1, cnonce=new_tag()
            )
        except ValueError:
            return None
        cseq = self.request.cseq
        headers = (
            self.request.headers.without("Authorization", "Proxy-Authorization")
            .with_replaced("CSeq", f"{cseq.number + 1} INVITE")
            .with_added(answer_name, auth)
        )
        via = self.request.top_via.with_params(branch=new_branch())
        headers = headers.with_first_value_removed("Via").with_added("Via", str(via), first=True)
        return self.request.replace(headers=headers)

    # -- actions ---------------------------------------------------------------------------
    def cancel(self) -> None:
        """Cancel the INVITE (9.1); if it already has a 2xx, hang up instead."""
        if self.cancel_requested:
            return
        self.cancel_requested = True
        if self.final is None and self.transaction is not None:
            self.endpoint.perform(self.endpoint.layer.cancel(self.transaction, trio.current_time()))
        elif self.dialog is not None:
            self.hangup(note=ANSWERED_AFTER_DIAL)

    def hangup(self, reason: str | None = None, *, note: str = ANSWERED_AFTER_DIAL) -> None:
        """Send BYE in the dialog (fire and forget: its transaction retransmits), with
        ``reason`` as its Reason header (RFC 3326); ``note`` is why, for the record."""
        if self.dialog is None:
            return
        if self._ack_waiting is not None:
            self.answer_late_offer(b"")  # no answer will come: the 2xx is ACKed bare first
        held, self.held_requests = self.held_requests, []
        if any(request.method == "BYE" for _, request in held):
            # The callee ended the dialog first: its BYE gets its 200, and ours is not sent.
            for tx, request in held:
                self.endpoint.respond(tx, make_response(request, 200) if request.method == "BYE"
                                      else make_response(request, 481, "Call has ended"))
            note = "BYE from callee"
        else:
            for tx, request in held:
                self.endpoint.respond(tx, make_response(request, 481, "Call has ended"))
            self._bye_in(self.dialog, reason)
        self.dialog = None
        callbacks, self._on_hung_up = self._on_hung_up, []
        for callback in callbacks:
            callback(note)

    async def wait_final(self) -> Response | None:
        """Wait for the final response (a timeout arrives as a synthesized 408)."""
        await self.final_event.wait()
        return self.final


def build_invite(
    *,
    target: str,
    request_uri: str,
    from_header: str,
    call_id: str,
    contact: str,
    via_host: str,
    via_port: int,
    transport: str,
    max_forwards: int,
    body: bytes,
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> Request:
    """An initial INVITE for an outbound leg (8.1.1)."""
    from sip.uri import URI

    items: list[tuple[str, str]] = [
        ("Via", sent_via(transport, via_host, via_port, new_branch())),
        ("Max-Forwards", str(max_forwards)),
        ("From", f"{from_header};tag={new_tag()}"),
        ("To", target),
        ("Call-ID", call_id),
        ("CSeq", "1 INVITE"),
        ("Contact", contact),
        ("Allow", DIALOG_ALLOW),
        *extra_headers,
    ]
    if body:
        items.append(("Content-Type", "application/sdp"))
    return Request(method="INVITE", uri=URI.parse(request_uri), headers=Headers(items), body=body)


def request_in(endpoint: SIPEndpoint, dialog: Dialog, method: str, *, body: bytes = b"",
               content_type: str | None = None, headers: tuple[tuple[str, str], ...] = (),
               cseq: int | None = None) -> Request:
    """A request of ours in ``dialog`` (12.2.1.1), its Via naming the address
    ``endpoint`` advertises."""
    host, port = endpoint.local
    return dialog.create_request(method, via_host=advertised(host), via_port=port, body=body,
                                 content_type=content_type, headers=headers, cseq=cseq)


def advertised(host: str) -> str:
    """The address to put in Via/Contact for a socket bound to ``host`` (a wildcard
    bind is advertised as loopback; IPv6 in brackets)."""
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def is_ip(host: str) -> bool:
    """Whether ``host`` is a numeric IPv4/IPv6 address (no DNS needed)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _stale(challenge: Response) -> bool:
    """Whether a 401/407 says the credentials were right but the nonce stale."""
    name = "WWW-Authenticate" if challenge.status == 401 else "Proxy-Authenticate"
    for value in challenge.headers.lines(name):
        try:
            parsed = parse_challenge(value)
        except SIPError:
            continue
        if parsed is not None and parsed.stale:
            return True
    return False
