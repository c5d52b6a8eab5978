"""A sliding-window counter per key: login failures, sign-ups, webcallbacks."""

from __future__ import annotations

from collections import deque


class SlidingWindow:
    """At most ``limit`` events per key within ``window`` seconds.

    Memory is bounded: at most ``max_keys`` keys are tracked (the stalest go first), so
    a flood of distinct keys cannot grow it without end."""

    def __init__(self, *, limit: int, window: float, max_keys: int = 100_000) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("need limit >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._events: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._events.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._events[key]
            return None
        return times

    def retry_after(self, key: str, now: float) -> float:
        """0 if another event for ``key`` is allowed now, else seconds until it is."""
        times = self._recent(key, now)
        if times is None or len(times) < self.limit:
            return 0.0
        return times[0] + self.window - now

    def hit(self, key: str, now: float) -> None:
        """Count one event for ``key``."""
        times = self._recent(key, now)
        if times is None:
            if len(self._events) >= self.max_keys:
                del self._events[next(iter(self._events))]
            times = self._events[key] = deque()
        times.append(now)

    def clear(self, key: str) -> None:
        self._events.pop(key, None)
