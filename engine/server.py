"""The composition root of ``dialspell serve``: builds every part and runs them in one
trio nursery (SIP endpoint, registrar tasks, storage writer, HTTP server)."""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import logging
import signal
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from engine.app import SIPApplication
from engine.auth import Authenticator
from engine.call_control import CallControl
from engine.callbacks import CallbackAffinity, CallbackService
from engine.calls import CallEngine
from engine.config import ServerConfig
from engine.dialplan_host import DialplanRunner, RunnerLimits
from engine.events import EventBus
from engine.executions import ExecutionCounts, LocalExecutionCounts, SharedExecutionCounts
from engine.locate import Resolver
from engine.mailer import MailConfig, Mailer
from engine.messages import MessageRelay
from engine.processes import PrimaryEventBus, PrimaryLink, ProcessPlan, SecondaryProcesses
from engine.provider_registrations import ProviderRegistrationAgent
from engine.records import CallRecords
from engine.registrar import Registrar
from engine.storage import Store
from engine.web import WebConfig, WebServices, build_http_app
from engine.webget import WebFetcher
from sandbox import Limits
from sandbox.pool import SandboxPool
from sip.message import mark_identifiers
from sip.transaction import TransactionLayer
from sip.transport import SIPEndpoint

log = logging.getLogger(__name__)

#: How long a stopping server's writer may take to commit what is queued.
WRITER_GRACE_SECONDS = 10.0


def _version() -> str:
    try:
        return version("dialspell")
    except PackageNotFoundError:
        return "0+unknown"


class Server:
    """A running dialspell server.  ``await nursery.start(server.run)`` reports when it
    is ready; ``sip_address`` and ``http_address`` are then the bound addresses.

    With ``config.sip_processes`` > 1 this is the primary of a group of SIP processes
    (engine/processes.py) and starts the others; each of those runs a ``Server`` too,
    built with its ``plan`` and its ``link`` to the primary, which serves SIP only."""

    def __init__(self, config: ServerConfig, *, plan: ProcessPlan | None = None,
                 link: PrimaryLink | None = None) -> None:
        self.config = config
        if plan is None and config.sip_processes > 1:
            plan = ProcessPlan.for_primary(config.sip_processes)
        self.plan = plan
        self.link = link
        mark_identifiers(None if plan is None else plan.index)
        self.store = Store.open(config.data_dir, default_domain=config.default_domain)
        self.events: EventBus
        if link is not None:
            self.events = link.events
        elif plan is not None:
            self.events = PrimaryEventBus()
        else:
            self.events = EventBus()
        self.counts: ExecutionCounts = (
            LocalExecutionCounts() if plan is None else SharedExecutionCounts.attach(plan.counts_path, plan.index)
        )
        self.authenticator = Authenticator(
            store=self.store,
            events=self.events,
            secret=self.store.server_secret(),
            nonce_lifetime=config.nonce_lifetime,
            max_failures=config.auth_max_failures,
            failure_window=config.auth_failure_window,
            lockout=config.auth_lockout,
            issuer=None if plan is None else plan.index,
            issuers=config.sip_processes,
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
        self.application = SIPApplication(config=config, registrar=self.registrar, events=self.events)
        self.records = CallRecords(self.store)
        mail_config = (
            MailConfig(
                host=config.smtp_host,
                port=config.smtp_port,
                sender=config.mail_from,
                starttls=config.smtp_starttls,
                ssl=config.smtp_ssl,
                username=config.smtp_username,
                password=config.smtp_password,
            )
            if config.smtp_host
            else None
        )
        self.mailer = Mailer(mail_config, config.data_dir / "outbox", outbox_sender=config.mail_from)
        self.pool = SandboxPool(workers=sandbox_workers(config), limits=Limits())
        self.webget = WebFetcher(allow_private=config.webget_allow_private)
        self.runner = DialplanRunner(
            pool=self.pool,
            records=self.records,
            mailer=self.mailer,
            webget=self.webget,
            resolver=Resolver(config.dns_server),
            counts=self.counts,
            limits=RunnerLimits(
                per_customer=config.executions_per_customer,
                per_server=config.executions_per_server,
                retry_after=config.retry_after,
            ),
        )
        self.calls = CallEngine(
            config=config,
            store=self.store,
            registrar=self.registrar,
            authenticator=self.authenticator,
            events=self.events,
            runner=self.runner,
        )
        self.runner.engine = self.calls
        advertised = config.advertised_host
        self.callbacks = CallbackService(
            google_voice_url=config.google_voice_url,
            allow_private=config.webget_allow_private,
            affinity=CallbackAffinity(
                server_uri=f"sip:{advertised}:{config.sip_port}",
                path=config.callback_affinity_file or config.data_dir / "callback-affinity.tsv",
            ),
        )
        self.calls.callbacks = self.callbacks
        self.calls.messages = MessageRelay(self.calls)
        self.call_control = CallControl(engine=self.calls, runner=self.runner)
        self.application.call_handler = self.calls.handle
        self.endpoint = SIPEndpoint(
            host=config.sip_host,
            port=config.sip_port,
            handler=self.application.handle,
            layer=TransactionLayer(),
            shared=None if plan is None else plan.shared_port(),
        )
        self.provider_registrations = ProviderRegistrationAgent(
            store=self.store,
            endpoint=self.endpoint,
            events=self.events,
            resolver=self.runner.resolver,
            contact_host=config.advertised_host,
            poll_interval=config.provider_poll_interval,
        )
        self.secondaries: SecondaryProcesses | None = None
        if plan is not None and plan.primary:
            self._lead_the_others(plan)
        if link is not None:
            self._follow_the_primary(link)
        self.sip_address: tuple[str, int] | None = None
        self.http_address: str | None = None

    # -- the processes of a multi-process server (engine/processes.py) --------------------
    def _lead_the_others(self, plan: ProcessPlan) -> None:
        """As the primary: start the others with ``run``, keep them up to date with the
        bindings, lock-outs and callback claims, answer their questions, and count
        their failed passwords."""
        assert isinstance(self.events, PrimaryEventBus) and self.endpoint.shared is not None
        self.secondaries = others = SecondaryProcesses(
            plan=plan, config=self.config, events=self.events, bindings=self.registrar.table,
            on_exit=self._secondary_exited, stop_grace=self.config.stop_grace,
        )
        self.registrar.on_change = others.bindings_changed
        self.call_control.others = others
        others.respond = self.call_control.answer
        self.calls.count_everywhere = self.call_control.count_everywhere
        others.record_failure = self.authenticator.record_failure
        others.lockouts = lambda: self.authenticator.lockouts(time.time())
        self.authenticator.on_lockout = others.lockout
        others.apply_claim = self.endpoint.shared.claim
        if self.callbacks.affinity is not None:
            self.callbacks.affinity.on_claim = self._claim

    def _follow_the_primary(self, link: PrimaryLink) -> None:
        """As another process: take the primary's bindings, lock-outs and claims, answer
        its questions, and ask it what only the whole server knows."""
        assert self.endpoint.shared is not None
        link.on_bindings = self.registrar.apply_bindings
        link.on_table = self.registrar.apply_table
        link.respond = self.call_control.answer
        link.apply_lockout = self.authenticator.apply_lockout
        self.authenticator.report_failure = link.report_failure
        link.apply_claim = self.endpoint.shared.claim
        if self.callbacks.affinity is not None:
            self.callbacks.affinity.on_claim = self._claim

        async def count_everywhere(customer_id: int) -> int | None:
            counted = await link.ask("call_count_everywhere", customer_id)
            return counted if isinstance(counted, int) else None

        self.calls.count_everywhere = count_everywhere

    def _claim(self, aors: list[str], seconds: float) -> None:
        """A callback of this process waits for a call to one of ``aors``: every process
        hands such new calls to this one."""
        assert self.plan is not None and self.endpoint.shared is not None
        users = [aor.partition("@")[0] for aor in aors]
        self.endpoint.shared.claim(users, self.plan.index, seconds)
        if self.secondaries is not None:
            self.secondaries.claim(users, self.plan.index, seconds)
        elif self.link is not None:
            self.link.claim(users, self.plan.index, seconds)

    def close(self) -> None:
        """Release what outlives :meth:`run`: the store, and a primary's shared files."""
        self.store.close()
        if isinstance(self.counts, SharedExecutionCounts):
            self.counts.close()
        if self.plan is not None:
            mark_identifiers(None)  # (a server run inside another program: the tests)
            if self.plan.primary:
                self.plan.remove_files()

    def sip_statistics(self) -> dict[str, int]:
        """The SIP counters of every process of the server, added up (/healthz)."""
        totals = self.endpoint.statistics()
        if self.secondaries is not None:
            totals["sip_processes"] = 1 + len(self.secondaries.statistics)
            for theirs in list(self.secondaries.statistics.values()):
                for name, value in theirs.items():
                    totals[name] = totals.get(name, 0) + value
        return totals

    @property
    def primary(self) -> bool:
        """Whether this process serves HTTP, TCP and the rest (not a secondary)."""
        return self.plan is None or self.plan.primary

    def _secondary_exited(self, index: int) -> None:
        if isinstance(self.counts, SharedExecutionCounts):
            self.counts.clear_process(index)  # its executions ended with it

    async def run(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled, then stop in order: end the calls while SIP still
        runs (BYE, CANCEL, 503), give their messages ``config.stop_grace``, send the
        BYEs still held for an ACK, stop the services, and last the store's writer,
        once it has committed what they queued on their way out (within
        WRITER_GRACE_SECONDS)."""
        async with trio.open_nursery() as nursery:
            writer = trio.CancelScope(shield=True)
            services = trio.CancelScope(shield=True)
            await nursery.start(self._write, writer)
            try:
                await nursery.start(self._serve, services)
                task_status.started(self)
                await trio.sleep_forever()
            finally:
                if self.secondaries is not None:
                    self.secondaries.begin_stop()  # they end their calls meanwhile
                with trio.CancelScope(shield=True):
                    if self.sip_address is not None:
                        if self.calls.stop():
                            await trio.sleep(self.config.stop_grace)
                        self.calls.send_held_byes()
                services.cancel()
                writer.deadline = trio.current_time() + WRITER_GRACE_SECONDS

    async def _write(self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await self.store.run_writer(task_status=task_status)

    async def _serve(self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            with scope:
                await self._services(task_status)
        finally:
            # Everything else has stopped, and queued what it had to write.
            self.store.finish_writer()

    async def _services(self, task_status: trio.TaskStatus[None]) -> None:
        async with self.pool, self.webget, self.callbacks, trio.open_nursery() as nursery:
            if self.primary:
                await self.registrar.load(now=time.time())
            self.application.attach(self.endpoint, nursery)
            self.calls.attach(self.endpoint, nursery)
            self.sip_address = await nursery.start(self.endpoint.serve)
            if not self.primary:
                # The primary keeps the bindings, sweeps them, pings them, registers
                # with providers and serves HTTP; this process only carries calls.
                nursery.start_soon(release_free_memory)
                tune_collector()
                task_status.started()
                return
            if self.secondaries is not None:
                # The port is bound: the others can join it (the same port, not 0).
                self.secondaries.config = dataclasses.replace(self.config, sip_port=self.sip_address[1])
                await nursery.start(self.secondaries.run)
            # The affinity record names this server by the address it really bound.
            if self.callbacks.affinity is not None:
                self.callbacks.affinity.server_uri = f"sip:{self.config.advertised_host}:{self.sip_address[1]}"
            nursery.start_soon(self.application.run_keepalives)
            nursery.start_soon(self.application.run_sweeper)
            nursery.start_soon(release_free_memory)
            await nursery.start(self.provider_registrations.run)
            http = HypercornConfig()
            http_host = self.config.http_host or self.config.sip_host
            http.bind = [f"{http_host}:{self.config.http_port}"]
            http.accesslog = None
            http.errorlog = logging.getLogger("hypercorn.error")
            if self.config.tls_cert and self.config.tls_key:
                http.certfile = str(self.config.tls_cert)
                http.keyfile = str(self.config.tls_key)
            limits = self.pool.limits
            app = build_http_app(
                WebServices(
                    store=self.store,
                    events=self.events,
                    registrar=self.registrar,
                    calls=self.call_control,
                    compiler=self.pool,
                    webcallback=self.call_control.webcallback,
                    statistics=self.sip_statistics,
                    config=WebConfig(
                        version=_version(),
                        signup_enabled=self.config.signup_enabled,
                        dialplan_limit_caps={
                            "cpu_seconds": limits.cpu_seconds,
                            "wall_seconds": limits.wall_seconds,
                            "max_legs": limits.max_legs,
                        },
                    ),
                )
            )
            binds = await nursery.start(_serve_http, app, http)
            self.http_address = binds[0] if binds else None
            tune_collector()
            task_status.started()


def sandbox_workers(config: ServerConfig) -> int:
    """This process's share of ``config.sandbox_workers``: the whole server's count,
    divided among its SIP processes (at least one each).  Each worker runs many
    executions at once; more workers per process only woke more processes less often
    (bench/calls at 500/s with two SIP processes: 0.37 ms of the workers' CPU per
    call with one each, 0.51 ms with two each)."""
    return max(1, -(-config.sandbox_workers // config.sip_processes))


def tune_collector() -> None:
    """Set the process's garbage collector for serving; called once a server is up.

    Everything built so far lives as long as the server: it is kept out of the
    collector's way.  What a call or a registration leaves behind for the 32 s its
    transactions linger is kept as bytes and tuples the collector does not visit, so
    young collections find little to keep, and full collections (which walk everything)
    are made rare.  Measured for 30 s at 400 calls/s (bench/calls) when this was set:
    Python's default thresholds ran 13 full collections of up to 111 ms; these ran none,
    young ones of at most 5 ms and middle ones of at most 12 ms (p99 INVITE->180 20 ms).
    Measured again later, young collections took 5-30 ms each at 400/s (BENCHMARKS.md,
    where switching the collector off still gained nothing measurable).  A young
    threshold of 50,000 made young collections of up to 36 ms; 2,000 cost registrations
    7 % of their rate at 2,000/s (bench/register).  A server run inside another program
    (the tests, ``dialspell demo``) gets the same: with the defaults, a full collection
    of the host's objects once stalled calls for over 100 ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(5_000, 10, 100)


# How often the C allocator is asked to give back what the process has freed.
RELEASE_INTERVAL_SECONDS = 60.0


def malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim`` (glibc), or None where there is none."""
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


async def release_free_memory(interval: float = RELEASE_INTERVAL_SECONDS) -> None:
    """Every ``interval`` seconds, hand the memory the process has freed back to the OS.

    The messages, transactions and records a call leaves behind are freed within
    seconds to minutes, but glibc keeps the pages between live blocks: at 200 calls/s
    the server's resident size grew for seven minutes to about 284 MiB; 150 s into such
    a run one ``malloc_trim`` took it from 227 to 157 MiB in 13 ms.  Where the C
    library has no ``malloc_trim`` this does nothing."""
    trim = malloc_trim()
    if trim is None:
        return
    while True:
        await trio.sleep(interval)
        await trio.to_thread.run_sync(trim, 0)


async def _serve_http(app: object, config: HypercornConfig, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    await hypercorn_serve(app, config, task_status=task_status)  # type: ignore[arg-type]


async def serve_forever(config: ServerConfig, *, ready_message: bool = True) -> None:
    """Run until SIGINT/SIGTERM, then shut down cleanly."""
    server = Server(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            if ready_message:
                assert server.sip_address is not None
                host, port = server.sip_address
                processes = f" ({config.sip_processes} processes)" if config.sip_processes > 1 else ""
                print(
                    f"dialspell ready: SIP udp+tcp {host}:{port}{processes}, HTTP {server.http_address}, "
                    f"domain {config.default_domain}, data {config.data_dir}",
                    flush=True,
                )
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    server.close()

