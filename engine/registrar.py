"""The registrar service (RFC 3261 section 10): digest-authenticated REGISTER, bindings
kept in memory for lookups and in SQLite across restarts.

The composition root builds one :class:`Registrar` after opening the store and before
serving, starts the store's writer, and calls :meth:`Registrar.handle_register` for each
REGISTER, :meth:`Registrar.lookup` to route requests to an address-of-record,
:meth:`Registrar.keepalive_targets` for NAT keep-alives and :meth:`Registrar.sweep`
periodically::

    store = Store.open(data_dir, default_domain="example.com")
    registrar = Registrar(store=store, auth=Authenticator(store=store, events=bus), events=bus)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        await registrar.load(now=time.time())   # optional: bindings are loaded at init
        response = await registrar.handle_register(request, source=addr, transport="UDP",
                                                   local=sock_addr, now=time.time())

Domains: the To host of a REGISTER is resolved to a served domain by name or alias (see
``dialspell domain add``); otherwise the server's default domain (``domain=``) and the
local socket's address stand for the pseudo-domain ``local``.  The default domain is
``domain=`` or else the store's ``default_domain``.  The digest realm is the
resolved domain's name, so every user of a domain gets the same challenge.
"""

from __future__ import annotations

import email.utils
import logging
import secrets
from collections.abc import Callable, Iterable

from engine.auth import Authenticator, AuthOutcome
from engine.events import Event, EventBus
from engine.storage import LOCAL_DOMAIN, Account, Binding, Store
from sip.errors import SIPParseError
from sip.headers import NameAddr
from sip.message import Request, Response, make_response, new_tag, stateless_tag

logger = logging.getLogger(__name__)

__all__ = ["Binding", "Registrar"]

#: Expires values beyond this are treated as this (RFC 3261 20.19: 2**32-1 at most).
_EXPIRES_CAP = 2**32 - 1
_MAX_LOCAL_HOSTS = 64


def _parse_delta(text: str) -> int | None:
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        return None
    return min(int(text), _EXPIRES_CAP) if len(text) < 12 else _EXPIRES_CAP


class Registrar:
    """REGISTER handling and the binding index (see the module docstring).

    Limits: ``max_bindings`` contacts per account (the oldest registration is dropped
    first), granted expiry clamped to [``min_expires``, ``max_expires``], and
    ``default_expires`` when the request asks for none."""

    def __init__(
        self,
        *,
        store: Store,
        auth: Authenticator,
        events: EventBus,
        domain: str | None = None,
        local_hosts: Iterable[str] = (),
        max_bindings: int = 10,
        min_expires: int = 60,
        max_expires: int = 3600,
        default_expires: int = 3600,
    ) -> None:
        if not 0 < min_expires <= default_expires <= max_expires:
            raise ValueError("need 0 < min_expires <= default_expires <= max_expires")
        self._store = store
        self._auth = auth
        self._events = events
        self.domain = (domain or store.default_domain or "").lower()
        self._local_hosts = {_bare(h) for h in local_hosts}
        self.max_bindings = max_bindings
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        # account id -> its bindings in registration order (oldest first)
        self._bindings: dict[int, list[Binding]] = {}
        #: Told of every change of an account's bindings (the other processes of a
        #: multi-process server keep a copy of the table: engine/processes.py).
        self.on_change: Callable[[int, list[Binding]], None] | None = None
        self._load()

    def _load(self) -> None:
        bindings: dict[int, list[Binding]] = {}
        for binding in self._store.load_bindings():
            bindings.setdefault(binding.account_id, []).append(binding)
        self._bindings = bindings
        logger.info("registrar loaded %d bindings", sum(len(b) for b in bindings.values()))

    async def load(self, now: float) -> int:
        """Reload the bindings from SQLite (they are loaded at construction too) and
        sweep those that expired while the server was down.  Needs the store's writer.
        Returns how many bindings remain."""
        self._load()
        await self.sweep(now)
        return self.binding_count()

    # -- domains ------------------------------------------------------------------------
    def resolve_domain(self, host: str, now: float) -> str | None:
        """The served domain (as stored) that ``host`` names, or None."""
        host = _bare(host).lower()
        name = self._store.directory().hosts.get(host)
        if name is not None:
            return name
        if host == self.domain or host in self._local_hosts:
            return LOCAL_DOMAIN
        return None

    def _note_local_host(self, host: str) -> None:
        host = _bare(host)
        if host not in self._local_hosts and len(self._local_hosts) < _MAX_LOCAL_HOSTS:
            self._local_hosts.add(host)

    # -- REGISTER -----------------------------------------------------------------------
    async def handle_register(
        self,
        request: Request,
        *,
        source: tuple[str, int],
        transport: str,
        local: tuple[str, int],
        now: float,
    ) -> Response:
        """Process a REGISTER (RFC 3261 10.3) and return the response to send.

        ``source`` is the address the request really came from, ``local`` the socket it
        arrived on, ``transport`` "UDP"/"TCP"/"TLS"/"WS"...; ``now`` is wall-clock
        seconds.  A 200 is returned only once the change is committed to SQLite.  A 401
        is a challenge, to be sent without a transaction (RFC 3261 8.2.7): its To tag
        is the request's :func:`~sip.message.stateless_tag`."""
        self._note_local_host(local[0])
        try:
            to = request.to
            call_id = request.call_id
            cseq = request.cseq.number
        except SIPParseError as exc:
            return self._reply(request, 400, f"Bad Request ({exc.reason})")

        # Step 1: "The registrar inspects the Request-URI to determine whether it has
        # access to bindings for the domain identified in the Request-URI."
        if not request.uri.is_sip:
            return self._reply(request, 416)
        domain = self.resolve_domain(request.uri.host, now)
        if domain is None:
            return self._reply(request, 404, "Not Found (domain not served here)")

        # Step 2: we support no extensions for REGISTER; RFC 3261 8.2.2.3: answer 420
        # listing them in Unsupported.
        required = [r for line in request.headers.get_all("Require") for r in [line.strip()] if r]
        if required:
            return self._reply(request, 420, headers=[("Unsupported", ", ".join(required))])

        # Step 5 (checked before authentication because it concerns domains, which are
        # public, never users): the To AOR must belong to the Request-URI's domain.
        user = to.uri.unescaped_user if to.uri.is_sip else None
        if not user or self.resolve_domain(to.uri.host, now) != domain:
            return self._reply(request, 404, "Not Found (address-of-record not valid here)")

        # Steps 3 and 4: authenticate, and the authenticated user must be the AOR's own.
        # Unknown users get the same challenge and the same failure answers.
        result = self._auth.check(request, user=user, domain=domain, realm=domain,
                                  source=source[0], now=now)
        if result.outcome is AuthOutcome.CHALLENGE:
            return make_response(request, 401, to_tag=stateless_tag(request), headers=result.headers)
        if result.outcome is AuthOutcome.FORBIDDEN:
            return self._reply(request, 403, result.reason)
        if result.outcome is AuthOutcome.BAD_REQUEST:
            return self._reply(request, 400, result.reason)
        account = result.account
        assert account is not None
        if account.disabled:
            return self._reply(request, 403, "Forbidden (account disabled)")

        return await self._update(request, account, call_id=call_id, cseq=cseq, source=source,
                                  transport=transport, local=local, now=now)

    async def _update(self, request: Request, account: Account, *, call_id: str, cseq: int,
                      source: tuple[str, int], transport: str, local: tuple[str, int],
                      now: float) -> Response:
        """Steps 6-8 for an authenticated, authorised REGISTER."""
        header_expires: int | None = None
        expires_text = request.headers.get("Expires")
        if expires_text is not None:
            header_expires = _parse_delta(expires_text)
            if header_expires is None:
                return self._reply(request, 400, "Bad Request (invalid Expires)")
        try:
            contacts = request.contacts
        except SIPParseError as exc:
            return self._reply(request, 400, f"Bad Request ({exc.reason})")
        current = [b for b in self._bindings.get(account.id, ()) if b.expires_at > now]
        expired_ids = [b.id for b in self._bindings.get(account.id, ()) if b.expires_at <= now]

        if request.is_contact_star:
            # Step 6: "If the request has additional Contact fields or an expiration time
            # other than zero, the request is invalid, and the server MUST return a 400
            # (Invalid Request) and skip the remaining steps."
            if contacts or header_expires != 0:
                return self._reply(request, 400, "Bad Request (Contact: * needs Expires: 0 alone)")
            for binding in current:
                if binding.call_id == call_id and cseq <= binding.cseq:
                    return self._reply(request, 400, "Bad Request (CSeq not above the binding's)")
            removed, kept = current, []
        elif not contacts:
            removed, kept = [], current  # a query: list the bindings (step 8)
        else:
            outcome = self._merge(request, account, contacts, current, header_expires,
                                  call_id=call_id, cseq=cseq, source=source,
                                  transport=transport, local=local, now=now)
            if isinstance(outcome, Response):
                return outcome
            removed, kept = outcome

        changed = [b for b in kept if not any(b is c for c in current)]
        deletes = [b.id for b in removed] + expired_ids
        if changed or deletes:
            previous = self._bindings.get(account.id)
            self._set_bindings(account.id, kept)
            try:
                await self._store.save_bindings(changed, deletes)
            except Exception:
                logger.exception("could not store the bindings of %s", account.aor)
                if self._bindings.get(account.id) is kept:
                    self._set_bindings(account.id, previous or [])
                return self._reply(request, 500, "Server Internal Error (bindings not stored)")
            self._publish_changes(account, removed, changed, current, now)

        # Step 8: "The response MUST contain Contact header field values enumerating all
        # current bindings.  Each Contact value MUST feature an "expires" parameter
        # indicating its expiration interval chosen by the registrar.  The response
        # SHOULD include a Date header field."
        lines: list[tuple[str, str]] = [
            ("Contact", _contact_value(b, b.remaining(now))) for b in kept
        ]
        lines.append(("Date", email.utils.formatdate(now, usegmt=True)))
        return make_response(request, 200, to_tag=new_tag(), headers=lines)

    def _merge(self, request: Request, account: Account, contacts: list[NameAddr],
               current: list[Binding], header_expires: int | None, *, call_id: str,
               cseq: int, source: tuple[str, int], transport: str, local: tuple[str, int],
               now: float) -> tuple[list[Binding], list[Binding]] | Response:
        """Step 7 on a copy: (removed, kept) bindings, or the error response (then
        nothing changes: "the update MUST be aborted and the request fails")."""
        kept = list(current)
        removed: list[Binding] = []
        user_agent = request.headers.get("User-Agent")
        for contact in contacts:
            asked: int | None
            param = contact.param("expires")
            if param is not None:
                # A contact's own expires parameter overrides the Expires header (10.2.1.1).
                asked = _parse_delta(param)
                if asked is None:
                    return self._reply(request, 400, "Bad Request (invalid Contact expires)")
            else:
                asked = header_expires
            if asked is None:
                asked = self.default_expires
            if 0 < asked < self.min_expires:
                # RFC 3261 10.3: the registrar "MAY reject the registration with a
                # response of 423 (Interval Too Brief)" which "MUST contain a Min-Expires
                # header field that states the minimum expiration interval".
                return self._reply(request, 423,
                                   headers=[("Min-Expires", str(self.min_expires))])
            granted = min(asked, self.max_expires)
            existing = next((b for b in kept if b.contact.equivalent(contact.uri)), None)
            if existing is not None and existing.call_id == call_id and cseq <= existing.cseq:
                # Step 7: same Call-ID: "If the value is higher than that of the existing
                # binding, it MUST update or remove the binding as above.  If not, the
                # update MUST be aborted and the request fails."
                return self._reply(request, 400, "Bad Request (CSeq not above the binding's)")
            if existing is not None:
                kept.remove(existing)
            if granted == 0:
                if existing is not None:
                    removed.append(existing)
                continue
            params = tuple(p for p in contact.params if p[0].lower() != "expires")
            kept.append(Binding(
                id=existing.id if existing is not None else secrets.token_hex(8),
                account_id=account.id, aor=account.aor, contact=contact.uri,
                contact_params=params, received=source, transport=transport, local=local,
                expires_at=now + granted, call_id=call_id, cseq=cseq, user_agent=user_agent,
                registered_at=existing.registered_at if existing is not None else now,
            ))
        kept.sort(key=lambda b: b.registered_at)
        while len(kept) > self.max_bindings:
            removed.append(kept.pop(0))  # the oldest registration goes first
        return removed, kept

    def _set_bindings(self, account_id: int, bindings: list[Binding]) -> None:
        self.apply_bindings(account_id, bindings)
        if self.on_change is not None:
            self.on_change(account_id, bindings)

    def apply_bindings(self, account_id: int, bindings: list[Binding]) -> None:
        """Set an account's bindings as another process's registrar has them."""
        if bindings:
            self._bindings[account_id] = bindings
        else:
            self._bindings.pop(account_id, None)

    def table(self) -> list[tuple[int, list[Binding]]]:
        """Every account's bindings (the copy a new process starts from)."""
        return list(self._bindings.items())

    def apply_table(self, table: list[tuple[int, list[Binding]]]) -> None:
        self._bindings = {account_id: bindings for account_id, bindings in table if bindings}

    @staticmethod
    def _reply(request: Request, status: int, reason: str | None = None, *,
               headers: Iterable[tuple[str, str]] = ()) -> Response:
        return make_response(request, status, reason, to_tag=new_tag(), headers=list(headers))

    # -- events -------------------------------------------------------------------------
    def _publish_changes(self, account: Account, removed: list[Binding], changed: list[Binding],
                         before: list[Binding], now: float) -> None:
        owner = account.customer_id
        if not self._events.has_subscribers(owner):
            return
        known = {b.id for b in before}
        for binding in removed:
            self._publish(owner, "unregistered", binding, now)
        for binding in changed:
            self._publish(owner, "refreshed" if binding.id in known else "registered", binding, now)

    def _publish(self, owner: int, kind: str, binding: Binding, now: float) -> None:
        self._events.publish(Event(owner=owner, type="registrar", time=now, data={
            "kind": kind,
            "aor": binding.aor,
            "contact": str(binding.contact),
            "received": f"{binding.received[0]}:{binding.received[1]}",
            "transport": binding.transport,
            "expires": binding.remaining(now),
            "user_agent": binding.user_agent,
        }))

    # -- lookups ------------------------------------------------------------------------
    def lookup(self, aor: str, now: float | None = None) -> list[Binding]:
        """The bindings of ``user@host`` (host by name, alias, default domain or local
        address), oldest registration first; with ``now``, only unexpired ones."""
        user, at, host = aor.rpartition("@")
        if not at or not user:
            return []
        check_time = now if now is not None else 0.0
        domain = self.resolve_domain(host, check_time)
        if domain is None:
            return []
        account = self._store.directory().account(user, domain)
        if account is None:
            return []
        return self.bindings_of(account.id, now)

    def bindings_of(self, account_id: int, now: float | None = None) -> list[Binding]:
        """The bindings of an account; with ``now``, only unexpired ones."""
        bindings = self._bindings.get(account_id, ())
        if now is None:
            return list(bindings)
        return [b for b in bindings if b.expires_at > now]

    async def remove_binding(self, binding_id: str, now: float) -> Binding | None:
        """Remove one binding by id (its owner unregistering a lost phone from the web
        console), from memory and SQLite, and publish ``removed``.  Returns the binding,
        or None if no binding has that id."""
        for account_id, bindings in self._bindings.items():
            for binding in bindings:
                if binding.id == binding_id:
                    self._set_bindings(account_id, [b for b in bindings if b.id != binding_id])
                    await self._store.save_bindings((), [binding_id])
                    account = self._store.directory().accounts_by_id.get(account_id)
                    if account is not None and self._events.has_subscribers(account.customer_id):
                        self._publish(account.customer_id, "removed", binding, now)
                    return binding
        return None

    def keepalive_targets(self, now: float) -> list[Binding]:
        """Unexpired bindings of accounts that have the keep-alive flag."""
        by_id = self._store.directory().accounts_by_id
        out: list[Binding] = []
        for account_id, bindings in self._bindings.items():
            account = by_id.get(account_id)
            if account is not None and account.keepalive:
                out.extend(b for b in bindings if b.expires_at > now)
        return out

    def binding_count(self) -> int:
        return sum(len(b) for b in self._bindings.values())

    async def sweep(self, now: float) -> int:
        """Remove expired bindings (from memory, then SQLite) and those of accounts that
        no longer exist; publish ``expired`` events.  Returns how many went."""
        by_id = self._store.directory().accounts_by_id
        gone: list[Binding] = []
        for account_id in list(self._bindings):
            bindings = self._bindings[account_id]
            exists = account_id in by_id
            keep = [b for b in bindings if exists and b.expires_at > now]
            if len(keep) != len(bindings):
                gone.extend(b for b in bindings if not (exists and b.expires_at > now))
                self._set_bindings(account_id, keep)
        if not gone:
            return 0
        await self._store.save_bindings((), [b.id for b in gone])
        for binding in gone:
            account = by_id.get(binding.account_id)
            if account is not None and self._events.has_subscribers(account.customer_id):
                self._publish(account.customer_id, "expired", binding, now)
        logger.debug("swept %d expired bindings", len(gone))
        return len(gone)


def _bare(host: str) -> str:
    """An IPv6 reference without its brackets (URIs have them, socket addresses not)."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _contact_value(binding: Binding, remaining: int) -> str:
    params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in binding.contact_params)
    return f"<{binding.contact}>{params};expires={remaining}"
