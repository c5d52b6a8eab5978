"""The SIP application: the transaction user that decides what each request gets.

It sits on top of :class:`sip.transport.SIPEndpoint` and receives the transaction
layer's events synchronously; anything slow (the registrar's database commit, a dialplan)
runs in a task of its own so the receive path never waits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from engine.config import ServerConfig
from engine.events import Event, EventBus
from engine.registrar import Registrar
from sip.errors import SIPParseError
from sip.message import Request, Response, make_response, new_tag
from sip.transaction import (
    AckReceived,
    Action,
    CancelReceived,
    RequestReceived,
    ServerTransaction,
)
from sip.validate import check_request

if TYPE_CHECKING:
    from sip.transport import SIPEndpoint

log = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, MESSAGE"
SERVER_HEADER = ("Server", "dialspell")
#: New requests refused at the door when the server is behind (see SIPApplication._behind).
_SHED_METHODS = frozenset({"INVITE", "MESSAGE"})


class SIPApplication:
    """Routes requests: REGISTER to the registrar, OPTIONS answered here, the rest to
    the call engine (when one is attached) or a clear refusal."""

    def __init__(
        self,
        *,
        config: ServerConfig,
        registrar: Registrar,
        events: EventBus,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.registrar = registrar
        self.events = events
        self.wall_clock = wall_clock
        self.endpoint: SIPEndpoint | None = None
        self.nursery: trio.Nursery | None = None
        # Optional hook for the call engine: called for INVITE and in-dialog requests.
        self.call_handler: Callable[[Action], bool] | None = None

    def attach(self, endpoint: SIPEndpoint, nursery: trio.Nursery) -> None:
        self.endpoint = endpoint
        self.nursery = nursery

    # -- the TU entry point (synchronous, from the endpoint) -----------------------------
    def handle(self, action: Action) -> None:
        kind = type(action)
        if kind is RequestReceived:
            assert isinstance(action, RequestReceived)
            request = action.request
            if self._behind(request):
                assert self.endpoint is not None
                self.endpoint.shed(action.transaction, self.config.retry_after)
                return
            # RFC 3261 8.2's checks (scheme, Require, body type, Accept) come before the
            # call engine: for a new call, as for every request outside a dialog
            # (below); a request inside a dialog skips the body checks (the bridge
            # relays the parties' bodies whatever their type) but not the others: an
            # extension it requires would not survive the relay.
            in_dialog = bool(request.to.tag)
            if in_dialog or request.method == "INVITE":
                rejection = check_request(request, accepted_content_types=None) if in_dialog else check_request(request)
                if rejection is not None:
                    self.respond(action.transaction, rejection)
                    return
        if self.call_handler is not None and self.call_handler(action):
            return
        if kind is RequestReceived:
            assert isinstance(action, RequestReceived)
            self._on_request(action.transaction, action.request)
        elif kind is CancelReceived:
            assert isinstance(action, CancelReceived)
            # RFC 3261 9.2: answer the CANCEL 200, then the INVITE 487 if still pending.
            self.respond(action.transaction, make_response(action.transaction.request, 200))
            self.respond(action.invite, make_response(action.invite.request, 487, to_tag=new_tag()))
        elif kind is AckReceived:
            pass  # an ACK for a 2xx we did not send as part of a dialog: nothing to do
        # Responses/timeouts for client transactions belong to the call engine.

    def _behind(self, request: Request) -> bool:
        """Shed load at the door: True for a new INVITE or MESSAGE without credentials
        that waited longer than ``overload_delay`` in the socket's queue.

        A server that cannot keep up answers late; once a challenge takes longer than
        T1 (500 ms) clients retransmit, and the retransmissions add to the load that
        made them.  Refusing the cheapest requests to refuse, the ones nothing has been
        spent on yet, keeps the server's time for the calls and registrations already
        past their challenge.  (RFC 6357 discusses overload control for SIP; this is a
        form of it that needs nothing from the neighbours.)

        Not REGISTER: a registration is two transactions, and refusing the first saves
        little more than it costs; in bench/register, shedding them completed fewer
        registrations at 1,500/s and 2,000/s, not more (BENCHMARKS.md)."""
        limit = self.config.overload_delay
        if not limit:
            return False
        if request.method not in _SHED_METHODS:
            return False
        assert self.endpoint is not None
        if self.endpoint.queue_delay() <= limit:
            return False
        headers = request.headers
        if headers.get("Proxy-Authorization") is not None:
            return False
        try:
            return not request.to.tag
        except SIPParseError:
            return False

    def respond(self, transaction: ServerTransaction, response: Response, *, stateless: bool = False) -> None:
        """Answer with our Server header; ``stateless`` for a challenge (RFC 3261 8.2.7)."""
        assert self.endpoint is not None
        response = response.replace(headers=response.headers.with_added(*SERVER_HEADER))
        if stateless:
            self.endpoint.respond_statelessly(transaction, response)
        else:
            self.endpoint.respond(transaction, response)

    def _on_request(self, tx: ServerTransaction, request: Request) -> None:
        method = request.method
        if method not in ("REGISTER", "CANCEL") and request.to.tag:
            # RFC 3261 12.2.2: a request for a dialog we do not know (the call engine
            # took those it knows: live ones, and for a while ended ones).
            self.respond(tx, make_response(request, 481, "No such call or dialog"))
            return
        rejection = check_request(request)
        if rejection is not None:
            self.respond(tx, rejection)
            return
        if method == "REGISTER":
            assert self.nursery is not None
            self.nursery.start_soon(self._register, tx, request)
        elif method == "OPTIONS":
            self.respond(
                tx,
                make_response(
                    request,
                    200,
                    to_tag=new_tag(),
                    headers=(("Allow", ALLOW), ("Accept", "application/sdp"), ("Supported", "")),
                ),
            )
        elif method == "CANCEL":
            # A CANCEL that matched no INVITE transaction (RFC 3261 9.2).
            self.respond(tx, make_response(request, 481, to_tag=new_tag()))
        elif method in ("BYE", "INFO", "UPDATE", "PRACK", "NOTIFY"):
            self.respond(tx, make_response(request, 481, "No such call or dialog", to_tag=new_tag()))
        elif method == "INVITE":
            max_forwards = request.max_forwards
            if max_forwards is not None and max_forwards <= 0:
                self.respond(tx, make_response(request, 483, to_tag=new_tag()))
                return
            self.respond(tx, make_response(request, 480, "No call engine configured", to_tag=new_tag()))
        else:
            # RFC 3261 8.2.1: an unknown method gets 501 (405 is for known ones).
            self.respond(
                tx, make_response(request, 501, to_tag=new_tag(), headers=(("Allow", ALLOW),))
            )

    async def _register(self, tx: ServerTransaction, request: Request) -> None:
        source = tx.source
        try:
            response = await self.registrar.handle_register(
                request,
                source=source,
                transport=tx.transport,
                local=self.endpoint.local if self.endpoint else (self.config.sip_host, self.config.sip_port),
                now=self.wall_clock(),
            )
        except SIPParseError as exc:
            response = make_response(request, exc.status, exc.reason, to_tag=new_tag())
        # A challenge keeps no transaction: a flood of unauthenticated REGISTERs leaves
        # nothing behind for 32 s (Timer J).
        self.respond(tx, response, stateless=response.status == 401)

    # -- periodic work --------------------------------------------------------------------
    async def run_keepalives(self) -> None:
        """RFC 5626-style CRLF keep-alives to bindings of accounts with the flag, every
        ``keepalive_interval`` seconds, from the socket each binding came in on."""
        while True:
            await trio.sleep(self.config.keepalive_interval)
            if self.endpoint is None:
                continue
            for binding in self.registrar.keepalive_targets(self.wall_clock()):
                self.endpoint.send_bytes(b"\r\n\r\n", binding.received, binding.transport)

    async def run_sweeper(self) -> None:
        while True:
            await trio.sleep(self.config.sweep_interval)
            try:
                await self.registrar.sweep(self.wall_clock())
            except Exception:
                log.exception("binding sweep failed")

    def publish(self, owner: int | None, type_: str, **data: object) -> None:
        self.events.publish(Event(owner=owner, type=type_, data=data, time=self.wall_clock()))
