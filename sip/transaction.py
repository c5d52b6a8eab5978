"""SIP transactions, sans-IO (RFC 3261 section 17 with the RFC 6026 corrections).

:class:`TransactionLayer` is fed messages, their source address and ``now``; it returns
a list of *actions*: :class:`Send` for the transport shell, and events for the
transaction user (TU).  It never reads a clock or touches a socket: the shell calls
:meth:`TransactionLayer.expire` at :meth:`TransactionLayer.next_deadline`.

The four state machines (17.1.1 INVITE client, 17.1.2 non-INVITE client, 17.2.1 INVITE
server, 17.2.2 non-INVITE server) are one table, :data:`TRANSITIONS`: for each kind of
transaction, state and stimulus (a received message, a response from the TU, a timer)
it names the next state and the effects, in order.  A stimulus missing from the table
is absorbed; that is also how a timer is cancelled (its state no longer accepts it).

What stays with the TU, as RFC 3261 assigns it:

* answering a request (including 481 to a CANCEL that matches nothing and 487 to a
  cancelled INVITE), and retransmitting a 2xx to an INVITE (13.3.1.4);
* the ACK for a 2xx (13.2.2.4): it is a request of its own that no transaction sends,
  so :meth:`TransactionLayer.request` refuses ACKs and the TU emits a :class:`Send`;
* resolving a host name in a Via or a Request-URI (RFC 3263).
"""

from __future__ import annotations

import logging
import re
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar, cast, overload

from sip.errors import SIPParseError, SIPValueError
from sip.frozen import fast_init
from sip.headers import Via
from sip.message import (
    MAGIC_COOKIE,
    Request,
    Response,
    make_ack_for_error,
    make_cancel,
    make_response,
)
from sip.parse import parse_message_untrusted
from sip.timers import RETRANSMIT_TIMERS, Timer, TimerHeap, TimerSettings

logger = logging.getLogger(__name__)

Address = tuple[str, int]
# Match keys (17.1.3, 17.2.3).  Client: (branch, method).  Server: (branch, sent-by
# host, sent-by port, method), or for RFC 2543 peers the longer tuple of _key_2543.
Key = tuple[object, ...]


class TransactionState(Enum):
    """The states of figures 5-8 of RFC 3261, plus RFC 6026's Accepted."""

    # Members are singletons, so identity hashing is exact; it runs in C, where Enum's
    # own __hash__ (hash of the name) is a Python call on every table lookup.
    __hash__ = object.__hash__

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Kind(Enum):
    """Which of the four state machines a transaction runs."""

    __hash__ = object.__hash__  # see TransactionState

    INVITE_CLIENT = "INVITE client"
    NON_INVITE_CLIENT = "non-INVITE client"
    INVITE_SERVER = "INVITE server"
    NON_INVITE_SERVER = "non-INVITE server"


class Stimulus(Enum):
    """What can happen to a transaction besides a timer firing."""

    __hash__ = object.__hash__  # see TransactionState

    RECV_1XX = "a provisional response arrives"
    RECV_2XX = "a 2xx response arrives"
    RECV_3XX_6XX = "a 300-699 response arrives"
    RECV_REQUEST = "the request is retransmitted"
    RECV_ACK = "an ACK matching the INVITE arrives"
    TU_1XX = "the TU sends a provisional response"
    TU_2XX = "the TU sends a 2xx response"
    TU_3XX_6XX = "the TU sends a 300-699 response"
    TRANSPORT_ERROR = "the transport could not deliver the request"


class Effect(Enum):
    """What a transition does, besides starting the :class:`Timer` values in its row."""

    PASS_RESPONSE_UP = "hand the response to the TU"
    SEND_ACK = "build the ACK for a 300-699 and send it"
    RESEND_ACK = "send that ACK again"
    RESEND_REQUEST = "retransmit the request"
    SEND_RESPONSE = "send the TU's response"
    RESEND_RESPONSE = "send the last response again"
    PASS_ACK_UP = "hand the ACK to the TU"
    REPORT_TIMEOUT = "tell the TU the transaction timed out"
    REPORT_TRANSPORT_ERROR = "tell the TU the request could not be delivered"
    SEND_PENDING_CANCEL = "send a CANCEL the TU asked for before any provisional"
    RESTART_TIMER = "re-arm the retransmission timer that just fired"


S = TransactionState
Row = tuple[TransactionState, tuple[Effect | Timer, ...]]

# The state machines.  Each row: state -> stimulus -> (next state, effects in order).
TRANSITIONS: dict[Kind, dict[TransactionState, dict[Stimulus | Timer, Row]]] = {
    Kind.INVITE_CLIENT: {
        # 17.1.1.2; RFC 6026 7.2 replaces "2xx -> Terminated" with Accepted + Timer M.
        S.CALLING: {
            Timer.A: (S.CALLING, (Effect.RESEND_REQUEST, Effect.RESTART_TIMER)),
            Timer.B: (S.TERMINATED, (Effect.REPORT_TIMEOUT,)),
            # 17.1.1.2: "If an unrecoverable transport error occurs" (18.4: an ICMP
            # unreachable, a refused connection) the TU is told and the transaction ends.
            Stimulus.TRANSPORT_ERROR: (S.TERMINATED, (Effect.REPORT_TRANSPORT_ERROR,)),
            Stimulus.RECV_1XX: (
                S.PROCEEDING, (Effect.PASS_RESPONSE_UP, Effect.SEND_PENDING_CANCEL)),
            Stimulus.RECV_2XX: (S.ACCEPTED, (Effect.PASS_RESPONSE_UP, Timer.M)),
            Stimulus.RECV_3XX_6XX: (
                S.COMPLETED, (Effect.SEND_ACK, Effect.PASS_RESPONSE_UP, Timer.D)),
        },
        S.PROCEEDING: {
            Stimulus.RECV_1XX: (S.PROCEEDING, (Effect.PASS_RESPONSE_UP,)),
            # 9.1: "If there is no final response for the original request in 64*T1
            # seconds ..., the client SHOULD then consider the original transaction
            # cancelled and SHOULD destroy the client transaction".  Without this a
            # peer that never answers a CANCEL would pin the transaction forever.
            Timer.AFTER_CANCEL: (S.TERMINATED, (Effect.REPORT_TIMEOUT,)),
            Stimulus.RECV_2XX: (S.ACCEPTED, (Effect.PASS_RESPONSE_UP, Timer.M)),
            Stimulus.RECV_3XX_6XX: (
                S.COMPLETED, (Effect.SEND_ACK, Effect.PASS_RESPONSE_UP, Timer.D)),
        },
        S.COMPLETED: {
            # 17.1.1.2: "Any retransmissions of the final response that are received
            # while in the "Completed" state MUST cause the ACK to be re-passed to the
            # transport layer for retransmission, but the newly received response MUST
            # NOT be passed up to the TU."
            Stimulus.RECV_3XX_6XX: (S.COMPLETED, (Effect.RESEND_ACK,)),
            Timer.D: (S.TERMINATED, ()),
        },
        S.ACCEPTED: {
            # RFC 6026 8.4: "any 2xx responses that match this client transaction and
            # that are received while in the "Accepted" state MUST be passed up to the TU"
            Stimulus.RECV_2XX: (S.ACCEPTED, (Effect.PASS_RESPONSE_UP,)),
            Timer.M: (S.TERMINATED, ()),
        },
        S.TERMINATED: {},
    },
    Kind.NON_INVITE_CLIENT: {
        # 17.1.2.2
        S.TRYING: {
            Timer.E: (S.TRYING, (Effect.RESEND_REQUEST, Effect.RESTART_TIMER)),
            Timer.F: (S.TERMINATED, (Effect.REPORT_TIMEOUT,)),
            # 17.1.2.2: a transport error in Trying or Proceeding ends the transaction.
            Stimulus.TRANSPORT_ERROR: (S.TERMINATED, (Effect.REPORT_TRANSPORT_ERROR,)),
            Stimulus.RECV_1XX: (S.PROCEEDING, (Effect.PASS_RESPONSE_UP,)),
            Stimulus.RECV_2XX: (S.COMPLETED, (Effect.PASS_RESPONSE_UP, Timer.K)),
            Stimulus.RECV_3XX_6XX: (S.COMPLETED, (Effect.PASS_RESPONSE_UP, Timer.K)),
        },
        S.PROCEEDING: {
            Timer.E: (S.PROCEEDING, (Effect.RESEND_REQUEST, Effect.RESTART_TIMER)),
            Timer.F: (S.TERMINATED, (Effect.REPORT_TIMEOUT,)),
            Stimulus.TRANSPORT_ERROR: (S.TERMINATED, (Effect.REPORT_TRANSPORT_ERROR,)),
            Stimulus.RECV_1XX: (S.PROCEEDING, (Effect.PASS_RESPONSE_UP,)),
            Stimulus.RECV_2XX: (S.COMPLETED, (Effect.PASS_RESPONSE_UP, Timer.K)),
            Stimulus.RECV_3XX_6XX: (S.COMPLETED, (Effect.PASS_RESPONSE_UP, Timer.K)),
        },
        S.COMPLETED: {
            Timer.K: (S.TERMINATED, ()),
        },
        S.TERMINATED: {},
    },
    Kind.INVITE_SERVER: {
        # 17.2.1; RFC 6026 7.1 adds Accepted + Timer L after a 2xx.
        S.PROCEEDING: {
            # 17.2.1: "If a request retransmission is received while in the "Proceeding"
            # state, the most recent provisional response that was received from the TU
            # MUST be passed to the transport layer for retransmission."
            Stimulus.RECV_REQUEST: (S.PROCEEDING, (Effect.RESEND_RESPONSE,)),
            Stimulus.TU_1XX: (S.PROCEEDING, (Effect.SEND_RESPONSE,)),
            Stimulus.TU_2XX: (S.ACCEPTED, (Effect.SEND_RESPONSE, Timer.L)),
            Stimulus.TU_3XX_6XX: (S.COMPLETED, (Effect.SEND_RESPONSE, Timer.G, Timer.H)),
        },
        S.ACCEPTED: {
            # RFC 6026 8.7: a 2xx retransmission from the TU "MUST be passed to the
            # transport layer"; retransmitted INVITEs "MUST be absorbed"; an ACK is
            # passed up, since it belongs to the dialog, not to this transaction.
            Stimulus.TU_2XX: (S.ACCEPTED, (Effect.SEND_RESPONSE,)),
            Stimulus.RECV_REQUEST: (S.ACCEPTED, ()),
            Stimulus.RECV_ACK: (S.ACCEPTED, (Effect.PASS_ACK_UP,)),
            Timer.L: (S.TERMINATED, ()),
        },
        S.COMPLETED: {
            Stimulus.RECV_REQUEST: (S.COMPLETED, (Effect.RESEND_RESPONSE,)),
            Timer.G: (S.COMPLETED, (Effect.RESEND_RESPONSE, Effect.RESTART_TIMER)),
            # 17.2.1: "If an ACK is received while the server transaction is in the
            # "Completed" state, the server transaction MUST transition to the
            # "Confirmed" state."  Timer G stops because Confirmed does not accept it.
            Stimulus.RECV_ACK: (S.CONFIRMED, (Timer.I,)),
            Timer.H: (S.TERMINATED, ()),
        },
        S.CONFIRMED: {
            # Confirmed exists only to absorb ACK retransmissions until Timer I.
            Stimulus.RECV_ACK: (S.CONFIRMED, ()),
            Stimulus.RECV_REQUEST: (S.CONFIRMED, ()),
            Timer.I: (S.TERMINATED, ()),
        },
        S.TERMINATED: {},
    },
    Kind.NON_INVITE_SERVER: {
        # 17.2.2
        S.TRYING: {
            # "Once in the "Trying" state, any further request retransmissions are
            # discarded."
            Stimulus.RECV_REQUEST: (S.TRYING, ()),
            Stimulus.TU_1XX: (S.PROCEEDING, (Effect.SEND_RESPONSE,)),
            Stimulus.TU_2XX: (S.COMPLETED, (Effect.SEND_RESPONSE, Timer.J)),
            Stimulus.TU_3XX_6XX: (S.COMPLETED, (Effect.SEND_RESPONSE, Timer.J)),
        },
        S.PROCEEDING: {
            Stimulus.RECV_REQUEST: (S.PROCEEDING, (Effect.RESEND_RESPONSE,)),
            Stimulus.TU_1XX: (S.PROCEEDING, (Effect.SEND_RESPONSE,)),
            Stimulus.TU_2XX: (S.COMPLETED, (Effect.SEND_RESPONSE, Timer.J)),
            Stimulus.TU_3XX_6XX: (S.COMPLETED, (Effect.SEND_RESPONSE, Timer.J)),
        },
        S.COMPLETED: {
            # "any other final responses passed by the TU to the server transaction
            # MUST be discarded while in the "Completed" state" (no TU row here).
            Stimulus.RECV_REQUEST: (S.COMPLETED, (Effect.RESEND_RESPONSE,)),
            Timer.J: (S.TERMINATED, ()),
        },
        S.TERMINATED: {},
    },
}

# The state each kind starts in, and the timers it starts there.
INITIAL: dict[Kind, tuple[TransactionState, tuple[Timer, ...]]] = {
    Kind.INVITE_CLIENT: (S.CALLING, (Timer.A, Timer.B)),
    Kind.NON_INVITE_CLIENT: (S.TRYING, (Timer.E, Timer.F)),
    Kind.INVITE_SERVER: (S.PROCEEDING, ()),
    Kind.NON_INVITE_SERVER: (S.TRYING, ()),
}


_M = TypeVar("_M", Request, Response)
_V = TypeVar("_V")


class _Kept(Generic[_V]):
    """A message a transaction holds, kept in the slot ``slot``: the object while the
    transaction is active; once it only lingers to absorb retransmissions (up to 32 s),
    its bytes (:meth:`_Transaction._shed`).  Tens of thousands of parsed messages
    sitting in lingering transactions made each pass of Python's cyclic collector take
    hundreds of milliseconds.  Reading one then parses it again (rare: a
    retransmission, a log line)."""

    __slots__ = ("slot", "parse")

    def __init__(self, slot: str, parse: Callable[[bytes], _V]) -> None:
        self.slot = slot
        self.parse = parse

    @overload
    def __get__(self, obj: None, owner: type[object]) -> _Kept[_V]: ...
    @overload
    def __get__(self, obj: _Transaction, owner: type[object]) -> _V: ...
    def __get__(self, obj: _Transaction | None, owner: type[object]) -> _Kept[_V] | _V:
        if obj is None:
            return self
        value = getattr(obj, self.slot)
        if value.__class__ is bytes:
            value = self.parse(value)
            setattr(obj, self.slot, value)
        return value  # type: ignore[no-any-return]

    def __set__(self, obj: _Transaction, value: _V) -> None:
        setattr(obj, self.slot, value)


def _inflate(data: bytes, kind: type[_M]) -> _M:
    """Parse a message this layer serialised itself (see :meth:`_Transaction._shed`)."""
    message = parse_message_untrusted(data)
    assert isinstance(message, kind)
    return message



class _Transaction:
    """State common to client and server transactions."""

    __slots__ = (
        "_request", "kind", "is_invite", "state", "transport", "destination", "key",
        "_last_response", "context", "_reliable", "_table", "_interval", "_ack_message",
        "rejected_key", "serial",
    )

    def __init__(
        self, request: Request | bytes, kind: Kind, transport: str, destination: Address, key: Key
    ) -> None:
        # (bytes: a packed transaction made an object again)
        self._request: Request | bytes = request
        self.kind = kind
        self.is_invite = kind is Kind.INVITE_CLIENT or kind is Kind.INVITE_SERVER
        self.transport = transport
        self.destination = destination
        self.key = key
        self.state, _ = INITIAL[kind]
        self._last_response: Response | bytes | None = None
        self.context: object | None = None
        # 18: "reliable" is anything but UDP (TCP, TLS, SCTP, WebSocket).
        self._reliable = transport.upper() != "UDP"
        self._table = TRANSITIONS[kind]
        self._interval = 0.0  # current A/E/G retransmission interval
        self._ack_message: Request | bytes | None = None
        # The dialog key it is filed under in the layer's rejected-INVITE table, if any.
        self.rejected_key: Key | None = None
        # Its number in the layer that runs it (which files its timers under it).
        self.serial = 0

    # The messages are kept as objects while the transaction is active, as their bytes
    # once it only lingers (see _Kept).
    request = _Kept[Request]("_request", lambda data: _inflate(data, Request))
    last_response = _Kept["Response | None"]("_last_response", lambda data: _inflate(data, Response))
    _ack = _Kept["Request | None"]("_ack_message", lambda data: _inflate(data, Request))

    def _shed(self) -> None:
        """Keep the messages as bytes from now on (see :attr:`request`)."""
        for name in ("_request", "_last_response", "_ack_message"):
            value = getattr(self, name)
            if value is not None and value.__class__ is not bytes:
                setattr(self, name, value.snapshot())

    def _packed(self) -> Packed:
        """This lingering transaction as plain data (see :meth:`TransactionLayer._pack`)."""
        self._shed()
        return (self.serial, _KIND_AT[self.kind], _STATE_AT[self.state], self.key, cast(bytes, self._request),
                cast("bytes | None", self._last_response), cast("bytes | None", self._ack_message),
                self.transport, self.destination, getattr(self, "source", None))

    @staticmethod
    def _unpacked(packed: Packed) -> Transaction:
        """The transaction ``packed`` was made from, as an object again."""
        (serial, kind_at, state_at, key, request, last_response, ack,
         transport, destination, source) = packed
        kind = _KINDS[kind_at]
        tx: Transaction
        if kind in _CLIENT_KINDS:
            tx = ClientTransaction(request, kind, transport, destination, key)
        else:
            tx = ServerTransaction(request, kind, transport, destination, key, cast(Address, source))
        tx.state = _STATES[state_at]
        tx._last_response = last_response
        tx._ack_message = ack
        tx.serial = serial
        return tx

    def __repr__(self) -> str:
        return (f"<{self.kind.value} transaction {self.request.method} "
                f"{self.state.value} {self.key!r}>")


# The states a transaction only lingers in, absorbing retransmissions until a timer
# ends it; entering one sheds its messages to bytes.  Not INVITE-server Completed: it
# retransmits its response every T1..T2 until the ACK comes.
LINGERING: frozenset[tuple[Kind, TransactionState]] = frozenset({
    (Kind.NON_INVITE_SERVER, S.COMPLETED),
    (Kind.INVITE_SERVER, S.ACCEPTED),
    (Kind.INVITE_SERVER, S.CONFIRMED),
    (Kind.NON_INVITE_CLIENT, S.COMPLETED),
    (Kind.INVITE_CLIENT, S.COMPLETED),
    (Kind.INVITE_CLIENT, S.ACCEPTED),
})


class ClientTransaction(_Transaction):
    """A request we sent (17.1).  ``destination``/``transport``: where it goes;
    ``last_response``: the latest response received; ``cancel_transaction``: the CANCEL
    sent for it by :meth:`TransactionLayer.cancel`, once sent."""

    __slots__ = ("cancel_transaction", "_cancel_wanted")

    def __init__(
        self, request: Request | bytes, kind: Kind, transport: str, destination: Address, key: Key
    ) -> None:
        super().__init__(request, kind, transport, destination, key)
        self.cancel_transaction: ClientTransaction | None = None
        self._cancel_wanted = False


class ServerTransaction(_Transaction):
    """A request we received (17.2).  ``source``/``transport``: where it came from;
    ``destination``: where its responses go (18.2.2, RFC 3581); ``last_response``: the
    latest response sent."""

    __slots__ = ("source",)

    def __init__(
        self, request: Request | bytes, kind: Kind, transport: str, destination: Address, key: Key,
        source: Address,
    ) -> None:
        super().__init__(request, kind, transport, destination, key)
        self.source = source


Transaction = ClientTransaction | ServerTransaction
_T = TypeVar("_T", ClientTransaction, ServerTransaction)

#: A lingering transaction packed into a tuple of plain data (serial, kind and state by
#: position, key, the messages' bytes, transport, destination, source): see
#: :meth:`TransactionLayer._pack`.
Packed = tuple[int, int, int, Key, bytes, "bytes | None", "bytes | None", str, Address,
               "Address | None"]
_KINDS: tuple[Kind, ...] = tuple(Kind)
_CLIENT_KINDS = frozenset({Kind.INVITE_CLIENT, Kind.NON_INVITE_CLIENT})
_KIND_AT: dict[Kind, int] = {kind: at for at, kind in enumerate(_KINDS)}
_STATES: tuple[TransactionState, ...] = tuple(TransactionState)
_STATE_AT: dict[TransactionState, int] = {state: at for at, state in enumerate(_STATES)}

#: How long a transaction has lingered before the layer packs it (it is then settled:
#: its TU has let go of it, or never will).
PACK_AFTER = 1.0


def _references_when_two_tables_hold() -> int:
    """What ``sys.getrefcount`` says, in :meth:`TransactionLayer._pack`'s own shape, of
    an object that only two tables hold: 4 on CPython 3.11 (the two tables, the local
    name, the call's argument); an interpreter that lends its stack references counts
    fewer, so the figure is measured rather than assumed."""
    live: dict[int, object] = {0: _Transaction.__new__(_Transaction)}
    table = {0: live[0]}
    tx = live.get(0)
    assert table[0] is tx
    return sys.getrefcount(tx)


#: References to a transaction when only the layer holds it (see _pack).
_ONLY_THE_LAYER = _references_when_two_tables_hold()


# -- actions -------------------------------------------------------------------------------


@fast_init
@dataclass(frozen=True, slots=True)
class Send:
    """Transmit ``message`` to ``destination`` over ``transport`` ("UDP", "TCP"...)."""

    message: Request | Response
    destination: Address
    transport: str


@fast_init
@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request (never an ACK): ``transaction`` is its new server transaction."""

    transaction: ServerTransaction
    request: Request


@fast_init
@dataclass(frozen=True, slots=True)
class TryingDue:
    """Follows the RequestReceived of a new INVITE, once the TU has seen it: carry it out
    with :meth:`TransactionLayer.trying`, which sends 100 (Trying) unless the TU has
    answered in the meantime (a challenge or a refusal decided at once needs none)."""

    transaction: ServerTransaction


@fast_init
@dataclass(frozen=True, slots=True)
class CancelReceived:
    """A CANCEL matched a live INVITE server transaction (9.2, 17.2.3).

    The TU answers ``transaction`` (the CANCEL's own) with 200 and, while ``invite`` is
    still Proceeding, answers the INVITE with 487.  If ``invite`` already has a final
    response the CANCEL has no effect on it, and :meth:`TransactionLayer.respond`
    discards a late 487."""

    transaction: ServerTransaction
    invite: ServerTransaction


@fast_init
@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK for a 2xx (its own transaction, 17.2.1) or an ACK matching nothing."""

    request: Request
    source: Address
    transport: str


@fast_init
@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response a client transaction passes up."""

    transaction: ClientTransaction
    response: Response


@fast_init
@dataclass(frozen=True, slots=True)
class StrayResponse:
    """A response matching no client transaction (17.1.3); the TU may need to ACK a 2xx."""

    response: Response
    source: Address


@fast_init
@dataclass(frozen=True, slots=True)
class TimedOut:
    """Timer B or F fired (the TU treats it as a 408, 8.1.3.1), or a cancelled INVITE got
    no final response within 64*T1 of its CANCEL (9.1)."""

    transaction: ClientTransaction


@fast_init
@dataclass(frozen=True, slots=True)
class TransportFailed:
    """The request could not be delivered (17.1.1.2, 17.1.2.2, 18.4): an ICMP
    unreachable came back for it, or the connection to its destination was refused.
    RFC 3263 4.3 treats it like a timeout: the TU may try the next target."""

    transaction: ClientTransaction
    reason: str


@fast_init
@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction reached Terminated; the layer has forgotten it."""

    transaction: ClientTransaction | ServerTransaction


Action = (
    Send | RequestReceived | TryingDue | CancelReceived | AckReceived | ResponseReceived | StrayResponse
    | TimedOut | TransportFailed | Terminated
)


# -- matching helpers ------------------------------------------------------------------------


def is_rfc3261_branch(branch: str | None) -> bool:
    """True when ``branch`` carries the magic cookie and something after it.

    17.2.3: the branch matching rule applies when the branch "begins with the magic
    cookie"; a bare cookie (RFC 4475's "badbranch" torture test) identifies nothing, so such a
    request falls back to the RFC 2543 rules like one with no cookie at all."""
    return branch is not None and len(branch) > 7 and branch.startswith(MAGIC_COOKIE)


def _strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") else host


def _via_fields(via: Via) -> tuple[str | None, str | None, str | None]:
    """``branch``, ``received`` and ``rport`` of a Via in one pass over its parameters
    (names are case-insensitive; a flag reads as '')."""
    branch = received = rport = None
    for name, value in via.params:
        lowered = name.lower()
        if lowered == "branch":
            branch = value or ""
        elif lowered == "received":
            received = value or ""
        elif lowered == "rport":
            rport = value or ""
    return branch, received, rport


def response_destination(via: Via, source: Address, transport: str) -> Address:
    """Where a server transaction sends its responses (18.2.2 with RFC 3581).

    ``via`` is the request's top Via as the transport shell left it (with ``received``
    and a valued ``rport`` added); ``maddr`` is not supported."""
    _, received, rport = _via_fields(via)
    return _response_destination(via, received, rport, source, transport)


def _response_destination(
    via: Via, received: str | None, rport: str | None, source: Address, transport: str
) -> Address:
    if transport != "UDP" and transport.upper() != "UDP":
        # 18.2.2: "If the "sent-protocol" is a reliable transport protocol such as TCP
        # or SCTP ... the response MUST be sent using the existing connection to the
        # source of the original request".
        return source
    if rport and rport.isdigit():
        # RFC 3581 4: the response goes "to the IP address ... in the "received"
        # parameter ... and the port in the "rport" parameter", i.e. the packet's source.
        return (_strip_brackets(received) if received else source[0], int(rport))
    if received:
        # 18.2.2: "the response MUST be sent to the address in the "received" parameter,
        # using the port indicated in the "sent-by" value, or using port 5060 if none".
        return (_strip_brackets(received), via.port or 5060)
    return (_strip_brackets(via.host), via.port or 5060)


def _key_2543(request: Request, via: Via, to_tag: str | None, method: str) -> Key:
    """17.2.3's fallback for requests without a usable branch: "the Request-URI, To
    tag, From tag, Call-ID, CSeq, and top Via header field match those of the
    INVITE" (CSeq by number, so ACK and CANCEL can name the INVITE)."""
    return (
        str(request.uri), request.from_.tag, request.call_id, request.cseq.number,
        via.transport, via.host.lower(), via.port, via.branch, to_tag, method,
    )


# -- the layer ---------------------------------------------------------------------------


class TransactionLayer:
    """Every live transaction of one endpoint, their timers, and the matching rules.

    Each public method takes ``now`` (seconds on the caller's clock) and returns the
    actions to carry out in order.  The layer never raises for anything the network
    sends: an unmatchable message (e.g. without a usable Via or CSeq) is logged and
    dropped.  It does raise :class:`SIPValueError` for misuse by the TU.
    """

    __slots__ = (
        "_settings", "_send_trying", "_clients", "_servers", "_heap", "_now",
        "_udp_intervals", "_reliable_intervals", "_rejected_invites", "timers_started",
        "_live", "_serial", "_lingering_since", "_lingering",
    )

    def __init__(
        self, *, t1: float = 0.5, t2: float = 4.0, t4: float = 5.0, send_trying: bool = True
    ) -> None:
        self._settings = settings = TimerSettings(t1=t1, t2=t2, t4=t4)
        # First intervals looked up once per transport kind rather than worked out per timer.
        self._udp_intervals = {t: settings.initial(t, reliable=False) for t in Timer}
        self._reliable_intervals = {t: settings.initial(t, reliable=True) for t in Timer}
        self._send_trying = send_trying
        # (a lingering transaction may be kept packed: see _pack)
        self._clients: dict[Key, ClientTransaction | Packed] = {}
        self._servers: dict[Key, ServerTransaction | Packed] = {}
        # INVITE server transactions that sent a 300-699, by dialog identity, for ACKs
        # that carry a branch of their own (see _match_lenient_ack).
        self._rejected_invites: dict[Key, ServerTransaction] = {}
        # Timers name their transaction by its serial, looked up in _live when they fire,
        # rather than holding it: a transaction's timers outlive it (a BYE's Timer F, 32 s,
        # stays in the heap after its 200 ends the transaction 5 s later), and entries of
        # plain numbers are not the cyclic collector's to visit.
        self._heap: TimerHeap[int] = TimerHeap()
        self._live: dict[int, Transaction | Packed] = {}
        self._serial = 0
        # When each transaction that started to linger did, and its serial, oldest first
        # (two queues of plain numbers rather than one of pairs: no tuple per entry).
        self._lingering_since: deque[float] = deque()
        self._lingering: deque[int] = deque()
        self._now = 0.0
        #: Timers started so far: while it stays the same, no deadline earlier than the
        #: last :meth:`next_deadline` can have appeared (a driver need not ask again).
        self.timers_started = 0

    # -- the public API ------------------------------------------------------------------

    def receive(
        self, message: Request | Response, source: Address, transport: str, now: float
    ) -> list[Action]:
        """Feed one message from the network (after the shell added received/rport)."""
        self._now = now
        out: list[Action] = []
        try:
            if isinstance(message, Response):
                self._receive_response(message, source, now, out)
            else:
                self._receive_request(message, source, transport, now, out)
        except SIPParseError as exc:
            # Matching reads Via, CSeq, Call-ID, From and To; a message whose headers
            # do not parse cannot belong to any transaction and gets no answer here.
            logger.info("Dropping an unmatchable message from %s:%s: %s",
                        source[0], source[1], exc)
            return []
        return out

    def trying(self, transaction: ServerTransaction, now: float) -> list[Action]:
        """Carry out a :class:`TryingDue`: send 100 (Trying) for the INVITE unless its
        transaction has sent a response already."""
        self._now = now
        out: list[Action] = []
        if transaction.last_response is None and transaction.state is S.PROCEEDING:
            self._fire(transaction, Stimulus.TU_1XX, make_response(transaction.request, 100), now, out)
        return out

    def respond(self, transaction: ServerTransaction, response: Response, now: float) -> list[Action]:
        """Send the TU's ``response`` through ``transaction``.

        A response the transaction's state does not allow (a second final response, or
        anything after Terminated) is logged and discarded, as 17.2.2 requires for
        non-INVITE transactions; the result is then ``[]``."""
        self._now = now
        status = response.status
        if status < 100 or status > 699:
            raise SIPValueError(f"Cannot send a response with status {status}")
        stimulus = (Stimulus.TU_1XX if status < 200 else
                    Stimulus.TU_2XX if status < 300 else Stimulus.TU_3XX_6XX)
        out: list[Action] = []
        if not self._fire(transaction, stimulus, response, now, out):
            logger.warning("Discarding a %d response to %s: its transaction is %s",
                           status, transaction.request.method, transaction.state.value)
        elif stimulus is Stimulus.TU_3XX_6XX and transaction.is_invite:
            key = _dialog_key(transaction.request, response.to.tag)
            if key is not None:
                self._rejected_invites[key] = transaction
                transaction.rejected_key = key
        return out

    def respond_statelessly(self, transaction: ServerTransaction, response: Response, now: float) -> list[Action]:
        """Send a final non-2xx ``response`` and drop the transaction at once.

        RFC 3261 8.2.7: a challenge is best sent by a stateless UAS, "if unauthenticated
        requests were handled statefully, then malicious floods of unauthenticated
        requests could create massive amounts of transaction state".  Nothing is
        retransmitted and no timer is armed: a retransmitted request finds no
        transaction, reaches the TU again and is answered again, and the ACK of an
        INVITE's answer goes to the TU, which ignores it.  The response's To tag must
        be the same for the same request (:func:`sip.message.stateless_tag`).

        Only a transaction that has sent no response yet can be answered this way."""
        self._now = now
        status = response.status
        if not 300 <= status <= 699:
            raise SIPValueError(f"Only a 300-699 response can be sent statelessly, not {status}")
        if transaction.last_response is not None or transaction.state is not INITIAL[transaction.kind][0]:
            raise SIPValueError("The transaction has answered already; respond() through it")
        transaction.last_response = response
        out: list[Action] = [Send(response, transaction.destination, transaction.transport)]
        transaction.state = S.TERMINATED
        self._forget(transaction, out)
        return out

    def request(
        self, request: Request, destination: Address, transport: str, now: float
    ) -> tuple[ClientTransaction, list[Action]]:
        """Start a client transaction that sends ``request`` to ``destination``.

        The request's top Via must carry a fresh RFC 3261 branch (8.1.1.7): it is the
        transaction's identity.  ACK is refused: an ACK for a 2xx is sent by the TU with a
        plain :class:`Send`, and the ACK for a 300-699 by the INVITE transaction itself."""
        if request.method == "ACK":
            raise SIPValueError("ACK is not sent through a client transaction")
        try:
            branch = request.top_via.branch
        except SIPParseError as exc:
            raise SIPValueError(f"Request has no usable Via: {exc}") from exc
        if not is_rfc3261_branch(branch):
            raise SIPValueError("The top Via needs a branch starting with z9hG4bK (8.1.1.7)")
        out: list[Action] = []
        tx = self._start_client(request, destination, transport, now, out)
        return tx, out

    def cancel(self, transaction: ClientTransaction, now: float) -> list[Action]:
        """Cancel a pending INVITE client transaction (9.1).

        The CANCEL (a new client transaction, ``transaction.cancel_transaction``) goes
        out at once if a provisional response has arrived; otherwise it is sent on the
        first provisional, because 9.1 says "If no provisional response has been
        received, the CANCEL request MUST NOT be sent".  Nothing happens when the INVITE
        already has a final response, when it is not an INVITE ("SHOULD NOT be sent to
        cancel non-INVITE requests"), or when a CANCEL was already asked for.  Once the
        CANCEL is out, the INVITE gets 64*T1 for its final response before it ends with
        :class:`TimedOut` (9.1)."""
        self._now = now
        if not transaction.is_invite or transaction.cancel_transaction is not None:
            return []
        out: list[Action] = []
        if transaction.state is S.CALLING:
            transaction._cancel_wanted = True
        elif transaction.state is S.PROCEEDING:
            self._send_cancel(transaction, now, out)
        return out

    def expire(self, now: float) -> list[Action]:
        """Fire every timer due at or before ``now``, in deadline order."""
        self._now = now
        out: list[Action] = []
        since = self._lingering_since
        if since and since[0] <= now - PACK_AFTER:
            # (first: a transaction this loop has in hand would not count as settled)
            self._pack(now - PACK_AFTER)
        heap = self._heap
        live = self._live
        while (entry := heap.pop_due(now)) is not None:
            deadline, serial, timer = entry
            found = live.get(serial)
            tx = self._unpack_for(found, timer) if isinstance(found, tuple) else found
            if tx is not None:
                # The restart (if any) is measured from the scheduled deadline so a
                # punctual driver gets the exact RFC schedule; see _arm for a late one.
                self._fire(tx, timer, None, deadline, out)
        return out

    def transport_error(
        self, sent: bytes, destination: Address, transport: str, reason: str, now: float
    ) -> list[Action]:
        """The shell could not deliver ``sent`` (what it tried to send, or as much of it
        as an ICMP error quoted) to ``destination``.  If it was a request of a client
        transaction still waiting for its final response there, that transaction ends
        with :class:`TransportFailed`; anything else (a response, an ACK, a quote too
        short to name its branch, a forged error naming no transaction of ours) is
        ignored.  The branch in the quote is what ties an error to a transaction, so an
        error costs one lookup, whatever the number of transactions."""
        self._now = now
        key = _quoted_request_key(sent)
        if key is None:
            return []
        tx = self._client(key)
        if tx is None or tx.destination != destination or tx.transport.upper() != transport.upper():
            return []
        out: list[Action] = []
        self._fire(tx, Stimulus.TRANSPORT_ERROR, None, now, out, reason=reason)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has work to do, or None if no timer is pending."""
        return self._heap.next_deadline(self._timer_is_live)

    def statistics(self) -> dict[str, int]:
        """Counts of live transactions and of (possibly stale) timer entries."""
        return {
            "client_transactions": len(self._clients),
            "server_transactions": len(self._servers),
            "timer_entries": len(self._heap),
        }

    # -- requests from the network -------------------------------------------------------

    def _receive_request(
        self, request: Request, source: Address, transport: str, now: float, out: list[Action]
    ) -> None:
        via = request.top_via
        method = request.method
        branch, received, rport = _via_fields(via)
        rfc3261 = is_rfc3261_branch(branch)
        if rfc3261:
            # 17.2.3: match on the branch, the sent-by of the top Via, and the method
            # ("except for ACK, where the method of the request that created the
            # transaction is INVITE").
            key: Key = (branch, via.host.lower(), via.port, "INVITE" if method == "ACK" else method)
        else:
            key = _key_2543(request, via, request.to.tag, "INVITE" if method == "ACK" else method)

        if method == "ACK":
            tx = self._server(key)
            if tx is None and not rfc3261:
                tx = self._match_2543_ack(request, via)
            if tx is None and self._rejected_invites:
                tx = self._match_lenient_ack(request)
            if tx is None:
                # 17.2.1 (as amended by RFC 6026): an ACK for a 2xx is a transaction of
                # its own; it and any ACK matching nothing go to the TU (the dialog).
                out.append(AckReceived(request, source, transport))
            else:
                self._fire(tx, Stimulus.RECV_ACK, request, now, out, source)
            return

        tx = self._server(key)
        if tx is not None:
            self._fire(tx, Stimulus.RECV_REQUEST, request, now, out)
            return

        is_invite = method == "INVITE"
        kind = Kind.INVITE_SERVER if is_invite else Kind.NON_INVITE_SERVER
        tx = ServerTransaction(
            request, kind, transport,
            _response_destination(via, received, rport, source, transport), key, source,
        )
        self._servers[key] = tx
        self._number(tx)
        if is_invite:
            out.append(RequestReceived(tx, request))
            if self._send_trying:
                # 17.2.1: "If the TU will not respond within 200 ms, the server transaction
                # SHOULD send a 100 (Trying)".  It goes as soon as the TU has seen the
                # INVITE without answering (see trying()); sent at once, it also stops
                # the client's Timer A retransmissions early, and it is what a
                # retransmitted INVITE gets.
                out.append(TryingDue(tx))
        elif method == "CANCEL":
            # 9.2: the CANCEL matches the transaction it cancels by the 17.2.3 rules
            # "but the method of the request is ignored" - here: it names an INVITE.
            invite = self._server(key[:-1] + ("INVITE",))
            if invite is not None:
                out.append(CancelReceived(tx, invite))
            else:
                out.append(RequestReceived(tx, request))
        else:
            out.append(RequestReceived(tx, request))

    def _match_lenient_ack(self, ack: Request) -> ServerTransaction | None:
        """An ACK for a 300-699 whose branch differs from its INVITE's.

        17.1.1.3 says that ACK reuses the INVITE's branch, but some widespread clients
        (SIPp's stock scenarios among them) give it a branch of its own.  Unmatched, the
        server would retransmit its error (a 486, a 404) until Timer H: seven useless
        datagrams per call under load.  The ACK still names the dialog exactly (Call-ID, both tags,
        CSeq number), and only a transaction that sent a non-2xx final response with
        that To tag can match, so a 2xx ACK (which goes to the TU) is never taken."""
        key = _dialog_key(ack, ack.to.tag)
        if key is None:
            return None
        tx = self._rejected_invites.get(key)
        if tx is not None and tx.state is S.COMPLETED:
            return tx
        return None

    def _match_2543_ack(self, ack: Request, via: Via) -> ServerTransaction | None:
        """17.2.3: an RFC 2543 ACK carries the To tag of the response it acknowledges,
        which the INVITE did not have: find the INVITE under its own (tagless) To and
        check the tag against the response the transaction sent."""
        ack_tag = ack.to.tag
        if ack_tag is None:
            return None
        tx = self._server(_key_2543(ack, via, None, "INVITE"))
        # The response's To was built by our TU, so it parses.
        if tx is not None and tx.last_response is not None and tx.last_response.to.tag == ack_tag:
            return tx
        return None

    # -- responses from the network ------------------------------------------------------

    def _receive_response(
        self, response: Response, source: Address, now: float, out: list[Action]
    ) -> None:
        # 17.1.3: the branch of the top Via and the CSeq method identify the transaction.
        key: Key = (response.top_via.branch, response.cseq.method)
        tx = self._client(key)
        if tx is None:
            out.append(StrayResponse(response, source))
            return
        status = response.status
        stimulus = (Stimulus.RECV_1XX if status < 200 else
                    Stimulus.RECV_2XX if status < 300 else Stimulus.RECV_3XX_6XX)
        self._fire(tx, stimulus, response, now, out)

    # -- client transactions -------------------------------------------------------------

    def _start_client(
        self, request: Request, destination: Address, transport: str, now: float,
        out: list[Action],
    ) -> ClientTransaction:
        key: Key = (request.top_via.branch, request.method)
        if key in self._clients:
            raise SIPValueError("A client transaction with this branch and method exists")
        kind = Kind.INVITE_CLIENT if request.method == "INVITE" else Kind.NON_INVITE_CLIENT
        tx = ClientTransaction(request, kind, transport, destination, key)
        self._clients[key] = tx
        self._number(tx)
        out.append(Send(request, destination, transport))
        _, timers = INITIAL[kind]
        for timer in timers:
            self._start_timer(tx, timer, now)
        return tx

    def _send_cancel(self, invite: ClientTransaction, now: float, out: list[Action]) -> None:
        invite._cancel_wanted = False
        # 9.1: the CANCEL has the INVITE's top Via (so its branch) and goes "to the same
        # destination" as the request it cancels.
        invite.cancel_transaction = self._start_client(
            make_cancel(invite.request), invite.destination, invite.transport, now, out
        )
        self._start_timer(invite, Timer.AFTER_CANCEL, now)

    # -- the engine --------------------------------------------------------------------

    def _fire(
        self,
        tx: Transaction,
        stimulus: Stimulus | Timer,
        message: Request | Response | None,
        now: float,
        out: list[Action],
        source: Address | None = None,
        reason: str = "",
    ) -> bool:
        """Apply one table row; False when the state has no row for ``stimulus``."""
        row = tx._table[tx.state].get(stimulus)
        if row is None:
            return False
        target, effects = row
        entering = target is not tx.state
        tx.state = target
        at_once: Timer | None = None
        for effect in effects:
            if effect.__class__ is Timer:
                # Timers come last in a row and are the commonest effect: test them first.
                assert isinstance(effect, Timer)
                if self._start_timer(tx, effect, now):
                    at_once = effect
            elif effect is Effect.SEND_RESPONSE:
                assert isinstance(message, Response)
                tx.last_response = message
                out.append(Send(message, tx.destination, tx.transport))
            elif effect is Effect.PASS_RESPONSE_UP:
                assert isinstance(message, Response) and isinstance(tx, ClientTransaction)
                tx.last_response = message
                out.append(ResponseReceived(tx, message))
            elif effect is Effect.RESEND_RESPONSE:
                if tx.last_response is not None:
                    out.append(Send(tx.last_response, tx.destination, tx.transport))
            elif effect is Effect.RESEND_REQUEST:
                out.append(Send(tx.request, tx.destination, tx.transport))
            elif effect is Effect.RESTART_TIMER:
                assert isinstance(stimulus, Timer)
                tx._interval = self._settings.next_interval(
                    stimulus, tx._interval, proceeding=target is S.PROCEEDING)
                self._arm(tx, stimulus, now, tx._interval)
            elif effect is Effect.SEND_ACK:
                # 17.1.1.3: the client transaction builds the ACK for 300-699 itself,
                # and "The ACK MUST be sent to the same address, port, and transport to
                # which the original request was sent."
                assert isinstance(message, Response)
                tx._ack = make_ack_for_error(tx.request, message)
                out.append(Send(tx._ack, tx.destination, tx.transport))
            elif effect is Effect.RESEND_ACK:
                if tx._ack is not None:
                    out.append(Send(tx._ack, tx.destination, tx.transport))
            elif effect is Effect.PASS_ACK_UP:
                assert isinstance(message, Request) and isinstance(tx, ServerTransaction)
                out.append(AckReceived(message, source or tx.source, tx.transport))
            elif effect is Effect.REPORT_TIMEOUT:
                assert isinstance(tx, ClientTransaction)
                out.append(TimedOut(tx))
            elif effect is Effect.REPORT_TRANSPORT_ERROR:
                assert isinstance(tx, ClientTransaction)
                out.append(TransportFailed(tx, reason))
            elif effect is Effect.SEND_PENDING_CANCEL:
                assert isinstance(tx, ClientTransaction)
                if tx._cancel_wanted:
                    self._send_cancel(tx, now, out)
        if target is S.TERMINATED:
            if stimulus is Timer.H:
                # 17.2.1: Timer H firing "implies that the ACK was never received"; the
                # TU learns of it through the Terminated action that follows.
                logger.info("No ACK for the error response to %s from %s:%s",
                            tx.request.method, tx.destination[0], tx.destination[1])
            self._forget(tx, out)
        elif at_once is not None:
            # A zero timer (D, I, J, K on a reliable transport) fires right away, after
            # the effects of the transition that started it.
            self._fire(tx, at_once, None, now, out)
        elif entering and (tx.kind, target) in LINGERING:
            tx._shed()
            self._lingering_since.append(now)
            self._lingering.append(tx.serial)
        return True

    def _number(self, tx: Transaction) -> None:
        """Give a new transaction its serial, under which its timers find it."""
        self._serial = tx.serial = self._serial + 1
        self._live[tx.serial] = tx

    def _timer_is_live(self, serial: int, timer: Timer) -> bool:
        tx = self._live.get(serial)
        if tx is None:
            return False
        if isinstance(tx, tuple):
            return timer in TRANSITIONS[_KINDS[tx[1]]][_STATES[tx[2]]]
        return timer in tx._table[tx.state]

    # -- packed transactions -------------------------------------------------------------
    #
    # A transaction lingers up to 32 s after its final response only to absorb
    # retransmissions: at 250 calls/s that is some 18,000 of them per process.  Each is
    # an object the cyclic collector visits on its passes over the older generations,
    # and they were most of the oldest one.  So once one has lingered PACK_AFTER and
    # nothing but the layer holds it (no TU context, and no reference anywhere else:
    # sys.getrefcount counts them), it is kept as a tuple of plain data (Packed), which
    # the collector stops visiting after a pass.  A message or a live timer that finds
    # it makes it an object again; its last timer ends it quietly, without a Terminated
    # action, since no TU holds it.

    def _pack(self, settled: float) -> None:
        """Pack the transactions that started to linger at or before ``settled``."""
        since, lingering = self._lingering_since, self._lingering
        live = self._live
        while since and since[0] <= settled:
            since.popleft()
            tx = live.get(lingering.popleft())
            if (tx is None or isinstance(tx, tuple) or tx.context is not None
                    or tx.rejected_key is not None or (tx.kind, tx.state) not in LINGERING):
                continue
            table: dict[Key, ClientTransaction | Packed] | dict[Key, ServerTransaction | Packed]
            if isinstance(tx, ClientTransaction):
                if tx.cancel_transaction is not None:
                    continue
                table = self._clients
            else:
                table = self._servers
            if table.get(tx.key) is not tx or sys.getrefcount(tx) != _ONLY_THE_LAYER:
                continue
            packed = tx._packed()
            live[tx.serial] = table[tx.key] = packed

    def _server(self, key: Key) -> ServerTransaction | None:
        """The server transaction filed under ``key``, as an object."""
        tx = self._servers.get(key)
        return self._unpack(tx, ServerTransaction) if isinstance(tx, tuple) else tx

    def _client(self, key: Key) -> ClientTransaction | None:
        """The client transaction filed under ``key``, as an object."""
        tx = self._clients.get(key)
        return self._unpack(tx, ClientTransaction) if isinstance(tx, tuple) else tx

    def _unpack(self, packed: Packed, kind: type[_T]) -> _T:
        """``packed`` as an object again, filed where it was (``kind``: what it is)."""
        tx = _Transaction._unpacked(packed)
        assert isinstance(tx, kind)
        if isinstance(tx, ClientTransaction):
            self._clients[tx.key] = tx
        else:
            self._servers[tx.key] = tx
        self._live[tx.serial] = tx
        return tx

    def _unpack_for(self, packed: Packed, timer: Timer) -> Transaction | None:
        """``packed`` as an object if ``timer`` does something to it; None when the
        timer is stale, or when it is the one that ends it (which it then does)."""
        serial, kind_at, state_at, key = packed[:4]
        kind = _KINDS[kind_at]
        row = TRANSITIONS[kind][_STATES[state_at]].get(timer)
        if row is None:
            return None
        is_client = kind in _CLIENT_KINDS
        if row[0] is S.TERMINATED and not row[1]:
            table = self._clients if is_client else self._servers
            if table.get(key) is packed:
                del table[key]
            del self._live[serial]
            return None
        if is_client:
            return self._unpack(packed, ClientTransaction)
        return self._unpack(packed, ServerTransaction)

    def _start_timer(self, tx: Transaction, timer: Timer, now: float) -> bool:
        """Arm ``timer`` with its first interval; True if it is due immediately."""
        interval = (self._reliable_intervals if tx._reliable else self._udp_intervals)[timer]
        if interval is None:
            return False
        if interval == 0.0:
            return True
        if timer in RETRANSMIT_TIMERS:
            tx._interval = interval
        self._arm(tx, timer, now, interval)
        return False

    def _arm(self, tx: Transaction, timer: Timer, start: float, interval: float) -> None:
        deadline = start + interval
        if deadline <= self._now:
            # The driver woke up late (by more than an interval): retransmit once now and
            # space the next one a full interval out, rather than bursting to catch up.
            deadline = self._now + interval
        self._heap.push(deadline, tx.serial, timer)
        self.timers_started += 1

    def _forget(self, tx: Transaction, out: list[Action]) -> None:
        self._live.pop(tx.serial, None)
        if isinstance(tx, ClientTransaction):
            if self._clients.get(tx.key) is tx:
                del self._clients[tx.key]
        else:
            if self._servers.get(tx.key) is tx:
                del self._servers[tx.key]
            key = tx.rejected_key
            if key is not None and self._rejected_invites.get(key) is tx:
                del self._rejected_invites[key]
        out.append(Terminated(tx))


# The start of a request we sent, as an error quotes it: its method, then its top Via's
# branch.  We write every request, so the first Via line is ours and well formed.
_QUOTED_REQUEST = re.compile(
    rb"([A-Za-z]+) [^\r\n]* SIP/2\.0\r\n(?:[^\r\n]*\r\n)*?(?:Via|v)[ \t]*:[^\r\n]*?;[ \t]*branch=([^;,\s]+)",
    re.IGNORECASE,
)


def _quoted_request_key(sent: bytes) -> Key | None:
    """(branch, method) of the request at the start of ``sent``, or None."""
    m = _QUOTED_REQUEST.match(sent)
    if m is None:
        return None
    try:
        return (m.group(2).decode("ascii"), m.group(1).decode("ascii"))
    except UnicodeDecodeError:
        return None


def _dialog_key(request: Request, to_tag: str | None) -> Key | None:
    """(Call-ID, From tag, To tag, CSeq number) or None when a tag is missing."""
    from_tag = request.from_.tag
    if not from_tag or not to_tag:
        return None
    return (request.call_id, from_tag, to_tag, request.cseq.number)
