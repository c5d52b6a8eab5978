"""RFC 3261 transaction timers (section 17, table 4) and a lazy-deletion timer heap.

Pure: nothing here reads a clock.  Deadlines are absolute floats on whatever time scale
the caller passes as ``now`` (the transport shell uses ``trio.current_time()``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar


class Timer(Enum):
    """The transaction timers of RFC 3261 17 and RFC 6026 (L and M)."""

    # Members are singletons, so identity hashing is exact and runs in C (Enum's own
    # __hash__ is a Python call, paid on every transition-table lookup).
    __hash__ = object.__hash__

    A = "A"  # INVITE client: request retransmission (unreliable only)
    B = "B"  # INVITE client: transaction timeout in Calling
    D = "D"  # INVITE client: wait for response retransmissions in Completed
    E = "E"  # non-INVITE client: request retransmission (unreliable only)
    F = "F"  # non-INVITE client: transaction timeout
    G = "G"  # INVITE server: 3xx-6xx retransmission (unreliable only)
    H = "H"  # INVITE server: wait for ACK in Completed
    I = "I"  # INVITE server: absorb ACK retransmissions in Confirmed  # noqa: E741
    J = "J"  # non-INVITE server: absorb request retransmissions in Completed
    K = "K"  # non-INVITE client: absorb response retransmissions in Completed
    L = "L"  # INVITE server (RFC 6026): absorb INVITE retransmissions in Accepted
    M = "M"  # INVITE client (RFC 6026): pass up 2xx retransmissions in Accepted
    # Unnamed in the RFC: 9.1 gives a cancelled INVITE 64*T1 to get its final response.
    AFTER_CANCEL = "after CANCEL"


# Timers that exist only to retransmit over an unreliable transport.  RFC 3261 17.1.1.2:
# "If an unreliable transport is being used, the client transaction MUST start timer A";
# 17.1.2.2 and 17.2.1 say the same of E and G.
RETRANSMIT_TIMERS = frozenset({Timer.A, Timer.E, Timer.G})

# Timers whose only job is to soak up retransmissions, so they are zero on a reliable
# transport (table 4: "Timer D ... 0s for TCP/SCTP", likewise I, J and K).
ABSORB_TIMERS = frozenset({Timer.D, Timer.I, Timer.J, Timer.K})


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerSettings:
    """T1, T2 and T4 (RFC 3261 17.1.1.1 and table 4) and the timer values derived from them."""

    t1: float = 0.5  # RTT estimate
    t2: float = 4.0  # cap on non-INVITE request and INVITE response retransmit intervals
    t4: float = 5.0  # maximum time a message stays in the network

    def initial(self, timer: Timer, reliable: bool) -> float | None:
        """The first interval of ``timer``: None when it is not used on this transport,
        0.0 when it fires at once (the absorb timers on a reliable transport)."""
        if reliable:
            if timer in RETRANSMIT_TIMERS:
                return None
            if timer in ABSORB_TIMERS:
                return 0.0
        if timer in RETRANSMIT_TIMERS:
            return self.t1
        if timer is Timer.D:
            # 17.1.1.2: "Timer D ... MUST be set to at least 32 seconds for unreliable
            # transports"; 64*T1 is 32 s with the default T1, and larger T1 means slower
            # networks where retransmissions linger longer.
            return max(32.0, 64 * self.t1)
        if timer is Timer.I or timer is Timer.K:
            return self.t4
        # B, F, H, J, L, M and AFTER_CANCEL are all 64*T1.
        return 64 * self.t1

    def next_interval(self, timer: Timer, interval: float, proceeding: bool = False) -> float:
        """The interval after ``interval`` for a retransmission timer that just fired."""
        if timer is Timer.A:
            # 17.1.1.2: "the client transaction MUST reset the timer with a value of 2*T1"
            # and so on, doubling with no cap (Timer B ends the series).
            return 2 * interval
        if proceeding:
            # 17.1.2.2: in Proceeding, Timer E is "reset with a value of T2 seconds".
            return self.t2
        # 17.1.2.2 (E) and 17.2.1 (G): the interval doubles "until it reaches T2".
        return min(2 * interval, self.t2)


T = TypeVar("T")


#: Timers by their position in :class:`Timer`: heap entries hold the position, an int.
_TIMERS: tuple[Timer, ...] = tuple(Timer)
_POSITION: dict[Timer, int] = {timer: at for at, timer in enumerate(_TIMERS)}


class TimerHeap(Generic[T]):
    """A min-heap of ``(deadline, seq, owner, timer)`` with lazy deletion.

    Cancelling a timer is free: the owner's state simply stops accepting it, and the
    caller's ``is_live`` predicate discards such entries when they reach the top.  ``seq``
    keeps entries with equal deadlines in arming order and means owners are never compared.

    An entry stores its timer as a small int, so that with an owner of plain data (a
    number, a string) it holds nothing the cyclic collector has to visit: Python stops
    tracking such a tuple after one collection.  A heap of transactions holds tens of
    thousands of entries, most of them for timers that will never fire.
    """

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T, int]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, deadline: float, owner: T, timer: Timer) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, owner, _POSITION[timer]))

    def pop_due(self, now: float) -> tuple[float, T, Timer] | None:
        """Remove and return the earliest entry due at or before ``now`` (live or not)."""
        heap = self._heap
        if heap and heap[0][0] <= now:
            deadline, _, owner, timer = heapq.heappop(heap)
            return deadline, owner, _TIMERS[timer]
        return None

    def next_deadline(self, is_live: Callable[[T, Timer], bool]) -> float | None:
        """The earliest live deadline, discarding dead entries found on top."""
        heap = self._heap
        timers = _TIMERS
        while heap:
            deadline, _, owner, timer = heap[0]
            if is_live(owner, timers[timer]):
                return deadline
            heapq.heappop(heap)
        return None
