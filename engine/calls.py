"""The call engine: every new INVITE is classified, routed through a dialplan (or
straight to the callee's bindings) and bridged.

Classification (docs/calls.md):

* **Out**: the From is one of our accounts in a served domain; the caller must pass
  digest authentication (407), incoming-only accounts may not call out (403), and the
  account's Out dialplan runs (without one, the call goes straight to the Request-URI).
* **In**: the Request-URI is in a served domain; the account is found by the suffix rule
  (``anything.joe`` reaches ``joe``; unknown: 404; disabled: 403); its In dialplan runs,
  or without one all its current bindings ring in parallel (none: 480).

Loops: a local leg into another account's In dialplan is a real INVITE to ourselves that
carries the chain of dialplans entered so far in ``X-Dialspell-Chain``, trusted only when
it comes from our own socket.  Entering a dialplan twice in a chain gives 482, a chain
deeper than 5 gives 483; Max-Forwards is decremented at every hop.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from engine.auth import Authenticator, AuthOutcome
from engine.bridge import Bridge, Side
from engine.config import ServerConfig
from engine.events import Event, EventBus
from engine.legs import AnswerRetransmitter, InboundLeg, OutboundLeg, advertised
from engine.records import Placed
from engine.registrar import Registrar
from engine.storage import Account, Store
from sip.errors import SIPParseError
from sip.message import Request, Response, make_response, new_tag
from sip.transaction import (
    AckReceived,
    Action,
    Address,
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    StrayResponse,
    TimedOut,
    TransportFailed,
)

if TYPE_CHECKING:
    from engine.callbacks import CallbackService
    from engine.dialplan_host import DialplanRunner
    from engine.messages import MessageRelay
    from sip.transport import SIPEndpoint

log = logging.getLogger(__name__)

CHAIN_HEADER = "X-Dialspell-Chain"
DIALOG_LINGER_SECONDS = 32.0  # an ended bridge still answers retransmitted BYEs this long
MAX_CHAIN = 5
CONCURRENCY_REASON = "Dial plan execution exceeded maximum allowed"
SHUTDOWN_REASON = "Service Unavailable (server shutting down)"
# What a caller may send in the early dialog our 18x opened (RFC 3261 20.5: a 405
# lists the methods that are allowed).
EARLY_DIALOG_ALLOW = "ACK, BYE, CANCEL"
EARLY_DIALOG_REASON = "Method Not Allowed (not before the call is answered)"


def _not_yet_connected(request: Request) -> Response:
    """The answer to a request in a dialog whose bridge is not built yet: 491 for an
    offer (RFC 3261 14.1 and RFC 3311 5.2: tried again after a random wait), 405 for
    anything else (20.5: with what is allowed)."""
    if request.method in ("INVITE", "UPDATE"):
        return make_response(request, 491, "Request Pending")
    return make_response(request, 405, "Method Not Allowed (not before the call is connected)",
                         headers=(("Allow", "ACK, BYE"),))


@dataclass(slots=True, eq=False)
class Call:
    """One caller's INVITE and everything hanging off it."""

    leg: InboundLeg
    account: Account | None = None
    direction: str = "In"
    chain: tuple[str, ...] = ()
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    started: float = field(default_factory=time.time)
    trace: list[str] = field(default_factory=list)
    bridge: Bridge | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a new request is refused: its final response (a 407 carries the challenge
    in ``headers``, and is sent without a transaction)."""

    status: int
    reason: str | None
    headers: tuple[tuple[str, str], ...] = ()


class CallEngine:
    """The transaction user for calls; the SIP application hands it every action first
    (:meth:`handle` returns True when it took the action)."""

    def __init__(
        self,
        *,
        config: ServerConfig,
        store: Store,
        registrar: Registrar,
        authenticator: Authenticator,
        events: EventBus,
        runner: DialplanRunner,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.registrar = registrar
        self.authenticator = authenticator
        self.events = events
        self.runner = runner
        self.wall_clock = wall_clock
        self.endpoint: SIPEndpoint | None = None
        self.nursery: trio.Nursery | None = None
        # (Call-ID, local tag, remote tag) -> (bridge, side)
        self.dialogs: dict[tuple[str, str, str], tuple[Bridge, Side]] = {}
        self.calls: set[Call] = set()
        # The early dialog our 18x open with each running call's caller, by its key
        # (Call-ID, our To tag, the caller's From tag): for a BYE that ends one.
        self.early_dialogs: dict[tuple[str, str, str], Call] = {}
        # The dialog of each answered leg a bridge has not yet taken (from its 2xx to
        # the dialplan's task bridging it): requests the callee sends meanwhile wait
        # on the leg.  Weak: a leg hung up instead of bridged leaves by itself.
        self.unbridged: weakref.WeakValueDictionary[tuple[str, str, str], OutboundLeg] = (
            weakref.WeakValueDictionary())
        # (Call-ID, From tag, CSeq number) of each running call's INVITE: a copy of it
        # on another branch is a merged request (RFC 3261 8.2.2.2).
        self.running_invites: set[tuple[str, str, int]] = set()
        self.bridges: dict[str, Bridge] = {}
        # Dialogs whose bridge ended in the last DIALOG_LINGER_SECONDS.
        self.ended_dialogs: set[tuple[str, str, str]] = set()
        self._ended_queue: deque[tuple[float, tuple[tuple[str, str, str], ...]]] = deque()
        self._forgetting = False
        # The 2xx of answered calls, retransmitted until their ACK (13.3.1.4); a call
        # whose ACK never comes is hung up (BYE), as a UAS must.
        self.unacked_answers = AnswerRetransmitter()
        self.stopping = False  # stop() was called: new INVITEs get 503
        # The server's CallbackService (engine.callbacks), when callbacks are enabled.
        self.callbacks: CallbackService | None = None
        # Delivers MESSAGEs outside dialogs (engine.messages), when the server has one.
        self.messages: MessageRelay | None = None
        # A multi-process server's count of a customer's calls in all its processes
        # (None from it: not known now).
        self.count_everywhere: Callable[[int], Awaitable[int | None]] | None = None

    def attach(self, endpoint: SIPEndpoint, nursery: trio.Nursery) -> None:
        self.endpoint = endpoint
        self.nursery = nursery

    @property
    def contact(self) -> str:
        assert self.endpoint is not None
        host, port = self.endpoint.local
        return f"<sip:dialspell@{advertised(host)}:{port}>"

    # -- the TU hook -------------------------------------------------------------------------
    def handle(self, action: Action) -> bool:
        kind = type(action)
        if kind is ResponseReceived:
            assert isinstance(action, ResponseReceived)
            return _tell(action.transaction.context, "on_response", action.response)
        if kind is RequestReceived:
            assert isinstance(action, RequestReceived)
            request = action.request
            try:
                to_tag = request.to.tag
            except SIPParseError:
                return False
            if to_tag:
                return self._in_dialog(action.transaction, request)
            method = request.method
            if method == "INVITE":
                self._new_call(action.transaction)
                return True
            if method == "MESSAGE" and self.messages is not None:
                if self.stopping:
                    assert self.endpoint is not None
                    self.endpoint.respond(action.transaction, make_response(
                        request, 503, SHUTDOWN_REASON, to_tag=new_tag()))
                else:
                    self.messages.handle(action.transaction)
                return True
            return False
        if kind is CancelReceived:
            assert isinstance(action, CancelReceived)
            call = action.invite.context
            if isinstance(call, Call):
                assert self.endpoint is not None
                # RFC 3261 9.2: 200 to the CANCEL, then 487 to the INVITE.
                self.endpoint.respond(action.transaction, make_response(action.transaction.request, 200))
                self._stop(call)
                return True
            return False
        if kind is AckReceived:
            assert isinstance(action, AckReceived)
            return self._ack(action.request)
        if kind is TimedOut:
            assert isinstance(action, TimedOut)
            return _tell(action.transaction.context, "on_timeout")
        if kind is TransportFailed:
            assert isinstance(action, TransportFailed)
            # Contexts without a transport-error path see what they see on a timeout
            # (8.1.3.1 and 18.4 end alike for a TU that cannot try elsewhere).
            context = action.transaction.context
            return _tell(context, "on_transport_error", action.reason) or _tell(context, "on_timeout")
        if kind is StrayResponse:
            assert isinstance(action, StrayResponse)
            response = action.response
            if 200 <= response.status < 300 and response.cseq.method == "INVITE":
                key = (response.call_id, response.from_.tag or "", response.to.tag or "")
                found = self.dialogs.get(key)
                if found is not None:
                    found[0].on_retransmitted_2xx(found[1], response)
                    return True
            return False
        return False

    def stop(self) -> int:
        """End every call while the server can still send, as it stops: a BYE to both
        sides of each established call, and for each call still being set up a 503 to
        its caller (try another server) and a CANCEL to its legs.  Returns how many calls
        there were."""
        self.stopping = True
        calls = list(self.calls)
        for call in calls:
            call.leg.reject(503, SHUTDOWN_REASON)
            call.scope.cancel()  # the dialplan ends; its Dial cancels the legs
        bridges = list(self.bridges.values())
        for bridge in bridges:
            bridge.hang_up(by="server", reason="Server shutting down")
        return len(calls) + len(bridges)

    def send_held_byes(self) -> int:
        """The last step of a stop: each BYE still held for its side's ACK goes now,
        since the server will not be there to send it when the ACK comes (RFC 3261 15
        lets a BYE wait for the ACK, not go missing).  Returns how many went."""
        held = [(bridge, side) for bridge, side in self.dialogs.values() if side.bye_held]
        for bridge, side in held:
            bridge.release_held_bye(side)
        return len(held)

    @staticmethod
    def _stop(call: Call) -> None:
        """The caller gave up before the answer: 487 to its INVITE, and the dialplan and
        every leg it started are cancelled."""
        call.leg.cancelled.set()
        call.leg.reject(487, "Request Terminated")
        call.scope.cancel()

    def _in_dialog(self, tx: ServerTransaction, request: Request) -> bool:
        from sip.dialog import Dialog

        key = Dialog.key_of(request)
        found = self.dialogs.get(key)
        if found is None:
            early = self.early_dialogs.get(key)
            if early is not None and early.leg.final_status is None:
                assert self.endpoint is not None
                if request.method == "BYE":
                    # RFC 3261 15: a caller may end an early dialog (after our 18x) with
                    # BYE instead of CANCEL; 15.1.2: 200 to it, 487 to the pending INVITE.
                    self.endpoint.respond(tx, make_response(request, 200))
                    self._stop(early)
                else:
                    # Nothing else crosses before the answer (an INFO with the DTMF for
                    # a callee's early-media prompt, say).  Not 481: that would tell the
                    # caller the dialog is gone (12.2.1.2), and it would give up a call
                    # that is still ringing.
                    self.endpoint.respond(tx, make_response(
                        request, 405, EARLY_DIALOG_REASON, headers=(("Allow", EARLY_DIALOG_ALLOW),)))
                return True
            leg = self.unbridged.get(key)
            if leg is not None and leg.dialog is not None:
                assert self.endpoint is not None
                if leg.long_wait is not None and request.method != "BYE":
                    # Too long a wait to hold a request for (its sender would give up
                    # and end the dialog): tried again later, or refused, at once.
                    self.endpoint.respond(tx, _not_yet_connected(request))
                    return True
                # The callee's request came with its 2xx, before the bridge (a BYE from a
                # callee that answers and hangs up at once): the bridge takes it.
                leg.held_requests.append((tx, request))
                if request.method == "BYE" and leg.long_wait is not None:
                    leg.long_wait.set()
                return True
            if key not in self.ended_dialogs:
                return False
            assert self.endpoint is not None
            if request.method == "BYE":
                self.endpoint.respond(tx, make_response(request, 200))  # a BYE that crossed ours
            else:
                self.endpoint.respond(tx, make_response(request, 481, "Call has ended"))
            return True
        bridge, side = found
        bridge.on_request(side, tx, request)
        return True

    def _ack(self, request: Request) -> bool:
        from sip.dialog import Dialog

        try:
            key = Dialog.key_of(request)
        except SIPParseError:
            return False
        if key in self.ended_dialogs:
            return True  # the ACK of a 2xx to a call that has since ended: nothing to do
        found = self.dialogs.get(key)
        if found is not None:
            bridge, side = found
            bridge.on_ack(side, request)
            return True
        return False

    # -- a new call ---------------------------------------------------------------------------
    def _new_call(self, tx: ServerTransaction) -> None:
        """Route a new INVITE.  What can be decided at once (a challenge, a refusal) is
        answered here; only a call that runs a dialplan gets a task of its own."""
        assert self.endpoint is not None and self.nursery is not None
        leg = InboundLeg(endpoint=self.endpoint, transaction=tx, contact=self.contact)
        request = tx.request
        if self.stopping:
            leg.reject(503, SHUTDOWN_REASON)
            return
        merge_key = (request.call_id, request.from_.tag or "", request.cseq.number)
        if merge_key in self.running_invites:
            # 8.2.2.2: the same INVITE by another path (a proxy before us forked it to
            # us twice): one call runs, the copy is refused.
            leg.reject(482, "Loop Detected (merged request: this INVITE reached us twice)")
            return
        call = Call(leg=leg)
        tx.context = call
        try:
            run = self._route(call)
        except Exception:
            log.exception("call %s failed", tx.request.call_id)
            run = None
        if run is not None:
            self.running_invites.add(merge_key)  # now, not when the task starts
            self.nursery.start_soon(self._run_call, call, run, merge_key)
            return
        if leg.final_status is None:
            leg.reject(500, "Server Internal Error")
        tx.context = None

    async def _run_call(self, call: Call, run: Callable[[Call], Awaitable[None]],
                        merge_key: tuple[str, str, int]) -> None:
        leg = call.leg
        tx = leg.transaction
        early = (tx.request.call_id, leg.local_tag, tx.request.from_.tag or "")
        try:
            self.calls.add(call)
            self.early_dialogs[early] = call
            with call.scope:
                await run(call)
        except Exception:
            log.exception("call %s failed", tx.request.call_id)
            leg.reject(500, "Server Internal Error")
        except trio.Cancelled:
            # Not the caller's CANCEL nor stop() (those are caught in call.scope): the
            # server is stopping without having asked.  503 sends the caller to
            # another server (RFC 3261 21.5.4).
            leg.reject(503, SHUTDOWN_REASON)
            raise
        finally:
            self.calls.discard(call)
            self.early_dialogs.pop(early, None)
            self.running_invites.discard(merge_key)
            if leg.final_status is None:
                leg.reject(487 if leg.cancelled.is_set() else 500)
            # The caller's record, unless a bridge holds it (then the bridge's end
            # writes it).
            self.runner.records.call_finished(call, self.wall_clock())
            # The INVITE's transaction lingers for 32 s (Timer H/L) to absorb
            # retransmissions; it must not keep the whole call alive that long.
            tx.context = None

    def _route(self, call: Call) -> Callable[[Call], Awaitable[None]] | None:
        """Classify and check a new call; answer it if it is refused.  Returns what runs
        the call (its dialplan), or None when it has been answered already."""
        leg = call.leg
        request = leg.request
        now = self.wall_clock()
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            leg.reject(483, "Too Many Hops")
            return None
        from_us = self._from_ourselves(leg)
        if from_us:
            chain_value = request.headers.get(CHAIN_HEADER) or ""
            call.chain = tuple(c for c in chain_value.split(",") if c)
        # Out: From is one of our accounts (and not our own local hop).
        sender = None if from_us else self.sender(request, leg.source, now, "place calls")
        if sender is not None:
            if isinstance(sender, Refusal):
                if sender.status == 407:
                    leg.challenge(407, sender.headers)
                else:
                    leg.reject(sender.status, sender.reason)
                return None
            call.account = sender
            call.direction = "Out"
            return self.runner.run_out
        # In: the Request-URI is in one of our domains.
        account = self.recipient(request, now)
        if isinstance(account, Refusal):
            leg.reject(account.status, account.reason)
            return None
        call.account = account
        call.direction = "In"
        if self.callbacks is not None and self.callbacks.offer(self, call):
            return None  # a dialplan was waiting for this call: it is bridged to its caller
        return self.runner.run_in

    def sender(self, request: Request, source: Address, now: float, doing: str) -> Account | Refusal | None:
        """The account a new request comes from when its From is one of ours: it must
        answer our digest challenge (a :class:`Refusal` with status 407 carries it) and
        be enabled and allowed to ``doing`` ("place calls").  None when the From is
        not ours: an outside sender, who may only reach our accounts."""
        from_uri = request.from_.uri
        from_domain = self.registrar.resolve_domain(from_uri.host, now) if from_uri.is_sip else None
        user = from_uri.unescaped_user
        if from_domain is None or not user:
            return None
        result = self.authenticator.check(
            request, user=user, domain=from_domain, realm=from_domain, source=source[0], now=now, proxy=True
        )
        if result.outcome is AuthOutcome.CHALLENGE:
            return Refusal(407, None, result.headers)
        if result.outcome is AuthOutcome.FORBIDDEN:
            return Refusal(403, result.reason)
        if result.outcome is AuthOutcome.BAD_REQUEST:
            return Refusal(400, result.reason)
        account = result.account
        assert account is not None
        if account.disabled:
            return Refusal(403, "Forbidden (account disabled)")
        if account.incoming_only:
            return Refusal(403, f"Forbidden (this account may not {doing})")
        return account

    def recipient(self, request: Request, now: float) -> Account | Refusal:
        """The enabled account a new request's Request-URI names in one of our domains."""
        ruri = request.uri
        domain = self.registrar.resolve_domain(ruri.host, now) if ruri.is_sip else None
        if domain is None:
            return Refusal(404, "Not Found (domain not served here)")
        account = self.find_account(ruri.unescaped_user or "", domain)
        if account is None:
            return Refusal(404, "Not Found (no such account)")
        if account.disabled:
            return Refusal(403, "Forbidden (account disabled)")
        return account

    def find_account(self, user: str, domain: str) -> Account | None:
        """The account for ``user`` in ``domain`` by the suffix rule: ``anything.joe``
        reaches ``joe`` when there is no account ``anything.joe``."""
        directory = self.store.directory()
        account = directory.account(user, domain)
        if account is None and "." in user:
            account = directory.account(user.rsplit(".", 1)[1], domain)
        if account is None:
            directory = self.store.directory(force=True)
            account = directory.account(user, domain)
            if account is None and "." in user:
                account = directory.account(user.rsplit(".", 1)[1], domain)
        return account

    def _from_ourselves(self, leg: InboundLeg) -> bool:
        assert self.endpoint is not None
        host, port = self.endpoint.local
        source_host, source_port = leg.source
        if source_port != port:
            return False
        return source_host == host or (host in ("0.0.0.0", "::") and source_host in ("127.0.0.1", "::1"))

    # -- bridges ------------------------------------------------------------------------------
    def bridge(self, call: Call, winner: OutboundLeg, answer_body: bytes, duration_limit: float | None) -> Bridge:
        """Answer the caller with the winner's SDP and join the two dialogs."""
        assert self.endpoint is not None and self.nursery is not None
        leg = call.leg
        caller_dialog = leg.answer(answer_body)
        assert winner.dialog is not None
        bridge_id = new_tag() + new_tag()
        bridge = Bridge(
            endpoint=self.endpoint,
            caller=Side(dialog=caller_dialog, transport=leg.transport, name="caller"),
            callee=Side(dialog=winner.dialog, transport=winner.transport, name="callee"),
            on_end=self._bridge_ended,
            bridge_id=bridge_id,
        )
        bridge.call = call
        bridge.callee_leg = winner
        call.bridge = bridge
        self.join_bridge(bridge, answered=[(bridge.caller, leg)])
        if duration_limit:
            self.nursery.start_soon(bridge.enforce_duration, duration_limit)
        self.publish(call, "call", state="answered", bridge=bridge_id)
        return bridge

    def hand_over(self, bridge: Bridge, side: Side, leg: OutboundLeg) -> None:
        """``bridge`` takes over the answered ``leg`` (now its ``side``): the leg leaves
        ``unbridged``, and what its callee sent meanwhile goes to the bridge.  Called
        once the bridge's records are open, since a BYE among them ends it."""
        if leg.dialog is not None:
            self.unbridged.pop(leg.dialog.key, None)
        for tx, request in leg.take_held_requests():
            bridge.on_request(side, tx, request)

    def leg_answered(self, leg: OutboundLeg) -> None:
        """An OutboundLeg's ``on_answer``: its dialog is routed to it until bridged; if
        it is hung up instead, its dialog is an ended one (a BYE crossing ours: 200)."""
        assert leg.dialog is not None
        key = leg.dialog.key
        self.unbridged[key] = leg
        leg.when_hung_up(lambda why: self._linger((key,)))

    def join_bridge(self, bridge: Bridge, *, answered: list[tuple[Side, InboundLeg]]) -> None:
        """Route both of ``bridge``'s dialogs to it; retransmit each 2xx we answered a
        side's INVITE with (``answered``) until its ACK (13.3.1.4), and end the call if
        none comes."""
        assert self.nursery is not None
        self.bridges[bridge.bridge_id] = bridge
        for side in bridge.sides():
            self.dialogs[side.dialog.key] = (bridge, side)
        bridge.on_release = self._release_dialog
        for side, leg in answered:
            side.awaiting_ack = True
            self.unacked_answers.watch(leg, side.pending_ack, functools.partial(bridge.ack_missing, side), self.nursery)

    def _bridge_ended(self, bridge: Bridge, by: str, reason: str) -> None:
        self.bridges.pop(bridge.bridge_id, None)
        # A side whose BYE waits for its ACK keeps finding the bridge until then.
        self._retire_dialogs(bridge, [side for side in bridge.sides() if not side.bye_held])
        owner = bridge.call
        if isinstance(owner, Call):
            self.publish(owner, "call", state="ended", bridge=bridge.bridge_id, by=by, reason=reason)
            owner.leg.transaction.context = None
        if isinstance(owner, (Call, Placed)):
            self.runner.records.bridge_ended(owner, bridge, by, reason, self.wall_clock())
            # What lingers (the dialogs for 32 s, the legs' transactions for up to 32 s)
            # must not hold the finished call and everything hanging off it.
            bridge.call = None
        winner = bridge.callee_leg
        if isinstance(winner, OutboundLeg):
            winner.release()
            bridge.callee_leg = None

    def _retire_dialogs(self, bridge: Bridge, sides: list[Side]) -> None:
        """Take ``sides``' dialogs off the live table.  An ended dialog is still known
        for a while, so a late BYE gets its 200 (and anything else its 481); only its
        key is kept, not the bridge (one queue and one task for all of them, not a
        sleeping task each)."""
        keys = []
        for side in sides:
            key = side.dialog.key
            if self.dialogs.get(key, (None,))[0] is bridge:
                del self.dialogs[key]
                keys.append(key)
        self._linger(tuple(keys))

    def _linger(self, keys: tuple[tuple[str, str, str], ...]) -> None:
        """Known as ended dialogs for DIALOG_LINGER_SECONDS."""
        assert self.nursery is not None
        self.ended_dialogs.update(keys)
        self._ended_queue.append((trio.current_time() + DIALOG_LINGER_SECONDS, keys))
        if not self._forgetting:
            self._forgetting = True
            self.nursery.start_soon(self._forget_ended_dialogs)

    def _release_dialog(self, bridge: Bridge, side: Side) -> None:
        """A side's held BYE has gone (or it sent its own): its dialog retires too."""
        self._retire_dialogs(bridge, [side])

    async def _forget_ended_dialogs(self) -> None:
        try:
            while self._ended_queue:
                deadline, keys = self._ended_queue[0]
                await trio.sleep_until(deadline)
                self._ended_queue.popleft()
                self.ended_dialogs.difference_update(keys)
        finally:
            self._forgetting = False

    async def count_calls(self, customer_id: int) -> int:
        """A customer's established calls in the whole server: in every process of a
        multi-process one (``count_everywhere``, set by the server), else here."""
        if self.count_everywhere is not None:
            counted = await self.count_everywhere(customer_id)
            if counted is not None:
                return counted
        return self.current_call_count(customer_id)

    def current_call_count(self, customer_id: int) -> int:
        count = 0
        for bridge in self.bridges.values():
            call = bridge.call
            if isinstance(call, Call) and call.account is not None and call.account.customer_id == customer_id:
                count += 1
        return count

    def publish(self, call: Call, type_: str, **data: object) -> None:
        owner = call.account.customer_id if call.account is not None else None
        if not self.events.has_subscribers(owner):
            return  # (three per call: no event built when no console listens)
        data.setdefault("call_id", call.leg.request.call_id)
        self.events.publish(Event(owner=owner, type=type_, data=data, time=self.wall_clock()))


def _tell(context: object, event: str, *args: object) -> bool:
    """Call ``context.<event>(*args)`` if the transaction's context has it (a leg, a
    bridge relay, a callback or registration waiter); True if it did."""
    method = getattr(context, event, None)
    if method is None:
        return False
    method(*args)
    return True
