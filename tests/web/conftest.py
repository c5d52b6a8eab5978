"""A real HTTP server for the web tests: hypercorn (trio) on 127.0.0.1 serving the real
app over a real Store in tmp_path, a real event bus, registrar and sandbox pool.

Two pieces stand in for the call engine, which the composition root wires in
production: ``CallTable`` (calls in progress, as the engine reports them) and
``simulated_webcallback`` (runs the ``webcallback`` dialplan through the real sandbox
with the simulator's host: no network)."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from engine.auth import Authenticator
from engine.events import Event, EventBus
from engine.registrar import Registrar
from engine.simulator import CallOutcome, CallSpec, simulate
from engine.storage import Account, Customer, Store
from engine.web import WEBCALL_STARTED, WebConfig, WebServices, build_http_app
from sandbox import Limits, SandboxPool

PASSWORD = "correct horse battery"


class Clock:
    """Wall time the test can move forward (the fake at the time boundary)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class CallTable:
    """Calls in progress as the call engine would report them."""

    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    hung_up: list[str] = field(default_factory=list)

    async def active_calls(self, customer_id: int | None) -> list[dict[str, Any]]:
        return [dict(c) for c in self.calls.values() if customer_id is None or c["customer_id"] == customer_id]

    async def hang_up(self, call_id: str, customer_id: int | None) -> bool:
        call = self.calls.get(call_id)
        if call is None or (customer_id is not None and call["customer_id"] != customer_id):
            return False
        del self.calls[call_id]
        self.hung_up.append(call_id)
        return True


def simulated_webcallback(store: Store, pool: SandboxPool, events: EventBus) -> Callable[..., Any]:
    async def run(customer: Customer, account: Account, number: str) -> tuple[bool, str]:
        source = store.dialplan_source(customer.id, "webcallback")
        if source is None:
            return False, "Web call was not initiated: there is no dialplan named webcallback."
        spec = CallSpec(to=number, direction="out", username=account.user, dialplan_name="webcallback",
                        from_uri=f"sip:{account.user}@{account.domain}", domain=account.domain)
        call = await simulate(pool, source, spec, {})
        for line in call.log:
            events.publish(Event(owner=customer.id, type="dialplan", time=time.time(),
                                 data={"dialplan": "webcallback", "line": line}))
        if call.outcome in (CallOutcome.COMPILE_ERROR, CallOutcome.RUNTIME_ERROR,
                            CallOutcome.LIMIT_EXCEEDED, CallOutcome.CRASHED):
            return False, f"Web call was not initiated: {call.reason}"
        return True, WEBCALL_STARTED
    return run


@dataclass
class WebServer:
    url: str
    store: Store
    events: EventBus
    registrar: Registrar
    calls: CallTable
    clock: Clock
    verify: ssl.SSLContext | bool = True

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, verify=self.verify, timeout=30)

    def add_customer(self, name: str, *, admin: bool = False, email: str | None = None) -> Customer:
        return self.store.add_customer(name, PASSWORD, email=email, admin=admin, now=time.time())

    async def login(self, name: str, password: str = PASSWORD) -> str:
        async with self.client() as client:
            response = await client.post("/api/v1/login", json={"username": name, "password": password})
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token


@dataclass(frozen=True)
class ServerOptions:
    config: WebConfig = WebConfig()
    certfile: Path | None = None
    keyfile: Path | None = None


@asynccontextmanager
async def start_web(tmp_path: Path, options: ServerOptions, verify: ssl.SSLContext | bool = True
                    ) -> AsyncIterator[WebServer]:
    store = Store.open(tmp_path / "data", default_domain="127.0.0.1")
    events = EventBus()
    clock = Clock()
    calls = CallTable()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        registrar = Registrar(store=store, auth=Authenticator(store=store, events=events), events=events)
        async with SandboxPool(workers=1, limits=Limits()) as pool:
            services = WebServices(
                store=store, events=events, registrar=registrar, calls=calls, compiler=pool,
                webcallback=simulated_webcallback(store, pool, events),
                statistics=lambda: {"requests": 0}, config=options.config, wall_clock=clock)
            http = HypercornConfig()
            http.bind = ["127.0.0.1:0"]
            http.accesslog = None
            if options.certfile is not None and options.keyfile is not None:
                http.certfile = str(options.certfile)
                http.keyfile = str(options.keyfile)
            binds = await nursery.start(hypercorn_serve, build_http_app(services), http)
            yield WebServer(url=binds[0], store=store, events=events, registrar=registrar, calls=calls,
                            clock=clock, verify=verify)
            nursery.cancel_scope.cancel()
    store.close()


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[WebServer]:
    """The app with sign-up enabled and default limits."""
    options = ServerOptions(config=WebConfig(signup_enabled=True, version="test"))
    async with start_web(tmp_path, options) as server:
        yield server
