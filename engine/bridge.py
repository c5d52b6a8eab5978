"""A bridged call: two dialogs joined back to back, relaying what one side asks of the
other (BYE, re-INVITE, UPDATE, INFO...), with the NAT fix applied to every SDP offer and
answer, including in-dialog re-offers (a video upgrade mid-call must work too).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from engine.legs import DIALOG_ALLOW, OutboundLeg, request_in
from sip.dialog import Address, Dialog
from sip.errors import SIPError
from sip.message import Request, Response, make_response
from sip.sdp import mentions_private_ipv4, rewrite_connection_addresses
from sip.transaction import ClientTransaction, ServerTransaction

if TYPE_CHECKING:
    from sip.transport import SIPEndpoint

log = logging.getLogger(__name__)


def fix_sdp(body: bytes, source: Address) -> bytes:
    """Replace private IPv4 addresses in an SDP body with the address the packet really
    came from (the media of a phone behind NAT arrives from there too)."""
    if not body or not mentions_private_ipv4(body):
        return body  # nothing to replace (the common case): spare the parse
    try:
        return rewrite_connection_addresses(body, source[0])
    except SIPError:
        return body  # not SDP we understand: relay it untouched


def _relayed_body(message: Request | Response, source: Address) -> bytes:
    """``message``'s body as relayed: with the NAT fix if it is a session description,
    the only kind the fix may touch (an INFO's or a MESSAGE's text is the parties'
    own).  A body without a Content-Type, which RFC 3261 7.4.1 does not allow, is taken
    as SDP."""
    body = message.body
    if not body:
        return body
    content_type = message.headers.get("Content-Type")
    if content_type is None or content_type.partition(";")[0].strip().lower() == "application/sdp":
        return fix_sdp(body, source)
    return body


def _no_release(bridge: Bridge, side: Side) -> None:
    pass


def _retry_after() -> int:
    """RFC 3261 14.2: a 500 to an overlapping re-INVITE carries a Retry-After chosen
    at random between 0 and 10 s."""
    return secrets.randbelow(11)


@dataclass(slots=True)
class Side:
    """One half of a bridge: a dialog and where its peer's messages come from."""

    dialog: Dialog
    transport: str
    name: str  # "caller" / "callee", for traces and CDRs
    # Our 2xx to a re-INVITE from this side, retransmitted until its ACK.
    pending_answer: Response | None = None
    pending_ack: trio.Event = field(default_factory=trio.Event)
    # After a re-INVITE from this side without SDP (a late offer), the other side's 2xx
    # carries the offer and waits for our ACK with the answer, which this side's ACK
    # brings: the relay of that re-INVITE.
    late_ack: _Relay | None = None
    # Our last ACK to this side's 2xx to one of our re-INVITEs, sent again for a
    # retransmission of that 2xx, also after the re-INVITE's transaction has ended.
    last_ack: Request | None = None
    # A re-INVITE relayed to this side still without its final response, and one from
    # this side we have not answered yet (RFC 3261 14.2: glare, and overlapping INVITEs).
    inviting: _Relay | None = None
    invited: _Relay | None = None
    # Our 2xx answering this side's INVITE has had no ACK yet (set by whoever answered
    # it).  RFC 3261 15: no BYE goes to the side until that ACK comes or our 2xx has
    # been retransmitted for 64*T1; a bridge that ends before then holds it (bye_held).
    awaiting_ack: bool = False
    bye_held: bool = False


class _Relay:
    """Context of a client transaction that carries a relayed request to the other side;
    its final response goes back through the original server transaction."""

    __slots__ = ("bridge", "server_tx", "request", "source_side", "target_side", "answered")

    def __init__(self, bridge: Bridge, server_tx: ServerTransaction, request: Request, source_side: Side, target_side: Side) -> None:
        self.bridge = bridge
        self.server_tx = server_tx
        self.request = request
        self.source_side = source_side
        self.target_side = target_side
        # The sender has its final answer from us already (487: the bridge ended first).
        self.answered = False

    def on_response(self, response: Response) -> None:
        self.bridge._relay_response(self, response)

    def settle(self) -> None:
        """This re-INVITE is no longer pending on either side (see Side.inviting)."""
        if self.target_side.inviting is self:
            self.target_side.inviting = None
        if self.source_side.invited is self:
            self.source_side.invited = None

    def on_timeout(self) -> None:
        self.bridge._relay_response(self, make_response(self.request, 408, "The other party did not answer"))


class Bridge:
    """Two sides joined.  The call engine registers both dialog keys and forwards each
    in-dialog request and ACK here."""

    def __init__(
        self,
        *,
        endpoint: SIPEndpoint,
        caller: Side,
        callee: Side,
        on_end: Callable[[Bridge, str, str], None],
        bridge_id: str,
    ) -> None:
        self.endpoint = endpoint
        self.caller = caller
        self.callee = callee
        self.on_end = on_end
        self.bridge_id = bridge_id
        self.ended = trio.Event()
        self.end_reason = ""
        self.hung_up_by = ""
        self.answered_at = trio.current_time()
        # Set by whoever joined the legs (the call engine, callbacks): the call, and the
        # dialled leg it was bridged to.  The engine drops both when the bridge ends,
        # so what lingers after a call (its dialogs' keys, its transactions) holds
        # neither.  (``call`` is typed loosely: engine.calls builds on this module.)
        self.call: object | None = None
        self.callee_leg: OutboundLeg | None = None
        # Told when a side whose BYE the bridge held is done with (its BYE sent, or its
        # own BYE answered): the bridge need not be found by that dialog any more.
        self.on_release: Callable[[Bridge, Side], None] = _no_release

    def sides(self) -> tuple[Side, Side]:
        return self.caller, self.callee

    def other(self, side: Side) -> Side:
        return self.callee if side is self.caller else self.caller

    def side_for(self, key: tuple[str, str, str]) -> Side | None:
        for side in (self.caller, self.callee):
            if side.dialog.key == key:
                return side
        return None

    # -- requests from a side --------------------------------------------------------------
    def on_request(self, side: Side, tx: ServerTransaction, request: Request) -> None:
        if not side.dialog.accept_remote_request(request):
            # 12.2.2: a CSeq lower than the last one is out of order.
            self.endpoint.respond(tx, make_response(request, 500, "CSeq out of order"))
            return
        side.dialog.flow = tx.source
        method = request.method
        if method == "BYE":
            self.endpoint.respond(tx, make_response(request, 200))
            if side.bye_held:
                side.bye_held = False  # it ended the dialog itself: ours is not needed
                self.on_release(self, side)
            self.hang_up(by=side.name, reason=f"BYE from {side.name}", notify=self.other(side))
            return
        if self.ended.is_set():
            self.endpoint.respond(tx, make_response(request, 481, "Call has ended"))
            return
        if method == "REFER":
            # A transfer (RFC 3515) is not relayed: the other party's phone would place
            # a call wherever this party said, in our user's name, and a relayed copy
            # without its Refer-To would only draw a 400 from it.  405 names what the
            # dialog does take (RFC 3261 21.4.6).
            self.endpoint.respond(tx, make_response(
                request, 405, "Method Not Allowed (call transfer by REFER is not supported)",
                headers=(("Allow", DIALOG_ALLOW),)))
            return
        if method == "INVITE":
            if side.inviting is not None or self.other(side).awaiting_ack:
                # 14.2: our own re-INVITE to this side is in progress (glare); or the
                # other side's INVITE is, its 2xx not yet ACKed, and 14.1 lets no new
                # INVITE go to it before then.  491: the sender tries again shortly.
                self.endpoint.respond(tx, make_response(request, 491, "Request Pending"))
                return
            if side.invited is not None:
                # 14.2: its previous re-INVITE has no final answer from us yet.
                self.endpoint.respond(tx, make_response(
                    request, 500, "Previous INVITE still in progress", headers=(("Retry-After", str(_retry_after())),)))
                return
        if method in ("INVITE", "UPDATE"):
            side.dialog.refresh_target(request)
        other = self.other(side)
        content_type = request.headers.get("Content-Type")
        body = _relayed_body(request, tx.source)
        passthrough = tuple(
            (name, value)
            for name, value in request.headers
            if name in ("Content-Disposition", "Event", "Subscription-State", "Info-Package", "Session-Expires", "Supported")
        )
        relayed = request_in(self.endpoint, other.dialog, method, body=body, content_type=content_type,
                             headers=passthrough)
        destination = other.dialog.destination()
        if destination is None:
            self.endpoint.respond(tx, make_response(request, 502, "Cannot reach the other party"))
            return
        client = self.endpoint.request(relayed, destination, other.transport)
        assert isinstance(client, ClientTransaction)
        relay = _Relay(self, tx, relayed, side, other)
        client.context = relay
        if method == "INVITE":
            side.invited = other.inviting = relay

    def _relay_response(self, relay: _Relay, response: Response) -> None:
        status = response.status
        if status == 100:
            return
        if status >= 200:
            relay.settle()
        if relay.answered:
            # The bridge ended while this re-INVITE was out: its sender had a 487; a 2xx
            # still gets its ACK (13.2.2.4), and the BYE that ended the bridge follows.
            if relay.request.method == "INVITE" and 200 <= status < 300:
                self._ack(relay.target_side, relay.request.cseq.number, b"")
            return
        source = relay.target_side.dialog.flow or ("0.0.0.0", 0)
        body = _relayed_body(response, source)
        extra: list[tuple[str, str]] = []
        if body:
            extra.append(("Content-Type", response.headers.get("Content-Type") or "application/sdp"))
        if relay.request.method in ("INVITE", "UPDATE") and 200 <= status < 300:
            relay.target_side.dialog.refresh_target(response)
            extra.append(("Contact", relay.source_side.dialog.contact))
        original = relay.server_tx.request
        answer = make_response(
            original, status, response.reason, to_tag=relay.source_side.dialog.local_tag, headers=extra, body=body
        )
        if relay.request.method == "INVITE" and 200 <= status < 300:
            # The other side's 2xx needs our ACK (13.2.2.4).  With the offer in the
            # re-INVITE it carries no body and goes now; after a late offer it carries
            # the answer, which comes in the source side's ACK (RFC 3264).
            target = relay.target_side
            acked = target.last_ack
            if acked is not None and acked.cseq.number == relay.request.cseq.number:
                self._send_ack(target, acked)  # a retransmitted 2xx: the same ACK again
            elif relay.request.body:
                self._ack(target, relay.request.cseq.number, b"")
            else:
                relay.source_side.late_ack = relay
            relay.source_side.pending_answer = answer
            relay.source_side.pending_ack = trio.Event()
        self.endpoint.respond(relay.server_tx, answer)

    def on_ack(self, side: Side, request: Request) -> None:
        self._pass_on_answer(side, request)
        side.pending_answer = None
        side.pending_ack.set()
        if side.awaiting_ack:
            side.awaiting_ack = False
            if side.bye_held:
                self.release_held_bye(side)

    def ack_missing(self, side: Side) -> None:
        """Our 2xx to ``side`` was retransmitted for 64*T1 without an ACK: the dialog
        is confirmed, and its session ends with a BYE (RFC 3261 13.3.1.4)."""
        side.awaiting_ack = False
        if not self.ended.is_set():
            self.hang_up(by="server", reason=f"No ACK from the {side.name}")
        elif side.bye_held:
            self.release_held_bye(side)

    def release_held_bye(self, side: Side) -> None:
        """Send ``side`` the BYE held for its ACK (also when the server stops and
        cannot wait for that ACK any longer)."""
        side.bye_held = False
        self._bye(side)
        self.on_release(self, side)

    def _pass_on_answer(self, side: Side, request: Request) -> None:
        """An ACK carrying an answer the other side waits for (after a late offer)."""
        callee_leg = self.callee_leg
        if side is self.caller and callee_leg is not None and callee_leg.awaits_late_answer:
            # The call began with a late offer: this ACK carries the caller's answer to
            # the callee's offer, and the callee's ACK has waited for it.
            callee_leg.answer_late_offer(_relayed_body(request, side.dialog.flow or ("0.0.0.0", 0)))
            return
        late = side.late_ack
        if late is not None:
            side.late_ack = None
            answer = _relayed_body(request, side.dialog.flow or ("0.0.0.0", 0))
            self._ack(late.target_side, late.request.cseq.number, answer)

    def _ack(self, side: Side, cseq: int, answer: bytes) -> None:
        """ACK a 2xx of ``side`` to our re-INVITE with CSeq ``cseq`` (with the answer to
        its offer after a late offer)."""
        ack = request_in(self.endpoint, side.dialog, "ACK", cseq=cseq, body=answer,
                         content_type="application/sdp" if answer else None)
        side.last_ack = ack
        self._send_ack(side, ack)

    def _send_ack(self, side: Side, ack: Request) -> None:
        dest = side.dialog.destination()
        if dest is not None:
            self.endpoint.send_message(ack, dest, side.transport)

    def on_retransmitted_2xx(self, side: Side, response: Response) -> None:
        """A 2xx retransmitted by a side after the transaction it answered ended (our
        ACK was lost): the same ACK again (13.2.2.4)."""
        number = response.cseq.number
        last = side.last_ack
        if last is not None and last.cseq.number == number:
            self._send_ack(side, last)  # a re-INVITE's (with the late answer, if any)
            return
        late = self.other(side).late_ack
        if late is not None and late.request.cseq.number == number:
            return  # our ACK to it waits for the answer (see on_ack)
        leg = self.callee_leg
        if side is self.callee and leg is not None and leg.request.cseq.number == number:
            leg.acknowledge(response)  # the call's own INVITE (with the late answer, if any)
            return
        self._ack(side, number, b"")

    # -- ending ----------------------------------------------------------------------------
    def hang_up(self, *, by: str, reason: str, notify: Side | None = None) -> None:
        """End the bridge; send BYE to ``notify`` (or to both sides when None)."""
        if self.ended.is_set():
            return
        self.hung_up_by = by
        self.end_reason = reason
        callee_leg = self.callee_leg
        if callee_leg is not None and callee_leg.awaits_late_answer:
            callee_leg.answer_late_offer(b"")  # the callee's 2xx is ACKed before its BYE
        for side in (self.caller, self.callee):
            late = side.late_ack
            if late is not None:  # a late-offer re-INVITE's 2xx, likewise
                side.late_ack = None
                self._ack(late.target_side, late.request.cseq.number, b"")
            relay = side.invited
            if relay is not None:
                # 15.1.2: a pending re-INVITE from a side still gets its answer: 487.
                relay.settle()
                relay.answered = True
                self.endpoint.respond(relay.server_tx, make_response(
                    relay.server_tx.request, 487, "Request Terminated", to_tag=side.dialog.local_tag))
        targets = [notify] if notify is not None else [self.caller, self.callee]
        for side in targets:
            if side.awaiting_ack:
                side.bye_held = True  # RFC 3261 15: it goes once our 2xx is ACKed
            else:
                self._bye(side)
        self.ended.set()
        self.on_end(self, by, reason)

    def _bye(self, side: Side) -> None:
        bye = request_in(self.endpoint, side.dialog, "BYE")
        dest = side.dialog.destination()
        if dest is not None:
            self.endpoint.request(bye, dest, side.transport)

    async def enforce_duration(self, seconds: float) -> None:
        """``cd=`` option: hang up both sides ``seconds`` after the answer."""
        with trio.move_on_after(seconds):
            await self.ended.wait()
        if not self.ended.is_set():
            self.hang_up(by="limit", reason=f"Call duration limit of {int(seconds)} s reached")

