"""What the HTTP side needs from the rest of the server, handed in by the composition root.

:class:`WebServices` bundles the live objects (store, event bus, registrar, call control,
sandbox pool, webcallback runner) and :class:`WebConfig` the settings; nothing in
``engine.web`` reads configuration from anywhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.events import EventBus
from engine.registrar import Registrar
from engine.storage import Account, Customer, Store
from sandbox import CompileError

#: Runs a customer's ``webcallback`` dialplan as an Out call to the number; returns
#: (ok, message).  The call engine provides it; the web side only checks key and limits.
WebcallbackRunner = Callable[[Customer, Account, str], Awaitable[tuple[bool, str]]]


class CallControl(Protocol):
    """The call engine's surface for the console: calls in progress and hanging up."""

    async def active_calls(self, customer_id: int | None) -> list[dict[str, Any]]:
        """Calls in progress of one customer (``None``: everyone's); each a JSON-able
        dict with at least ``id`` (str) and ``customer_id``."""
        ...

    async def hang_up(self, call_id: str, customer_id: int | None) -> bool:
        """End the call ``call_id`` if it belongs to ``customer_id`` (``None``: any);
        False if there is no such call."""
        ...


class CompileChecker(Protocol):
    """The sandbox pool's compile check (``SandboxPool.compile_errors``)."""

    async def compile_errors(self, source: str) -> list[CompileError]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class WebConfig:
    """Settings of the HTTP side (the composition root fills them from ServerConfig)."""

    version: str = "0+unknown"
    #: ``POST /api/v1/customer`` creates customers only when this is on.
    signup_enabled: bool = False
    #: Sign-ups per source address per hour.
    signup_per_hour: int = 5
    #: Session lifetime at login, and the most it can reach with extensions (minutes).
    session_minutes: int = 60
    session_max_minutes: int = 600
    #: Failed logins before a lock-out, per account and per source, within the window.
    login_failures_per_account: int = 5
    login_failures_per_source: int = 20
    login_window_seconds: float = 300.0
    #: Webcallbacks per customer per minute.
    webcallbacks_per_minute: int = 10
    #: The most a dialplan's own limits may be set to (they can only tighten these).
    dialplan_limit_caps: Mapping[str, float] = field(
        default_factory=lambda: {"cpu_seconds": 1.0, "wall_seconds": 10.0, "max_legs": 20})
    #: The SIP domain of accounts created at sign-up (``local``: the server's default).
    signup_domain: str = "local"
    #: Buffered events per console stream before the oldest are dropped.
    console_buffer: int = 1000
    #: Seconds between SSE keep-alive comments.
    console_keepalive: float = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class WebServices:
    """Everything :func:`engine.web.build_http_app` needs (see the module docstring)."""

    store: Store
    events: EventBus
    registrar: Registrar
    calls: CallControl
    compiler: CompileChecker
    webcallback: WebcallbackRunner
    statistics: Callable[[], Mapping[str, Any]]
    config: WebConfig = field(default_factory=WebConfig)
    wall_clock: Callable[[], float] | None = None
