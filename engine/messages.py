"""Instant messages between accounts: pager-mode MESSAGE (RFC 3428).

A MESSAGE outside a dialog is delivered the way a call without a dialplan goes: to
every current binding of the account its Request-URI names (the suffix rule included),
in parallel.  The sender gets the first 2xx a device sends; when none accepts, the
best refusal (RFC 3261 16.7: a 6xx at once, else the lowest status, a 503 becoming 500),
480 when the account has no device registered.  A sender whose From is one of our
accounts answers a digest challenge first (407), exactly as for a call, and may also
send to a Request-URI outside our domains: it goes there, located by RFC 3263 over UDP
(the next target after a 503, a timeout or a transport error).  An outside sender may
reach our accounts only.  No dialplan runs for a message.

Each copy is a request of its own (new Call-ID, From tag and Via) with the sender's
From and To, the Content-Type and body, and Max-Forwards one less; nothing else of the
original crosses.  Over UDP a copy larger than 1,300 bytes is not sent (RFC 3428 5: a
MESSAGE that size needs a congestion-controlled transport): it counts as a 513.  At
most ``ServerConfig.max_pending_messages`` messages wait for answers at once, and
``max_pending_messages_per_source`` from one IP address; past either a new one gets 503
with Retry-After.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from engine.calls import Refusal
from engine.events import Event
from engine.legs import advertised
from engine.locate import LocateError, udp_targets
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
from sip.transaction import Address, ClientTransaction, ServerTransaction
from sip.uri import URI
from sip.validate import check_request

if TYPE_CHECKING:
    from engine.calls import CallEngine
    from engine.storage import Account

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
        # Messages waiting for answers, by the sender's IP address (only those with some).
        self.pending_from: dict[str, int] = {}

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
        uri = request.uri
        outside = not (uri.is_sip and engine.registrar.resolve_domain(uri.host, now))
        if outside and sender is None:
            self._refuse(tx, Refusal(404, "Not Found (messages go to this server's accounts only)"))
            return
        recipient = None if outside else engine.recipient(request, now)
        if isinstance(recipient, Refusal):
            self._refuse(tx, recipient)
            return
        config, source = engine.config, tx.source[0]
        busy = None
        if self.pending >= config.max_pending_messages:
            busy = "Service Unavailable (too many messages waiting for delivery)"
        elif self.pending_from.get(source, 0) >= config.max_pending_messages_per_source:
            busy = "Service Unavailable (too many of your messages waiting for delivery)"
        if busy is not None:
            self._refuse(tx, Refusal(503, busy, (("Retry-After", str(config.retry_after)),)))
            return
        if recipient is None:
            assert engine.nursery is not None
            engine.nursery.start_soon(self._send_outside, Delivery(self, tx, sender, None))
            return
        bindings = engine.registrar.bindings_of(recipient.id, now)
        if not bindings:
            self._refuse(tx, Refusal(480, "Temporarily Unavailable (no device registered)"))
            return
        delivery = Delivery(self, tx, sender, recipient)
        for binding in bindings:
            delivery.send(binding.contact, binding.received, binding.transport)
        delivery.settle()

    async def _send_outside(self, delivery: Delivery) -> None:
        """The Request-URI's host, located (RFC 3263), gets the copy; the sender its answer."""
        uri = delivery.tx.request.uri
        try:
            targets = await udp_targets(uri.host, uri.port, self.engine.runner.resolver)
        except LocateError as exc:
            delivery.refusals.append((404, f"Not Found (cannot locate {uri.host}: {exc.failure.value})"))
            targets = []
        if targets:
            delivery.alternates = targets[1:]
            delivery.send(uri, targets[0], "UDP")
        delivery.settle()

    def started(self, delivery: Delivery) -> None:
        self.pending += 1
        source = delivery.tx.source[0]
        self.pending_from[source] = self.pending_from.get(source, 0) + 1

    def finished(self, delivery: Delivery) -> None:
        self.pending -= 1
        source = delivery.tx.source[0]
        left = self.pending_from[source] - 1
        if left:
            self.pending_from[source] = left
        else:
            del self.pending_from[source]

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
    """One MESSAGE on its way: the sender's transaction, and a client transaction per
    copy (to each device of the account, or to the Request-URI elsewhere)."""

    def __init__(self, relay: MessageRelay, tx: ServerTransaction, sender: Account | None,
                 recipient: Account | None) -> None:
        self.relay = relay
        self.tx = tx
        self.sender = sender
        self.recipient = recipient  # None: the Request-URI is outside our domains
        self.branches: list[Branch] = []
        self.refusals: list[tuple[int, str]] = []
        # Further targets of the Request-URI's host, tried in turn (RFC 3263 4.3).
        self.alternates: list[Address] = []
        self.done = False
        relay.started(self)

    def send(self, uri: URI, destination: Address, transport: str) -> None:
        """A copy of the message to ``uri`` at ``destination``."""
        endpoint = self.relay.engine.endpoint
        assert endpoint is not None
        try:
            copy = _copy(self.tx.request, uri, transport, endpoint.local)
        except Exception:  # a bug of ours: this copy fails, the sender still gets an answer
            log.exception("MESSAGE %s: cannot build the copy to %s", self.tx.request.call_id, uri)
            self.refusals.append((500, "Server Internal Error"))
            return
        if transport.upper() == "UDP" and len(copy.to_bytes()) > UDP_LIMIT:
            self.refusals.append((513, "Message Too Large (over 1300 bytes on UDP)"))
            return
        self._start(Branch(self, copy), destination, transport)

    def _start(self, branch: Branch, destination: Address, transport: str) -> None:
        endpoint = self.relay.engine.endpoint
        assert endpoint is not None
        tx = endpoint.request(branch.request, destination, transport)
        assert isinstance(tx, ClientTransaction)
        tx.context = branch
        branch.transaction = tx
        self.branches.append(branch)

    def retry(self, branch: Branch) -> bool:
        """Send ``branch``'s request on to the next target of the host, if there is one:
        the same request in a new transaction (RFC 3263 4.3)."""
        if not self.alternates:
            return False
        endpoint = self.relay.engine.endpoint
        assert endpoint is not None
        branch.release()
        self.branches.remove(branch)
        via = _our_via("UDP", endpoint.local)
        request = branch.request.replace(headers=branch.request.headers.with_replaced("Via", via))
        self._start(Branch(self, request), self.alternates.pop(0), "UDP")
        return True

    def settle(self) -> None:
        """Answer the sender once a copy is accepted (or refused with a 6xx), or once every
        copy has its answer."""
        if self.done:
            return
        if any(branch.final is None for branch in self.branches) and not self._decisive():
            return
        self.done = True
        self.relay.finished(self)
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
            return 480, "Temporarily Unavailable"
        status, reason = min(finals)
        if status == 503:
            # RFC 3261 16.7: a 503 from the next hop is not the sender's to retry.
            return 500, "Server Internal Error (the next hop is unavailable)"
        if status in (401, 407):
            return 403, "Forbidden (the next hop asked for credentials)"
        return status, reason

    def _publish(self, status: int, reason: str) -> None:
        engine = self.relay.engine
        request = self.tx.request
        owners = {account.customer_id for account in (self.sender, self.recipient) if account is not None}
        for owner in owners:
            if engine.events.has_subscribers(owner):
                engine.events.publish(Event(owner=owner, type="call", time=engine.wall_clock(), data={
                    "state": "message", "call_id": request.call_id, "from": str(request.from_.uri),
                    "to": str(request.uri), "status": status, "reason": reason,
                }))


class Branch:
    """One copy of a message (to a device, or to an address elsewhere): the context of
    its client transaction."""

    def __init__(self, delivery: Delivery, request: Request) -> None:
        self.delivery: Delivery | None = delivery
        self.request = request
        self.transaction: ClientTransaction | None = None
        self.final: tuple[int, str] | None = None

    def on_response(self, response: Response) -> None:
        if response.status >= 200:
            self._end(response.status, response.reason, retry=response.status == 503)

    def on_timeout(self) -> None:
        self._end(408, "Request Timeout (no answer)", retry=True)

    def on_transport_error(self, reason: str) -> None:
        self._end(480, f"Temporarily Unavailable (cannot be reached: {reason})", retry=True)

    def _end(self, status: int, reason: str, *, retry: bool = False) -> None:
        delivery = self.delivery
        if delivery is None or self.final is not None:
            return
        if retry and delivery.retry(self):
            return
        self.final = (status, reason)
        delivery.settle()

    def release(self) -> None:
        """Stop hearing from the transaction (it lingers to absorb retransmissions)."""
        if self.transaction is not None and self.transaction.context is self:
            self.transaction.context = None
        self.delivery = None


def _copy(request: Request, uri: URI, transport: str, local: Address) -> Request:
    """The MESSAGE sent on: a request of ours to ``uri`` carrying the sender's message."""
    max_forwards = request.max_forwards
    from_ = request.from_
    items: list[tuple[str, str]] = [
        ("Via", _our_via(transport, local)),
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
    return Request(method="MESSAGE", uri=uri, headers=Headers(items), body=request.body)


def _our_via(transport: str, local: Address) -> str:
    """A Via of ours with a new branch: each copy, and each retry of one, is a new
    transaction."""
    return sent_via(transport, advertised(local[0]), local[1], new_branch())
