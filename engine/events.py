"""The event bus: what happens on the server, for customers' consoles and the admin's.

Publishers (registrar, authenticator, calls, dialplans...) call :meth:`EventBus.publish`,
which never blocks and never waits for a reader.  Readers hold a :class:`Subscription`
with a bounded buffer: when a reader falls behind, the oldest events are dropped and the
reader is told how many with one ``dropped`` marker event in their place.  A slow console
therefore costs memory up to its bound and nothing else.

An event belongs to a customer (``owner`` is the customer id) or to the system
(``owner=None``).  A subscription for an owner sees that owner's events; a subscription
with ``owner=None`` (the admin's) sees every event.

Threading: publish and receive from the trio thread (the bus wakes readers with
:class:`trio.Event`).  Code running in worker threads publishes through
``trio.from_thread.run_sync(bus.publish, event)``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import trio

logger = logging.getLogger(__name__)

#: The event types publishers use.  ``dropped`` is the bus's own marker.
EVENT_TYPES = frozenset({"dialplan", "registrar", "auth", "call", "limit", "sip", "dropped"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One thing that happened.  ``data`` is JSON-able plain data (the web console
    serialises it as is)."""

    owner: int | None
    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    time: float

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}")


class Subscription:
    """A reader's bounded queue of events.  Use as a context manager (or call
    :meth:`close`) so the bus forgets it; read with ``await sub.receive()`` or
    ``async for event in sub``."""

    __slots__ = ("_bus", "owner", "types", "_buffer", "_maxlen", "_dropped", "_wakeup",
                 "_closed")

    def __init__(self, bus: EventBus, owner: int | None, types: frozenset[str] | None,
                 maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self._bus = bus
        self.owner = owner
        self.types = types
        self._buffer: deque[Event] = deque()
        self._maxlen = maxlen
        self._dropped = 0
        self._wakeup: trio.Event | None = None
        self._closed = False

    # -- the publisher's side ----------------------------------------------------------
    def _offer(self, event: Event) -> None:
        if self.types is not None and event.type not in self.types:
            return
        buffer = self._buffer
        if len(buffer) >= self._maxlen:
            buffer.popleft()
            self._dropped += 1
        buffer.append(event)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    # -- the reader's side -------------------------------------------------------------
    def receive_nowait(self) -> Event | None:
        """The next event, or None if there is none right now.

        After a drop the first event returned is the marker: type ``dropped``,
        ``data={"count": n}``, standing where the lost events were (before the oldest
        event still buffered)."""
        if self._dropped:
            count, self._dropped = self._dropped, 0
            first = self._buffer[0] if self._buffer else None
            when = first.time if first is not None else 0.0
            return Event(owner=self.owner, type="dropped", data={"count": count}, time=when)
        if self._buffer:
            return self._buffer.popleft()
        return None

    async def receive(self) -> Event:
        """Wait for the next event.  Raises :class:`trio.ClosedResourceError` once the
        subscription is closed and drained."""
        while True:
            event = self.receive_nowait()
            if event is not None:
                await trio.lowlevel.checkpoint()
                return event
            if self._closed:
                raise trio.ClosedResourceError("subscription closed")
            self._wakeup = wakeup = trio.Event()
            await wakeup.wait()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            try:
                event = await self.receive()
            except trio.ClosedResourceError:
                return
            yield event

    @property
    def pending(self) -> int:
        """Events waiting to be read (not counting a drop marker)."""
        return len(self._buffer)

    def close(self) -> None:
        """Stop receiving; a reader blocked in :meth:`receive` gets ClosedResourceError
        (after any events still buffered)."""
        if self._closed:
            return
        self._closed = True
        self._bus._remove(self)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class EventBus:
    """Fan-out of :class:`Event` to subscriptions (see the module docstring)."""

    __slots__ = ("_by_owner",)

    def __init__(self) -> None:
        # owner -> its subscriptions; key None holds the admins' (all owners).
        self._by_owner: dict[int | None, list[Subscription]] = {}

    def subscribe(self, owner: int | None, types: Iterable[str] | None = None,
                  maxlen: int = 1000) -> Subscription:
        """A new subscription to ``owner``'s events (``None``: every owner's), optionally
        only of the given ``types``, buffering at most ``maxlen`` events."""
        type_set = None if types is None else frozenset(types)
        if type_set is not None and not type_set <= EVENT_TYPES:
            raise ValueError(f"unknown event types {sorted(type_set - EVENT_TYPES)}")
        sub = Subscription(self, owner, type_set, maxlen)
        self._by_owner.setdefault(owner, []).append(sub)
        self._changed()
        return sub

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every interested subscription.  Never blocks."""
        by_owner = self._by_owner
        if not by_owner:
            return
        if event.owner is not None:
            for sub in by_owner.get(event.owner, ()):
                sub._offer(event)
        for sub in by_owner.get(None, ()):
            sub._offer(event)

    def has_subscribers(self, owner: int | None) -> bool:
        """Whether an event for ``owner`` would reach anyone (lets publishers skip
        building an event nobody reads)."""
        by_owner = self._by_owner
        return bool(by_owner.get(None)) or (owner is not None and bool(by_owner.get(owner)))

    def _remove(self, sub: Subscription) -> None:
        subs = self._by_owner.get(sub.owner)
        if subs is None:
            return
        try:
            subs.remove(sub)
        except ValueError:
            return
        if not subs:
            del self._by_owner[sub.owner]
            self._changed()

    def _changed(self) -> None:
        """A subscription was added or an owner's last one removed (a hook for
        :class:`engine.processes.PrimaryEventBus`)."""

    def statistics(self) -> dict[str, int]:
        """Subscription count, for monitoring."""
        return {"subscriptions": sum(len(s) for s in self._by_owner.values())}
