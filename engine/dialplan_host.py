"""Running dialplans for calls: the host side of ``sys`` and the limits around it.

:class:`DialplanRunner` decides, for a classified call, which dialplan runs (or that
none does), enforces the concurrency limits and the loop rules, runs the execution in
the sandbox with a :class:`DialplanHost`, and turns the result into the caller's answer
(docs/dialplan-api.md, "Outcomes").
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.bridge import fix_sdp
from engine.callbacks import CallbackMethods
from engine.calls import CHAIN_HEADER, CONCURRENCY_REASON, MAX_CHAIN, Call
from engine.dialstring import (
    DialStringError,
    Leg,
    LegKind,
    classify,
    drop_duplicates,
    parse_dial_string,
)
from engine.executions import ExecutionCounts, LocalExecutionCounts
from engine.forking import Forker, PlannedLeg, caller_answer
from engine.legs import (
    ANSWERED_AFTER_CANCEL,
    Credentials,
    InboundLeg,
    OutboundLeg,
    advertised,
    build_invite,
    reason_value,
)
from engine.mailer import MailLimits
from engine.records import CallRecords, Provider
from engine.storage import Account, Binding
from sandbox import ExecutionResult, HostReply, Outcome, PlainValue
from sip.headers import TOKEN, NameAddr
from sip.message import new_call_id
from sip.uri import URI, escape_user, parse_hostport

if TYPE_CHECKING:
    from engine.calls import CallEngine
    from engine.locate import Resolver
    from engine.mailer import Mailer
    from engine.webget import WebFetcher
    from sandbox.pool import SandboxPool

log = logging.getLogger(__name__)

RING_DEFAULT = 180.0
TRACE_MAIL_MAX = 256 * 1024
_FORBIDDEN_HEADERS = frozenset(
    h.lower()
    for h in ("Via", "From", "To", "Contact", "CSeq", "Call-ID", "Max-Forwards", "Content-Length", "Route", "Record-Route")
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerLimits:
    """Limits around executions (each a ServerConfig field)."""

    per_customer: int = 5
    per_server: int = 1000
    retry_after: int = 5


class DialplanRunner:
    """Runs the dialplan of each call and maps its result to the caller's answer."""

    def __init__(
        self,
        *,
        pool: SandboxPool,
        records: CallRecords,
        mailer: Mailer | None,
        webget: WebFetcher | None,
        resolver: Resolver | None,
        limits: RunnerLimits,
        allow_email: Callable[[int], bool] = lambda customer_id: False,
        wall_clock: Callable[[], float] = time.time,
        counts: ExecutionCounts | None = None,
    ) -> None:
        self.pool = pool
        self.records = records
        self.mailer = mailer
        self.webget = webget
        self.resolver = resolver
        self.limits = limits
        self.allow_email = allow_email
        self.wall_clock = wall_clock
        self.engine: CallEngine | None = None
        # The running executions, against ``limits``: this process's own by default, or
        # those of every server process when it is one of several (engine.executions).
        self.counts: ExecutionCounts = counts if counts is not None else LocalExecutionCounts()

    # -- entry points from the call engine --------------------------------------------------
    async def run_out(self, call: Call) -> None:
        account = call.account
        assert account is not None
        name = account.out_dialplan
        if not name:
            # No Out dialplan: the call goes where the Request-URI says, like a proxy.
            await self._direct(call, str(call.leg.request.uri))
            return
        await self._execute(call, name)

    async def run_in(self, call: Call) -> None:
        account = call.account
        assert account is not None
        name = account.in_dialplan
        key = f"{account.customer_id}:{name}" if name else None
        if not name or (key is not None and call.chain and call.chain[-1] == key):
            # Without an In dialplan (or when this leg was placed by that very dialplan,
            # the self-rule), the account's current bindings ring in parallel.
            await self._direct(call, f"{account.user}@{account.domain}", account_only=True)
            return
        await self._execute(call, name)

    async def run_named(self, call: Call, name: str) -> None:
        """Run the owner's dialplan ``name`` for ``call`` (web callbacks use this)."""
        await self._execute(call, name)

    # -- executions -------------------------------------------------------------------------
    async def _execute(self, call: Call, name: str) -> None:
        account = call.account
        assert account is not None and self.engine is not None
        leg = call.leg
        key = f"{account.customer_id}:{name}"
        if key in call.chain:
            leg.reject(482, "Loop Detected (dialplan entered twice in one call)")
            return
        if len(call.chain) >= MAX_CHAIN:
            leg.reject(483, "Too Many Hops (dialplan chain too deep)")
            return
        refused = self.counts.try_start(account.customer_id, self.limits.per_customer, self.limits.per_server)
        if refused == "server":
            leg.reject(503, "Server busy", headers=(("Retry-After", str(self.limits.retry_after)),))
            return
        if refused == "customer":
            self.engine.publish(call, "limit", limit="concurrency", reason=CONCURRENCY_REASON)
            leg.reject(480, CONCURRENCY_REASON)
            return
        try:
            await self._run_counted(call, name, key)
        finally:
            self.counts.finish(account.customer_id)  # counted since try_start, whatever happened

    async def _run_counted(self, call: Call, name: str, key: str) -> None:
        account = call.account
        assert account is not None and self.engine is not None
        leg = call.leg
        source, trace_email = self.records.dialplan(account.customer_id, name)
        if source is None:
            leg.reject(404, f"Not Found (no dialplan named {name!r})")
            return
        call.chain = (*call.chain, key)
        host = DialplanHost(runner=self, call=call, dialplan=name)
        host.trace_line(f"Dialplan trace commenced at {_stamp(self.wall_clock())}.")
        host.trace_sip("received", leg.request.wire or leg.request.to_bytes())
        self.engine.publish(call, "dialplan", state="started", dialplan=name)
        result: ExecutionResult | None = None
        try:
            result = await self.pool.run(
                source,
                request=request_snapshot(call),
                context={"Username": account.user, "DialPlanName": name, "Direction": call.direction},
                host=host,
            )
        finally:
            self._finish(call, host, result)
            self._store_trace(call, host, name, trace_email, result)

    def _finish(self, call: Call, host: DialplanHost, result: ExecutionResult | None) -> None:
        leg = call.leg
        if leg.final_status is not None:
            return
        if result is None:
            return  # cancelled: the caller's CANCEL already answered 487
        if result.outcome is Outcome.RUNTIME_ERROR and result.error is not None:
            line = f" (line {result.error.line})" if result.error.line else ""
            leg.reject(500, _reason(f"Dialplan error: {result.error.type}: {result.error.message}{line}"))
        elif result.outcome is Outcome.LIMIT_EXCEEDED:
            assert self.engine is not None
            self.engine.publish(call, "limit", limit=str(result.limit))
            leg.reject(500, f"Dialplan limit exceeded: {result.limit}")
        elif result.outcome is Outcome.CRASHED:
            leg.reject(500, "Dialplan execution failed")
        elif result.outcome is Outcome.COMPILE_ERROR:
            leg.reject(500, "Dialplan does not compile")
        else:
            host.reject_caller()

    def _store_trace(
        self, call: Call, host: DialplanHost, name: str, email: str | None, result: ExecutionResult | None
    ) -> None:
        """Queue the run's trace for storage and, if the dialplan names an address, mail
        it from a task of the server, not of this call: the caller's CANCEL must not
        lose it, and a server shutting down must not wait for it."""
        if result is not None:
            for line in result.log:
                if line not in host.logged:
                    host.trace_line(f"DialPlan=> {line}")
            if result.error is not None:
                host.trace_line(f"Dialplan error: {result.error.type}: {result.error.message} (line {result.error.line})")
        host.trace_line(f"Dialplan trace completed at {_stamp(self.wall_clock())}.")
        assert call.account is not None
        enabled = result.trace_enabled if result is not None else True
        trace_id = self.records.save_trace(call, name, host.trace, self.wall_clock())
        if email and enabled and self.mailer is not None:
            assert self.engine is not None and self.engine.nursery is not None
            subject = f"dialspell trace for {name} ({call.leg.request.call_id})"
            self.engine.nursery.start_soon(self._mail_trace, trace_id, email, subject, "\n".join(host.trace))

    async def _mail_trace(self, trace_id: str, email: str, subject: str, text: str) -> None:
        assert self.mailer is not None
        try:
            await self.mailer.send([email], subject, text, limits=MailLimits(max_body=TRACE_MAIL_MAX))
        except Exception:
            log.exception("trace %s could not be mailed", trace_id)

    async def _direct(self, call: Call, dialstring: str, *, account_only: bool = False) -> None:
        """Route without a dialplan: Dial ``dialstring`` and answer with the outcome."""
        host = DialplanHost(runner=self, call=call, dialplan="")
        reply = await host.dial(dialstring, 0, 0)
        if call.leg.final_status is None and not reply.end:
            host.reject_caller()


class DialplanHost(CallbackMethods):
    """The host side of ``sys`` for one execution (sandbox.Host); the callback members
    come from :class:`engine.callbacks.CallbackMethods`."""

    def __init__(self, *, runner: DialplanRunner, call: Call, dialplan: str) -> None:
        self.runner = runner
        self.active = call
        self.dialplan = dialplan
        self.trace: list[str] = []
        self.logged: set[str] = set()
        self.last_failure: tuple[int, str] | None = None
        # The last Dial's redirection targets, when it failed with a 3xx.
        self.redirect: tuple[str, ...] = ()
        self.custom_headers: dict[str, tuple[str, str]] = {}
        self.from_override: tuple[str | None, str | None, str | None] = (None, None, None)
        self.seen_legs: set[str] = set()
        self.legs_used = 0

    @property
    def engine(self) -> CallEngine:
        assert self.runner.engine is not None
        return self.runner.engine

    # -- sandbox.Host --------------------------------------------------------------------------
    def log(self, line: str) -> None:
        self.logged.add(line)
        self.trace_line(f"DialPlan=> {line}")
        self.engine.publish(self.active, "dialplan", line=line, dialplan=self.dialplan)

    async def call(self, name: str, args: tuple[PlainValue, ...]) -> HostReply:
        method = getattr(self, f"_sys_{name}", None)
        if method is None:
            return HostReply(error=f"sys.{name} is not available on this server yet")
        reply: HostReply = await method(*args)
        return reply

    def trace_line(self, line: str) -> None:
        self.trace.append(line)

    def trace_sip(self, direction: str, raw: bytes) -> None:
        self.trace.append(f"SIP {direction}:\n" + raw.decode("utf-8", "replace").rstrip())

    # -- sys members -------------------------------------------------------------------------
    async def _sys_Dial(self, dialstring: PlainValue, ring: PlainValue = 0, limit: PlainValue = 0) -> HostReply:
        return await self.dial(str(dialstring), int(ring or 0), int(limit or 0))  # type: ignore[arg-type]

    async def dial(self, dialstring: str, ring: int, limit: int) -> HostReply:
        self.redirect = ()
        call = self.active
        leg = call.leg
        request = leg.request
        from_ = request.from_
        substitutions = {
            "dst": request.uri.user or "",
            "exten": request.uri.user or "",
            "fromname": from_.display_name or "",
            "fromuriuser": from_.uri.user or "",
            "fromaor": f"{from_.uri.user}@{from_.uri.host}" if from_.uri.user else from_.uri.host,
        }
        try:
            parsed = parse_dial_string(dialstring, substitutions=substitutions)
        except DialStringError as exc:
            return HostReply(error=str(exc))
        ring_timeout = RING_DEFAULT if ring <= 0 or ring > 180 else float(ring)
        groups: list[list[PlannedLeg]] = []
        for group in parsed.groups:
            planned: list[PlannedLeg] = []
            for target in drop_duplicates(group, self.seen_legs):
                planned.extend(self._plan(target))
            if planned:
                groups.append(planned)
        self.legs_used += sum(len(g) for g in groups)
        if self.legs_used > 20:
            return HostReply(error="sys.Dial(): at most 20 legs per execution")
        if not groups:
            self.last_failure = (480, "Temporarily Unavailable")
            self.trace_line("Dial: no legs to call.")
            return HostReply(value="Failed", failure_status=480, failure_reason="Temporarily Unavailable")
        forker = Forker(progress=self._progress, trace=self.trace_line)
        outcome = await forker.dial(groups, ring_timeout)
        if outcome.result == "Answered" and outcome.winner is not None:
            winner = outcome.winner
            assert winner.final is not None
            if not isinstance(leg, InboundLeg):
                # A web callback has no caller to bridge the answer to (sys.Callback is
                # the way to join two legs from a URL): end the answered leg.
                self.trace_line(f"Dial answered, but a {leg.transport} call has no caller to bridge to; hanging up.")
                winner.hangup(reason_value(480, "No caller to bridge to"), note="No caller to bridge to (server)")
                return HostReply(value="Answered", end=True)
            if leg.final_status is not None:
                # The caller's CANCEL (or the server's stop) was taken in the same
                # moment as the winner's 2xx, before this task could bridge them: the
                # caller has its 487 (503), so the answered leg is hung up.
                self.trace_line("Dial answered, but the caller had already gone; hanging up.")
                winner.hangup(note=ANSWERED_AFTER_CANCEL)
                return HostReply(value="ClientCancelled", end=True)
            duration = float(limit) if limit > 0 else (outcome.winner_plan.duration_limit if outcome.winner_plan else None)
            bridge = self.engine.bridge(call, winner, fix_sdp(winner.final.body, winner.destination), duration)
            self.runner.records.bridge_started(call, bridge, winner, self.runner.wall_clock())
            if leg.answer_response is not None:
                self.trace_sip("sent", leg.answer_response.to_bytes())
            self.engine.hand_over(bridge, bridge.callee, winner)
            return HostReply(value="Answered", end=True)
        if leg.cancelled.is_set():
            return HostReply(value="ClientCancelled", end=True)
        self.last_failure = (outcome.status or 480, outcome.reason or "Temporarily Unavailable")
        self.redirect = outcome.contacts
        return HostReply(value=outcome.result, failure_status=self.last_failure[0], failure_reason=self.last_failure[1])

    def reject_caller(self) -> None:
        """Answer the caller with the last Dial's failure (480 without one); a
        redirection carries its Contacts, without which it would say nothing."""
        status, reason = caller_answer(*(self.last_failure or (480, "Temporarily Unavailable")))
        headers = tuple(("Contact", c) for c in self.redirect) if 300 <= status < 400 else ()
        self.active.leg.reject(status, reason, headers=headers)

    def _progress(self, leg: OutboundLeg, status: int, reason: str, body: bytes) -> None:
        self.active.leg.progress(status, reason, body=fix_sdp(body, leg.destination) if body else b"")

    def _plan(self, target: Leg) -> list[PlannedLeg]:
        """The legs to ring for one dial-string destination."""
        engine = self.engine
        account = self.active.account
        assert account is not None
        providers = self.runner.records.providers(account.customer_id)
        kind = classify(
            target,
            provider_names=[p.name for p in providers],
            is_local_domain=lambda host: engine.registrar.resolve_domain(host, self.runner.wall_clock()) is not None,
        )
        options = target.options
        duration = float(options.duration_limit) if options.duration_limit else None
        if kind is LegKind.LOCAL:
            return self._plan_local(target, duration)
        if kind is LegKind.PROVIDER:
            provider = next(p for p in providers if p.name.lower() == target.host.lower())
            return [self._plan_provider(target, provider, duration)]
        return [self._plan_uri(target, duration)]

    def _plan_local(self, target: Leg, duration: float | None) -> list[PlannedLeg]:
        engine = self.engine
        now = self.runner.wall_clock()
        domain = engine.registrar.resolve_domain(target.host, now) or "local"
        account = engine.find_account(target.user or "", domain)
        if account is None:
            self.trace_line(f"Dial: no account {target.user}@{target.host}.")
            self.last_failure = (404, "Not Found")
            return []
        running_key = self.active.chain[-1] if self.active.chain else None
        in_key = f"{account.customer_id}:{account.in_dialplan}" if account.in_dialplan else None
        if in_key is not None and in_key != running_key:
            # The account has an In dialplan of its own: the leg enters it as a new
            # execution, through our own server, carrying the chain (loop detection).
            assert engine.endpoint is not None
            host, port = engine.endpoint.local
            host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
            uri = f"sip:{target.user}@{account.domain if account.domain != 'local' else host}"
            chain = ",".join(self.active.chain)
            return [
                PlannedLeg(
                    description=f"{account.user} (dialplan {account.in_dialplan})",
                    start=lambda: self._start_leg(
                        request_uri=uri, to=f"<{uri}>", destination=(host, port), transport="UDP",
                        extra=((CHAIN_HEADER, chain),), options=target.options,
                    ),
                    delay=float(target.options.delay),
                    duration_limit=duration,
                )
            ]
        bindings = engine.registrar.bindings_of(account.id, now)
        if not bindings:
            self.trace_line(f"Dial: {account.user} has no current bindings.")
            self.last_failure = (480, "Temporarily Unavailable")
        to = f"<sip:{account.user}@{self._domain_host(account.domain)}>"

        def starter(binding: Binding) -> Callable[[], Awaitable[OutboundLeg | None]]:
            async def start() -> OutboundLeg | None:
                return await self._start_leg(
                    request_uri=str(binding.contact), to=to, destination=binding.received,
                    transport=binding.transport, options=target.options,
                )

            return start

        return [
            PlannedLeg(
                description=str(binding.contact),
                start=starter(binding),
                delay=float(target.options.delay),
                duration_limit=duration,
            )
            for binding in bindings
        ]

    def _plan_provider(self, target: Leg, provider: Provider, duration: float | None) -> PlannedLeg:
        uri = f"sip:{target.user}@{provider.server_host}" if target.user else f"sip:{provider.server_host}"

        async def start() -> OutboundLeg | None:
            targets = await self._locate(provider.proxy_host or provider.server_host, provider.proxy_port or provider.server_port)
            if not targets:
                return None
            return await self._start_leg(
                request_uri=uri + (f":{provider.server_port}" if provider.server_port else ""),
                to=f"<{uri}>",
                destination=targets[0],
                alternates=targets[1:],
                transport="UDP",
                options=target.options,
                credentials=(
                    Credentials(username=provider.username, password=provider.password or "")
                    if provider.username
                    else None
                ),
                from_user=provider.from_user,
                from_host=provider.from_host or provider.server_host,
                extra=provider.headers,
            )

        return PlannedLeg(description=f"{uri} via {provider.name}", start=start, delay=float(target.options.delay), duration_limit=duration)

    def _plan_uri(self, target: Leg, duration: float | None) -> PlannedLeg:
        uri = target.uri or (f"sip:{target.user}@{target.host}" if target.user else f"sip:{target.host}")
        if target.port and not target.uri:
            uri += f":{target.port}"

        async def start() -> OutboundLeg | None:
            targets = await self._locate(target.host, target.port)
            if not targets:
                return None
            return await self._start_leg(
                request_uri=uri, to=f"<{uri}>", destination=targets[0], alternates=targets[1:],
                transport="UDP", options=target.options,
            )

        return PlannedLeg(description=uri, start=start, delay=float(target.options.delay), duration_limit=duration)

    async def _locate(self, host: str, port: int | None) -> list[tuple[str, int]]:
        """The UDP targets for ``host`` in the order to try them (RFC 3263)."""
        from engine.locate import LocateError, udp_targets

        try:
            return await udp_targets(host, port, self.runner.resolver)
        except LocateError as exc:
            self.trace_line(f"Dial: cannot locate {host}: {exc}")
            self.last_failure = (404, "Not Found (host cannot be resolved)")
            return []

    async def _start_leg(
        self,
        *,
        request_uri: str,
        to: str,
        destination: tuple[str, int],
        transport: str,
        options: object,
        alternates: list[tuple[str, int]] | None = None,
        extra: tuple[tuple[str, str], ...] = (),
        credentials: Credentials | None = None,
        from_user: str | None = None,
        from_host: str | None = None,
    ) -> OutboundLeg | None:
        engine = self.engine
        assert engine.endpoint is not None
        request = self.active.leg.request
        caller_from = request.from_
        name, user, host = self.from_override
        display = getattr(options, "from_display", None) or name or caller_from.display_name
        # A user or host the dialplan (or a provider) gives is plain text: escaped or
        # checked here, so that no value of theirs can break our From (RFC 3261 25.1).
        chosen = getattr(options, "from_user", None) or user or from_user
        user = escape_user(chosen) if chosen else (caller_from.uri.user or "anonymous")
        local_host, local_port = engine.endpoint.local
        our_host = advertised(local_host)
        host = getattr(options, "from_host", None) or host or from_host or engine.config.default_domain
        max_forwards = (request.max_forwards if request.max_forwards is not None else 70) - 1
        headers = tuple(self.custom_headers.values()) + extra
        try:
            parse_hostport(host)
            from_header = str(NameAddr(display_name=display or None, uri=URI.sip(user, host), params=()))
            invite = build_invite(
                target=to,
                request_uri=request_uri,
                from_header=from_header,
                call_id=new_call_id(our_host),
                contact=engine.contact,
                via_host=our_host,
                via_port=local_port,
                transport=transport,
                max_forwards=max(0, max_forwards),
                body=fix_sdp(request.body, self.active.leg.source),
                extra_headers=headers,
            )
        except Exception as exc:  # a URI the parser refuses: this leg fails alone
            self.trace_line(f"Dial: cannot call {request_uri}: {exc}")
            return None
        leg = OutboundLeg(
            endpoint=engine.endpoint,
            request=invite,
            destination=destination,
            transport=transport,
            credentials=credentials,
            on_provisional=lambda lg, response: self._progress(lg, response.status, response.reason, response.body),
            on_answer=engine.leg_answered,
            alternates=alternates,
        )
        leg.start()
        self.runner.records.leg_started(self.active, leg, self.runner.wall_clock())
        return leg

    def _domain_host(self, domain: str) -> str:
        return self.engine.config.default_domain if domain == "local" else domain

    async def _sys_Respond(self, status: PlainValue, reason: PlainValue = None, headers: PlainValue = None) -> HostReply:
        code = status if type(status) is int else 0
        text = None if reason is None else str(reason)
        if not 100 <= code <= 699 or (text is not None and _UNSAFE_VALUE.search(text)):
            # (The worker refuses these too; a worker is not trusted to have.)
            return HostReply(error="sys.Respond(): the status must be 100-699 and the reason free of CR, LF and NUL")
        leg = self.active.leg
        extra = _parse_custom_headers(str(headers)) if headers else ()
        if code < 200:
            leg.progress(code, text or None, headers=extra)
            return HostReply()
        if code < 300:
            return HostReply(error="sys.Respond(): a dialplan cannot answer a call with 2xx; use sys.Dial")
        leg.reject(code, text or None, headers=extra)
        return HostReply(end=True)

    async def _sys_ExtendScriptTimeout(self, seconds: PlainValue) -> HostReply:
        return HostReply()

    async def _sys_SetCustomSIPHeader(self, name: PlainValue, value: PlainValue) -> HostReply:
        header, text = str(name), str(value)
        if header.lower() in _FORBIDDEN_HEADERS:
            return HostReply(error=f"sys.SetCustomSIPHeader(): {header} cannot be set by a dialplan")
        if not _safe_header(header, text):
            # (The worker refuses these too; a worker is not trusted to have.)
            return HostReply(error="sys.SetCustomSIPHeader(): the name must be a token and the value free of CR, LF and NUL")
        self.custom_headers[header.lower()] = (header, text)
        return HostReply()

    async def _sys_RemoveCustomSIPHeader(self, name: PlainValue) -> HostReply:
        self.custom_headers.pop(str(name).lower(), None)
        return HostReply()

    async def _sys_ClearCustomSIPHeaders(self) -> HostReply:
        self.custom_headers.clear()
        return HostReply()

    async def _sys_SetFromHeader(self, name: PlainValue, user: PlainValue, host: PlainValue) -> HostReply:
        self.from_override = (
            None if name is None else str(name), None if user is None else str(user), None if host is None else str(host)
        )
        return HostReply()

    async def _sys_ClearFromHeader(self) -> HostReply:
        self.from_override = (None, None, None)
        return HostReply()

    async def _sys_DBWrite(self, key: PlainValue, value: PlainValue) -> HostReply:
        error = await self.runner.records.kv_write(self._owner(), str(key), str(value))
        return HostReply(error=error) if error else HostReply()

    async def _sys_DBRead(self, key: PlainValue) -> HostReply:
        return HostReply(value=await self.runner.records.kv_read(self._owner(), str(key)))

    async def _sys_DBDelete(self, key: PlainValue) -> HostReply:
        await self.runner.records.kv_delete(self._owner(), str(key))
        return HostReply()

    async def _sys_DBGetKeys(self) -> HostReply:
        return HostReply(value=list(await self.runner.records.kv_keys(self._owner())))

    async def _sys_WebGet(self, url: PlainValue, seconds: PlainValue = 10) -> HostReply:
        if self.runner.webget is None:
            return HostReply(value=None)
        return HostReply(value=await self.runner.webget.get(str(url), float(seconds or 10)))  # type: ignore[arg-type]

    async def _sys_Email(self, to: PlainValue, subject: PlainValue, body: PlainValue) -> HostReply:
        if not self.runner.allow_email(self._owner()) or self.runner.mailer is None:
            return HostReply(error="sys.Email(): this account is not allowed to send e-mail")
        recipients = [a.strip() for a in re.split(r"[;,]", str(to)) if a.strip()]
        try:
            await self.runner.mailer.send(recipients, str(subject), str(body))
        except ValueError as exc:
            return HostReply(error=f"sys.Email(): {exc}")
        return HostReply()

    async def _sys_IsAvailable(self, username: PlainValue = None, domain: PlainValue = None) -> HostReply:
        account = self._account(username, domain)
        if account is None:
            return HostReply(value=False)
        return HostReply(value=bool(self.engine.registrar.bindings_of(account.id, self.runner.wall_clock())))

    async def _sys_IsMine(self, username: PlainValue, domain: PlainValue = None) -> HostReply:
        account = self._account(username, domain)
        return HostReply(value=account is not None and account.customer_id == self._owner())

    async def _sys_DoesSIPAccountExist(self, username: PlainValue, domain: PlainValue = None) -> HostReply:
        return HostReply(value=self._account(username, domain) is not None)

    async def _sys_GetBindings(self, username: PlainValue = None, domain: PlainValue = None) -> HostReply:
        account = self._account(username, domain)
        if account is None or account.customer_id != self._owner():
            self.log("GetBindings: only your own accounts' bindings can be read")
            return HostReply(value=None)
        bindings = self.engine.registrar.bindings_of(account.id, self.runner.wall_clock())
        return HostReply(value=[str(b.contact) for b in bindings])

    async def _sys_GetCurrentCallCount(self) -> HostReply:
        return HostReply(value=await self.engine.count_calls(self._owner()))

    def _owner(self) -> int:
        assert self.active.account is not None
        return self.active.account.customer_id

    def _account(self, username: PlainValue, domain: PlainValue) -> Account | None:
        assert self.active.account is not None
        user = str(username) if username is not None else self.active.account.user
        if domain is None:
            dom = self.active.account.domain
        else:
            dom = self.engine.registrar.resolve_domain(str(domain), self.runner.wall_clock()) or ""
        return self.engine.store.directory().account(user, dom)


def request_snapshot(call: Call) -> dict[str, PlainValue]:
    """The plain-data ``req`` the sandbox turns into the frozen script view."""
    request = call.leg.request
    from_ = request.from_
    to = request.to
    known = {"via", "from", "to", "call-id", "cseq", "contact", "user-agent", "max-forwards", "content-length", "content-type", "route", "record-route", "authorization", "proxy-authorization"}

    def uri(u: object) -> dict[str, PlainValue]:
        assert isinstance(u, URI)
        return {
            "User": u.user or "",
            "UnescapedUser": u.unescaped_user or "",
            "Host": u.host,
            "Port": u.port,
            "Scheme": u.scheme,
            "Parameters": ";".join(k if v is None else f"{k}={v}" for k, v in u.params),
            "Text": str(u),
        }

    return {
        "Method": request.method,
        "Body": request.body.decode("utf-8", "replace")[:8192],
        "URI": uri(request.uri),
        "Header": {
            "From": {"Name": from_.display_name or "", "URI": uri(from_.uri), "Tag": from_.tag or "", "Text": request.headers.get("From") or ""},
            "To": {"Name": to.display_name or "", "URI": uri(to.uri), "Tag": to.tag or "", "Text": request.headers.get("To") or ""},
            "CallId": request.call_id,
            "CSeq": request.cseq.number,
            "Contact": request.headers.get("Contact") or "",
            "UserAgent": request.headers.get("User-Agent") or "",
            "UnknownHeaders": [f"{n}: {v}" for n, v in request.headers if n.lower() not in known and not n.lower().startswith("x-dialspell")][:50],
            "All": [[n, v] for n, v in request.headers if n.lower() not in ("authorization", "proxy-authorization") and not n.lower().startswith("x-dialspell")][:100],
        },
    }


def _parse_custom_headers(text: str) -> tuple[tuple[str, str], ...]:
    out = []
    for item in text.split("|"):
        name, sep, value = item.partition(":")
        name, value = name.strip(), value.strip()
        if sep and name and name.lower() not in _FORBIDDEN_HEADERS and _safe_header(name, value):
            out.append((name, value))
    return tuple(out)


_UNSAFE_VALUE = re.compile(r"[\r\n\x00]")


def _safe_header(name: str, value: str) -> bool:
    """A header a dialplan may add: a token for a name, no line break or NUL in the
    value (which would smuggle a header, or a message, into ours)."""
    return TOKEN.match(name) is not None and _UNSAFE_VALUE.search(value) is None


def _reason(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")[:200]


def _stamp(now: float) -> str:
    global _stamp_second, _stamp_text
    second = int(now)
    if second != _stamp_second:
        # strftime costs more than the rest of a trace line: once a second will do.
        _stamp_second, _stamp_text = second, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
    return f"{_stamp_text}.{int(now % 1 * 1000):03d} UTC"


_stamp_second = -1
_stamp_text = ""

