"""Registering with customers' SIP providers (RFC 3261 10.2), so that a provider can send
incoming calls to us.

:class:`ProviderRegistrationAgent` runs as one task of the server.  Every
``poll_interval`` seconds it reads the ``providers`` rows with ``register`` set and keeps
exactly one registration task per row: a new row starts one, a changed row restarts it
(after unregistering the old contact), a removed or unflagged row stops it and
unregisters.  Each registration:

* sends REGISTER to the provider's outbound proxy or server (RFC 3263 for names), with
  To/From ``sip:<username>@<server host>``, one Call-ID for its whole life and a rising
  CSeq (10.2.4: refreshes reuse the Call-ID), Contact = the configured
  ``register_contact`` or ``sip:<username>@<our address>``, and Expires = the configured
  expiry clamped into 60-3600 s;
* answers a 401/407 digest challenge with the provider's credentials (a second challenge
  in a row is a failure unless it says ``stale=true``), and follows a 423's Min-Expires;
* refreshes at ``granted - refresh_margin`` seconds, but never later than 80 % of the
  granted time;
* on failure retries after ``retry_base`` seconds, doubling up to ``retry_cap``; after
  ``dns_failures_to_disable`` DNS failures in a row it gives up (state ``disabled``) until
  the row changes.

Calls the provider sends to that contact arrive as ordinary In calls; the Request-URI
user picks the account by the suffix rule (docs/callbacks.md, "Provider registrations").
States are kept in memory (:meth:`ProviderRegistrationAgent.states`) and published on the
event bus as ``registrar`` events of the provider's owner.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import trio

from engine.events import Event, EventBus
from engine.legs import DIALOG_ALLOW, is_ip
from engine.records import Provider, _provider
from engine.storage import Store
from sip.digest import authorization_for
from sip.errors import SIPError
from sip.headers import Headers
from sip.message import Request, Response, new_branch, new_call_id, new_tag
from sip.uri import URI

if TYPE_CHECKING:
    from engine.locate import Resolver
    from sip.transport import SIPEndpoint

log = logging.getLogger(__name__)

EXPIRY_MIN, EXPIRY_MAX, EXPIRY_DEFAULT = 60, 3600, 3600


class RegistrationStatus(enum.Enum):
    PENDING = "pending"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderRegistrationState:
    """What the console shows for one provider registration."""

    provider_id: int
    customer_id: int
    provider: str
    aor: str
    contact: str
    status: RegistrationStatus
    expires_at: float | None = None  # wall clock, while registered
    last_error: str | None = None
    last_success: float | None = None
    registrations: int = 0  # successful REGISTER transactions (first one and refreshes)
    failures: int = 0  # consecutive failures
    next_attempt: float | None = None  # wall clock


class RegistrationFailed(Exception):
    def __init__(self, message: str, *, dns: bool = False) -> None:
        super().__init__(message)
        self.dns = dns


class _Transaction:
    """Context of one REGISTER client transaction: the call engine's TU hook hands it
    ``on_response``/``on_timeout``; the registration task waits for the final answer."""

    def __init__(self) -> None:
        self.final: Response | None = None
        self.done = trio.Event()

    def on_response(self, response: Response) -> None:
        if response.status >= 200 and self.final is None:
            self.final = response
            self.done.set()

    def on_timeout(self) -> None:
        self.done.set()


class ProviderRegistrationAgent:
    """Keeps the ``register`` providers registered (see the module docstring)."""

    def __init__(
        self,
        *,
        store: Store,
        endpoint: SIPEndpoint,
        events: EventBus,
        resolver: Resolver | None,
        contact_host: str,
        poll_interval: float = 5.0,
        refresh_margin: float = 30.0,
        retry_base: float = 300.0,
        retry_cap: float = 3600.0,
        dns_failures_to_disable: int = 5,
        transaction_timeout: float = 40.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.endpoint = endpoint
        self.events = events
        self.resolver = resolver
        self.contact_host = contact_host
        self.poll_interval = poll_interval
        self.refresh_margin = refresh_margin
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.dns_failures_to_disable = dns_failures_to_disable
        self.transaction_timeout = transaction_timeout
        self.wall_clock = wall_clock
        self._running: dict[int, tuple[Provider, trio.CancelScope]] = {}
        self._states: dict[int, ProviderRegistrationState] = {}

    def states(self, customer_id: int | None = None) -> list[ProviderRegistrationState]:
        """Current states, of one customer or of all (``None``), by provider name."""
        found = [s for s in self._states.values() if customer_id is None or s.customer_id == customer_id]
        return sorted(found, key=lambda s: (s.customer_id, s.provider.lower()))

    # -- the supervisor -------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._sync(nursery)
            task_status.started()
            while True:
                await trio.sleep(self.poll_interval)
                self._sync(nursery)

    def _wanted(self) -> dict[int, Provider]:
        rows = self.store.query_all(
            "SELECT id, customer_id, name, server, username, password, from_user, from_host, "
            "outbound_proxy, headers, register, register_contact, register_expiry "
            "FROM providers WHERE register != 0"
        )
        providers = [_provider(tuple(r)) for r in rows]
        return {p.id: p for p in providers if p.username}

    def _sync(self, nursery: trio.Nursery) -> None:
        wanted = self._wanted()
        for provider_id, (provider, scope) in list(self._running.items()):
            if wanted.get(provider_id) != provider:
                # Removed, unflagged or changed: stop, and say goodbye with the old settings.
                scope.cancel()
                del self._running[provider_id]
                if provider_id not in wanted:
                    self._states.pop(provider_id, None)
                nursery.start_soon(self._unregister, provider)
        for provider_id, provider in wanted.items():
            if provider_id not in self._running:
                scope = trio.CancelScope()
                self._running[provider_id] = (provider, scope)
                nursery.start_soon(self._maintain, provider, scope)

    # -- one registration -----------------------------------------------------------------
    async def _maintain(self, provider: Provider, scope: trio.CancelScope) -> None:
        with scope:
            registration = _Registration(self, provider)
            self._set(provider, registration, RegistrationStatus.PENDING)
            backoff = self.retry_base
            dns_failures = 0
            while True:
                self._set(provider, registration, RegistrationStatus.REGISTERING)
                try:
                    granted = await registration.register(registration.expiry)
                except RegistrationFailed as exc:
                    dns_failures = dns_failures + 1 if exc.dns else 0
                    failures = self._states[provider.id].failures + 1
                    if exc.dns and dns_failures >= self.dns_failures_to_disable:
                        self._set(provider, registration, RegistrationStatus.DISABLED, error=str(exc), failures=failures)
                        log.warning("provider %s: registration disabled after %d DNS failures", provider.name, dns_failures)
                        return
                    self._set(provider, registration, RegistrationStatus.FAILED, error=str(exc), failures=failures,
                              next_attempt=self.wall_clock() + backoff)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, self.retry_cap)
                    continue
                backoff = self.retry_base
                dns_failures = 0
                now = self.wall_clock()
                refresh_in = max(1.0, min(granted * 0.8, granted - self.refresh_margin))
                previous = self._states[provider.id]
                self._set(provider, registration, RegistrationStatus.REGISTERED, expires_at=now + granted,
                          last_success=now, registrations=previous.registrations + 1, failures=0,
                          next_attempt=now + refresh_in)
                await trio.sleep(refresh_in)

    async def _unregister(self, provider: Provider) -> None:
        """Expires: 0 for the contact of a registration that stopped (best effort)."""
        with trio.move_on_after(self.transaction_timeout):
            try:
                await _Registration(self, provider).register(0)
            except RegistrationFailed as exc:
                log.info("provider %s: unregistration failed: %s", provider.name, exc)

    def _set(self, provider: Provider, registration: _Registration, status: RegistrationStatus, *,
             error: str | None = None, **changes: object) -> None:
        before = self._states.get(provider.id)
        base = before or ProviderRegistrationState(
            provider_id=provider.id, customer_id=provider.customer_id, provider=provider.name,
            aor=registration.aor, contact=registration.contact, status=status,
        )
        keep_error = base.last_error if status in (RegistrationStatus.REGISTERING, RegistrationStatus.PENDING) else None
        state = replace(base, status=status, last_error=error or keep_error, **changes)  # type: ignore[arg-type]
        if status is not RegistrationStatus.REGISTERED:
            state = replace(state, expires_at=None if status is not RegistrationStatus.REGISTERING else base.expires_at)
        self._states[provider.id] = state
        if before is None or before.status is not status or error:
            self.events.publish(Event(
                owner=provider.customer_id, type="registrar",
                data={"provider": provider.name, "state": status.value, "aor": registration.aor,
                      "contact": registration.contact, "error": state.last_error, "expires_at": state.expires_at},
                time=self.wall_clock(),
            ))


class _Registration:
    """The protocol state of one provider's registration: Call-ID, CSeq, tags."""

    def __init__(self, agent: ProviderRegistrationAgent, provider: Provider) -> None:
        self.agent = agent
        self.provider = provider
        host, port = agent.endpoint.local
        self.via = (agent.contact_host, port)
        self.call_id = new_call_id(agent.contact_host)
        self.from_tag = new_tag()
        self.cseq = 0
        self.aor = f"sip:{provider.username}@{provider.server_host}"
        self.contact = provider.register_contact or f"sip:{provider.username}@{agent.contact_host}:{port}"
        expiry = provider.register_expiry
        self.expiry = expiry if EXPIRY_MIN <= expiry <= EXPIRY_MAX else EXPIRY_DEFAULT

    async def register(self, expires: int) -> int:
        """One REGISTER exchange (with digest and 423 retries); the granted expiry."""
        destination = await self._destination()
        authorization: tuple[str, str] | None = None
        challenges = 0
        for _ in range(4):
            request = self._request(expires, authorization)
            response = await self._send(request, destination)
            status = response.status
            if 200 <= status < 300:
                return self._granted(response, expires)
            if status in (401, 407) and self.provider.password is not None:
                authorization = self._answer(response, challenges)
                challenges += 1
                continue
            if status == 423 and expires:
                # 10.2.8: ask again with at least the registrar's Min-Expires.
                minimum = response.headers.get("Min-Expires") or ""
                if minimum.strip().isdigit() and int(minimum) > expires:
                    expires = self.expiry = min(int(minimum), 86400)
                    continue
            raise RegistrationFailed(f"{status} {response.reason}")
        raise RegistrationFailed("too many challenges")

    def _answer(self, challenge: Response, challenges: int) -> tuple[str, str]:
        header, answer = (("WWW-Authenticate", "Authorization") if challenge.status == 401
                          else ("Proxy-Authenticate", "Proxy-Authorization"))
        values = challenge.headers.get_all(header)
        stale = any("stale=true" in v.lower().replace(" ", "") for v in values)
        if not values or (challenges and not stale):
            # A second challenge for fresh credentials means the password is wrong.
            raise RegistrationFailed(f"{challenge.status} {challenge.reason} (credentials refused)")
        chosen = next((v for v in values if "SHA-256" in v.upper()), values[0])
        assert self.provider.username is not None
        try:
            value = authorization_for(chosen, "REGISTER", self._request_uri(), self.provider.username,
                                      self.provider.password or "", nc=1, cnonce=new_tag())
        except SIPError as exc:
            raise RegistrationFailed(f"cannot answer the challenge: {exc}") from exc
        return answer, value

    async def _destination(self) -> tuple[str, int]:
        provider = self.provider
        host = provider.proxy_host or provider.server_host
        port = provider.proxy_port if provider.proxy_host else provider.server_port
        bare = host.strip("[]")
        if is_ip(bare):
            return (bare, port or 5060)
        resolver = self.agent.resolver
        if resolver is None:
            raise RegistrationFailed(f"cannot resolve {host}: no resolver", dns=True)
        from engine.locate import LocateError, locate

        try:
            targets = await locate(host, port, None, resolver=resolver)
        except LocateError as exc:
            raise RegistrationFailed(f"cannot resolve {host}: {exc}", dns=True) from exc
        if not targets:
            raise RegistrationFailed(f"cannot resolve {host}: no targets", dns=True)
        return (targets[0].host_ip, targets[0].port)

    def _request_uri(self) -> str:
        port = self.provider.server_port
        return f"sip:{self.provider.server_host}" + (f":{port}" if port else "")

    def _request(self, expires: int, authorization: tuple[str, str] | None) -> Request:
        self.cseq += 1
        via_host, via_port = self.via
        items = [
            ("Via", f"SIP/2.0/UDP {via_host}:{via_port};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<{self.aor}>;tag={self.from_tag}"),
            ("To", f"<{self.aor}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} REGISTER"),
            ("Contact", f"<{self.contact}>"),
            ("Expires", str(expires)),
            ("Allow", DIALOG_ALLOW),
            ("User-Agent", "dialspell"),
            *self.provider.headers,
        ]
        if authorization is not None:
            items.append(authorization)
        return Request(method="REGISTER", uri=URI.parse(self._request_uri()), headers=Headers(items))

    async def _send(self, request: Request, destination: tuple[str, int]) -> Response:
        context = _Transaction()
        transaction = self.agent.endpoint.request(request, destination, "UDP")
        transaction.context = context  # type: ignore[attr-defined]
        # Timer F ends the transaction after 64*T1; the extra bound covers a lost TU event.
        with trio.move_on_after(self.agent.transaction_timeout):
            await context.done.wait()
        if context.final is None:
            raise RegistrationFailed("408 no answer from the registrar")
        return context.final

    def _granted(self, response: Response, requested: int) -> int:
        """The expiry the registrar granted our contact (10.2.4): the Contact's expires
        parameter, else the Expires header, else what we asked for."""
        for contact in response.contacts:
            if _same_contact(str(contact.uri), self.contact):
                value = contact.param("expires")
                if value is not None and value.isdigit():
                    return int(value)
        header = response.headers.get("Expires")
        if header is not None and header.strip().isdigit():
            return int(header)
        return requested


def _same_contact(a: str, b: str) -> bool:
    def core(text: str) -> str:
        return text.strip("<>").split(";", 1)[0].lower()

    return core(a) == core(b)

