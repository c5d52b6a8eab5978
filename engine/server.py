"""The composition root of ``dialspell serve``: builds every part and runs them in one
trio nursery (SIP endpoint, registrar tasks, storage writer, HTTP server)."""

from __future__ import annotations

import logging
import secrets
import signal
from importlib.metadata import PackageNotFoundError, version

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from engine.app import SIPApplication
from engine.auth import Authenticator
from engine.config import ServerConfig
from engine.events import EventBus
from engine.registrar import Registrar
from engine.storage import Store
from engine.web import build_http_app
from sip.transaction import TransactionLayer
from sip.transport import SIPEndpoint

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return version("dialspell")
    except PackageNotFoundError:
        return "0+unknown"


class Server:
    """A running dialspell server.  ``await nursery.start(server.run)`` reports when it
    is ready; ``sip_address`` and ``http_address`` are then the bound addresses."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.store = Store.open(config.data_dir, default_domain=config.default_domain)
        self.events = EventBus()
        self.authenticator = Authenticator(
            store=self.store,
            events=self.events,
            secret=self.store.server_secret(),
            nonce_lifetime=config.nonce_lifetime,
            max_failures=config.auth_max_failures,
            failure_window=config.auth_failure_window,
            lockout=config.auth_lockout,
        )
        self.registrar = Registrar(
            store=self.store,
            auth=self.authenticator,
            events=self.events,
            min_expires=config.min_expires,
            max_expires=config.max_expires,
            default_expires=config.default_expires,
            max_bindings=config.max_bindings_per_account,
        )
        self.application = SIPApplication(
            config=config,
            registrar=self.registrar,
            events=self.events,
            is_served_domain=self.store.is_served_domain,
        )
        self.endpoint = SIPEndpoint(
            host=config.sip_host,
            port=config.sip_port,
            handler=self.application.handle,
            layer=TransactionLayer(),
        )
        self.sip_address: tuple[str, int] | None = None
        self.http_address: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.store.run_writer)
            await self.registrar.load(now=trio_wall())
            self.application.attach(self.endpoint, nursery)
            self.sip_address = await nursery.start(self.endpoint.serve)
            nursery.start_soon(self.application.run_keepalives)
            nursery.start_soon(self.application.run_sweeper)
            http = HypercornConfig()
            http_host = self.config.http_host or self.config.sip_host
            http.bind = [f"{http_host}:{self.config.http_port}"]
            http.accesslog = None
            http.errorlog = logging.getLogger("hypercorn.error")
            if self.config.tls_cert and self.config.tls_key:
                http.certfile = str(self.config.tls_cert)
                http.keyfile = str(self.config.tls_key)
            app = build_http_app(statistics=self.endpoint.statistics, version=_version())
            binds = await nursery.start(_serve_http, app, http)
            self.http_address = binds[0] if binds else None
            task_status.started(self)


async def _serve_http(app: object, config: HypercornConfig, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    await hypercorn_serve(app, config, task_status=task_status)  # type: ignore[arg-type]


def trio_wall() -> float:
    import time

    return time.time()


async def serve_forever(config: ServerConfig, *, ready_message: bool = True) -> None:
    """Run until SIGINT/SIGTERM, then shut down cleanly."""
    server = Server(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            if ready_message:
                assert server.sip_address is not None
                host, port = server.sip_address
                print(
                    f"dialspell ready: SIP udp+tcp {host}:{port}, HTTP {server.http_address}, "
                    f"domain {config.default_domain}, data {config.data_dir}",
                    flush=True,
                )
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    server.store.close()


def new_secret() -> bytes:
    return secrets.token_bytes(32)
