"""Instant messages between accounts: pager-mode MESSAGE (RFC 3428).

A MESSAGE outside a dialog is delivered the way a call without a dialplan rings: to
every current binding of the account its Request-URI names (the suffix rule included),
in parallel.  The sender gets the first 2xx a device sends; when none accepts, the
best refusal (RFC 3261 16.7: a 6xx at once, else the lowest status, a 503 becoming 500),
480 when the account has no device registered.  A sender whose From is one of our
accounts answers a digest challenge first (407), exactly as for a call; an outside
sender may reach our accounts only.  No dialplan runs for a message.

Each copy is a request of its own (new Call-ID, From tag and Via) with the sender's
From and To, the Content-Type and body, and Max-Forwards one less; nothing else of the
original crosses.  Over UDP a copy larger than 1,300 bytes is not sent (RFC 3428 5: a
MESSAGE that size needs a congestion-controlled transport): that device's answer is
513.  At most ``ServerConfig.max_pending_messages`` messages wait for devices at
once; past that a new one gets 503 with Retry-After.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from engine.calls import Refusal
from engine.events import Event
from engine.legs import advertised
from sip.headers import Headers, sent_via
from sip.message import (
    Request,
    Response,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    stateless_tag,
)
from sip.transaction import ClientTransaction, ServerTransaction
from sip.validate import check_request

if TYPE_CHECKING:
    from engine.calls import CallEngine
    from engine.storage import Account, Binding

log = logging.getLogger(__name__)

#: RFC 3428 5: without knowing the path's MTU, a MESSAGE over UDP stays under this.
UDP_LIMIT = 1300
#: What a copy carries besides the headers every request has.
_COPIED = ("Content-Type", "Content-Encoding", "Content-Language", "Date")


class MessageRelay:
    """Delivers each new MESSAGE the call engine hands over (see the module docstring)."""

    def __init__(self, engine: CallEngine) -> None:
        self.engine = engine
        self.pending = 0

    def handle(self, tx: ServerTransaction) -> None:
        engine = self.engine
        endpoint = engine.endpoint
        assert endpoint is not None
        request = tx.request
        rejection = check_request(request, accepted_content_types=None)
        if rejection is not None:
            endpoint.respond(tx, rejection)
            return
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            self._refuse(tx, Refusal(483, "Too Many Hops"))
            return
        now = engine.wall_clock()
        sender = engine.sender(request, tx.source, now, "send messages")
        if isinstance(sender, Refusal):
            self._refuse(tx, sender)
            return
        recipient = engine.recipient(request, now)
        if isinstance(recipient, Refusal):
            reason = recipient.reason
            if recipient.status == 404 and reason and "domain" in reason:
                reason = "Not Found (messages go to this server's accounts only)"
            self._refuse(tx, Refusal(recipient.status, reason))
            return
        if self.pending >= engine.config.max_pending_messages:
            self._refuse(tx, Refusal(503, "Service Unavailable (too many messages waiting for delivery)",
                                     (("Retry-After", str(engine.config.retry_after)),)))
            return
        bindings = engine.registrar.bindings_of(recipient.id, now)
        if not bindings:
            self._refuse(tx, Refusal(480, "Temporarily Unavailable (no device registered)"))
            return
        delivery = Delivery(self, tx, sender, recipient)
        self.pending += 1
        for binding in bindings:
            delivery.send(binding)
        delivery.settle()

    def _refuse(self, tx: ServerTransaction, refusal: Refusal) -> None:
        endpoint = self.engine.endpoint
        assert endpoint is not None
        if refusal.status == 407:
            # As for an INVITE (RFC 3261 8.2.7): a challenge keeps no transaction.
            response = make_response(tx.request, 407, to_tag=stateless_tag(tx.request), headers=refusal.headers)
            endpoint.respond_statelessly(tx, response)
            return
        endpoint.respond(tx, make_response(tx.request, refusal.status, refusal.reason, to_tag=new_tag(),
                                           headers=refusal.headers))


class Delivery:
    """One MESSAGE on its way to an account's devices: the sender's transaction, and a
    client transaction per device whose answer is still awaited."""

    def __init__(self, relay: MessageRelay, tx: ServerTransaction, sender: Account | None,
                 recipient: Account) -> None:
        self.relay = relay
        self.tx = tx
        self.sender = sender
        self.recipient = recipient
        self.branches: list[Branch] = []
        self.answers: list[Response] = []
        self.refusals: list[tuple[int, str]] = []
        self.done = False

    def send(self, binding: Binding) -> None:
        engine = self.relay.engine
        endpoint = engine.endpoint
        assert endpoint is not None
        copy = _copy(self.tx.request, binding, endpoint.local)
        if binding.transport.upper() == "UDP" and len(copy.to_bytes()) > UDP_LIMIT:
            self.refusals.append((513, "Message Too Large (over 1300 bytes for a device on UDP)"))
            return
        branch = Branch(self)
        tx = endpoint.request(copy, binding.received, binding.transport)
        assert isinstance(tx, ClientTransaction)
        tx.context = branch
        branch.transaction = tx
        self.branches.append(branch)

    def settle(self) -> None:
        """Answer the sender once a device accepted, or once every device has answered."""
        if self.done:
            return
        if any(branch.final is None for branch in self.branches) and not self._decisive():
            return
        self.done = True
        self.relay.pending -= 1
        for branch in self.branches:
            branch.release()
        status, reason = self._verdict()
        endpoint = self.relay.engine.endpoint
        assert endpoint is not None
        endpoint.respond(self.tx, make_response(self.tx.request, status, reason, to_tag=new_tag()))
        self._publish(status, reason)

    def _decisive(self) -> bool:
        return any(status < 300 or status >= 600 for status, _ in self._finals())

    def _finals(self) -> list[tuple[int, str]]:
        return [branch.final for branch in self.branches if branch.final is not None] + self.refusals

    def _verdict(self) -> tuple[int, str]:
        finals = self._finals()
        for wanted in (range(200, 300), range(600, 700)):
            for status, reason in finals:
                if status in wanted:
                    return status, reason
        if not finals:
            return 480, "Temporarily Unavailable (no device registered)"
        status, reason = min(finals)
        if status == 503:
            # RFC 3261 16.7: a 503 from the next hop is not the sender's to retry.
            return 500, "Server Internal Error (the device is unavailable)"
        if status in (401, 407):
            return 403, "Forbidden (the device asked for credentials)"
        return status, reason

    def _publish(self, status: int, reason: str) -> None:
        engine = self.relay.engine
        request = self.tx.request
        owners = {self.recipient.customer_id}
        if self.sender is not None:
            owners.add(self.sender.customer_id)
        for owner in owners:
            if engine.events.has_subscribers(owner):
                engine.events.publish(Event(owner=owner, type="call", time=engine.wall_clock(), data={
                    "state": "message", "call_id": request.call_id, "from": str(request.from_.uri),
                    "to": str(request.uri), "status": status, "reason": reason,
                }))


class Branch:
    """One device's copy of a message: the context of its client transaction."""

    def __init__(self, delivery: Delivery) -> None:
        self.delivery: Delivery | None = delivery
        self.transaction: ClientTransaction | None = None
        self.final: tuple[int, str] | None = None

    def on_response(self, response: Response) -> None:
        if response.status >= 200:
            self._end(response.status, response.reason)

    def on_timeout(self) -> None:
        self._end(408, "Request Timeout (the device did not answer)")

    def on_transport_error(self, reason: str) -> None:
        self._end(480, f"Temporarily Unavailable (the device cannot be reached: {reason})")

    def _end(self, status: int, reason: str) -> None:
        delivery = self.delivery
        if delivery is None or self.final is not None:
            return
        self.final = (status, reason)
        delivery.settle()

    def release(self) -> None:
        """Stop hearing from the transaction (it lingers to absorb retransmissions)."""
        if self.transaction is not None and self.transaction.context is self:
            self.transaction.context = None
        self.delivery = None


def _copy(request: Request, binding: Binding, local: tuple[str, int]) -> Request:
    """The MESSAGE a device gets: a request of ours carrying the sender's message."""
    max_forwards = request.max_forwards
    from_ = request.from_
    items: list[tuple[str, str]] = [
        ("Via", sent_via(binding.transport, advertised(local[0]), local[1], new_branch())),
        ("Max-Forwards", str((max_forwards if max_forwards is not None else 70) - 1)),
        ("From", str(from_.with_tag(new_tag()))),
        ("To", str(request.to.without_tag())),
        ("Call-ID", new_call_id(advertised(local[0]))),
        ("CSeq", "1 MESSAGE"),
    ]
    headers = request.headers
    for name in _COPIED:
        value = headers.get(name)
        if value is not None:
            items.append((name, value))
    return Request(method="MESSAGE", uri=binding.contact, headers=Headers(items), body=request.body)
