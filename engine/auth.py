"""Digest authentication of SIP requests against the accounts in the store, with a
failure throttle.

:class:`Authenticator` answers one question for the registrar (and later the call
service): given a request claiming to be ``user@domain``, is it authenticated, should it
be challenged, or refused?  Unknown users take exactly the path known users with a wrong
password take (same challenge, same failure answer, same throttle), so answers never
reveal which accounts exist.

The throttle: ``max_failures`` failed attempts within ``failure_window`` seconds for one
account (named by its address-of-record, existing or not) or from one source address
lock that account or address out for ``lockout`` seconds; every attempt it makes in that
time is answered ``403 Forbidden`` whatever its credentials.  A wrong password counts as
a failure; a request without credentials (a phone's first REGISTER), a stale nonce or an
answer to somebody else's challenge does not.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from engine.events import Event, EventBus
from engine.storage import Account, Store
from sip.digest import (
    DigestAlgorithm,
    DigestChallenger,
    DigestCredentials,
    DigestVerdict,
    parse_credentials,
)
from sip.errors import SIPParseError
from sip.message import Request

logger = logging.getLogger(__name__)

LOCKOUT_REASON = "Forbidden (too many failed attempts: locked out, try again later)"

#: User-Agent prefixes (lower case) of clients that answer only the FIRST challenge and
#: support only MD5 - contrary to RFC 8760, under which a client uses the topmost
#: challenge it supports.  SIPp 3.6 and sipsak stop with "unsupported algorithm" when
#: SHA-256 comes first.  They get MD5 on top; everyone else gets SHA-256 first.
MD5_FIRST_AGENTS = ("sipsak", "sipp")

#: User-Agent prefixes (lower case) of clients that fail when ANY challenge names an
#: algorithm they lack: baresip 1.0 (libre) ends its REGISTER with ENOSYS ("Function not
#: implemented") on seeing a SHA-256 challenge, even below an MD5 one.  They get the MD5
#: challenge alone (MD5 is accepted from everyone anyway).
MD5_ONLY_AGENTS = ("baresip",)


class AuthOutcome(enum.Enum):
    ACCEPTED = "accepted"
    #: answer 401 (or 407 for proxy authentication) with ``AuthResult.headers``
    CHALLENGE = "challenge"
    #: answer 403 with ``AuthResult.reason`` (locked out)
    FORBIDDEN = "forbidden"
    #: answer 400 with ``AuthResult.reason`` (unusable Digest credentials)
    BAD_REQUEST = "bad_request"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResult:
    """The verdict on a request; ``account`` is set when ACCEPTED."""

    outcome: AuthOutcome
    account: Account | None = None
    headers: tuple[tuple[str, str], ...] = ()
    reason: str | None = None


class Authenticator:
    """Digest authentication plus the failure throttle (see the module docstring).

    The nonce key is ``secret`` if given, else the store's :meth:`Store.server_secret`
    (kept in the data directory, so nonces survive restarts); a ready ``challenger`` may
    be passed instead (tests)."""

    def __init__(
        self,
        *,
        store: Store,
        events: EventBus,
        secret: bytes | None = None,
        challenger: DigestChallenger | None = None,
        nonce_lifetime: float = 300.0,
        max_failures: int = 5,
        failure_window: float = 60.0,
        lockout: float = 900.0,
        max_tracked: int = 100_000,
        md5_first_agents: tuple[str, ...] = MD5_FIRST_AGENTS,
        md5_first_without_user_agent: bool = True,
        issuer: int | None = None,
        issuers: int = 1,
    ) -> None:
        self._store = store
        if challenger is None:
            key = secret if secret is not None else store.server_secret()
            # Each process of a multi-process server issues nonces of its own
            # (DigestChallenger: its replay table holds only those).
            challenger = DigestChallenger(key, nonce_lifetime, issuer=issuer, issuers=issuers)
        self.challenger = challenger
        self._events = events
        self.max_failures = max_failures
        self.failure_window = failure_window
        self.lockout = lockout
        self._max_tracked = max_tracked
        self._md5_first_agents = tuple(a.lower() for a in md5_first_agents)
        # SIPp's scenarios (reg_auth.xml included) send no User-Agent; phones do.
        self._md5_first_without_user_agent = md5_first_without_user_agent
        # key ("aor:alice@example.com" / "src:203.0.113.5") -> recent failure times
        self._failures: dict[str, deque[float]] = {}
        # key -> end of its lock-out
        self._locked: dict[str, float] = {}
        # In a multi-process server (engine/processes.py) the primary alone counts
        # failures: the others send theirs to it (``report_failure``), and it tells
        # them of every lock-out and unlock (``on_lockout``; an end of 0 unlocks).
        self.report_failure: Callable[..., None] | None = None
        self.on_lockout: Callable[[str, float], None] | None = None

    # -- the check ------------------------------------------------------------------------
    def check(
        self,
        request: Request,
        *,
        user: str,
        domain: str,
        realm: str,
        source: str,
        now: float,
        proxy: bool = False,
    ) -> AuthResult:
        """Authenticate ``request`` as the account ``user@domain`` (``domain`` as stored,
        ``local`` included) in ``realm``; ``source`` is the sender's IP address.

        The digest username must be ``user`` itself: credentials for another account
        fail exactly like a wrong password (RFC 3261 22.4 leaves the mapping of
        usernames to identities to the server; ours is the identity)."""
        aor_key = f"aor:{user}@{domain}"
        source_key = f"src:{source}"
        if self._is_locked(source_key, now) or self._is_locked(aor_key, now):
            return AuthResult(outcome=AuthOutcome.FORBIDDEN, reason=LOCKOUT_REASON)
        header = "Proxy-Authorization" if proxy else "Authorization"
        try:
            credentials = self._credentials_for(request, header, realm)
        except SIPParseError as exc:
            return AuthResult(outcome=AuthOutcome.BAD_REQUEST, reason=f"Bad Request ({exc.reason})")
        if credentials is None:
            return self._challenge(request, realm, now, proxy, stale=False)
        account = self._account(user, domain, now)

        def lookup(username: str, algorithm: DigestAlgorithm) -> str | None:
            if account is None or username != account.user:
                return None
            return account.ha1(algorithm)

        verdict = self.challenger.verify(credentials, method=request.method, realm=realm,
                                         lookup=lookup, now=now)
        if verdict is DigestVerdict.ACCEPTED and account is not None:
            self._failures.pop(aor_key, None)
            return AuthResult(outcome=AuthOutcome.ACCEPTED, account=account)
        if verdict is DigestVerdict.MALFORMED:
            return AuthResult(outcome=AuthOutcome.BAD_REQUEST,
                              reason="Bad Request (malformed Digest credentials)")
        if verdict is DigestVerdict.FAILED:
            self._record_failure(aor_key, source_key, user=user, domain=domain, source=source,
                                 owner=None if account is None else account.customer_id, now=now)
        return self._challenge(request, realm, now, proxy, stale=verdict is DigestVerdict.STALE)

    def challenge_headers(self, realm: str, now: float, *, proxy: bool = False,
                          stale: bool = False, request: Request | None = None
                          ) -> tuple[tuple[str, str], ...]:
        """The WWW-Authenticate (or Proxy-Authenticate) lines of a fresh challenge for
        ``request`` (whose User-Agent decides the order, see MD5_FIRST_AGENTS)."""
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        md5_first = request is not None and self._wants_md5_first(request)
        values = self.challenger.challenge(realm, now, stale=stale, md5_first=md5_first)
        agent = request.headers.get("User-Agent") if request is not None else None
        if agent is not None and agent.lstrip().lower().startswith(MD5_ONLY_AGENTS):
            md5 = f"algorithm={DigestAlgorithm.MD5.value},"
            values = tuple(v for v in values if md5 in v)
        return tuple((name, value) for value in values)

    def _wants_md5_first(self, request: Request) -> bool:
        agent = request.headers.get("User-Agent")
        if agent is None:
            return self._md5_first_without_user_agent
        agent = agent.lstrip().lower()
        return agent.startswith(self._md5_first_agents)

    def _challenge(self, request: Request, realm: str, now: float, proxy: bool, *,
                   stale: bool) -> AuthResult:
        return AuthResult(outcome=AuthOutcome.CHALLENGE, headers=self.challenge_headers(
            realm, now, proxy=proxy, stale=stale, request=request))

    def _account(self, user: str, domain: str, now: float) -> Account | None:
        account = self._store.directory().account(user, domain)
        if account is None:
            # A miss may be an account the CLI added a moment ago: look again at once
            # (cheap: a pragma read unless something changed).
            account = self._store.directory(force=True).account(user, domain)
        return account

    @staticmethod
    def _credentials_for(request: Request, header: str, realm: str) -> DigestCredentials | None:
        """The Digest credentials for our realm, if any.  RFC 3261 22.4: a request may
        carry credentials for several realms; the server uses the ones whose realm is
        its own.  Other schemes are treated as absent (RFC 4475 regaut01)."""
        fallback: DigestCredentials | None = None
        for value in request.headers.get_all(header):
            credentials = parse_credentials(value)
            if credentials is None:
                continue
            if credentials.realm == realm:
                return credentials
            fallback = fallback or credentials
        return fallback

    # -- the throttle ---------------------------------------------------------------------
    def _is_locked(self, key: str, now: float) -> bool:
        until = self._locked.get(key)
        if until is None:
            return False
        if now < until:
            return True
        del self._locked[key]
        return False

    def _record_failure(self, *keys: str, user: str, domain: str, source: str,
                        owner: int | None, now: float) -> None:
        if self.report_failure is not None:
            self.report_failure(*keys, user=user, domain=domain, source=source, owner=owner, now=now)
            return
        self.record_failure(*keys, user=user, domain=domain, source=source, owner=owner, now=now)

    def record_failure(self, *keys: str, user: str, domain: str, source: str,
                       owner: int | None, now: float) -> None:
        """Count a failed attempt under each of ``keys`` (in this process, or for
        another process of the server that reported it)."""
        aor = f"{user}@{domain}"
        logger.info("digest authentication failed for %s from %s", aor, source)
        self._publish(owner, now, kind="failure", aor=aor, source=source)
        horizon = now - self.failure_window
        for key in keys:
            times = self._failures.get(key)
            if times is None:
                if len(self._failures) >= self._max_tracked:
                    self._prune(now)
                times = self._failures[key] = deque(maxlen=self.max_failures)
            while times and times[0] < horizon:
                times.popleft()
            times.append(now)
            if len(times) >= self.max_failures:
                del self._failures[key]
                if len(self._locked) >= self._max_tracked:
                    self._locked = {k: t for k, t in self._locked.items() if t > now}
                self._locked[key] = now + self.lockout
                if self.on_lockout is not None:
                    self.on_lockout(key, now + self.lockout)
                by_source = key.startswith("src:")
                logger.warning("locked out %s %s for %.0f s after %d failures",
                               "source" if by_source else "account",
                               source if by_source else aor, self.lockout, self.max_failures)
                self._publish(owner, now, kind="lockout", aor=aor, source=source,
                              by="source" if by_source else "account", until=now + self.lockout)

    def _prune(self, now: float) -> None:
        horizon = now - self.failure_window
        self._failures = {k: t for k, t in self._failures.items() if t and t[-1] >= horizon}
        # Still too many (a wide attack): forget the oldest-started half.
        if len(self._failures) >= self._max_tracked:
            keep = list(self._failures.items())[len(self._failures) // 2 :]
            self._failures = dict(keep)

    def _publish(self, owner: int | None, now: float, **data: object) -> None:
        # The account's owner sees it on their console; admins see every owner's.
        if self._events.has_subscribers(owner):
            self._events.publish(Event(owner=owner, type="auth", data=data, time=now))

    def lockouts(self, now: float) -> dict[str, float]:
        """Current lock-outs: ``{"aor:alice@example.com" | "src:203.0.113.5": until}``."""
        return {k: t for k, t in self._locked.items() if t > now}

    def unlock(self, key: str) -> bool:
        """Lift a lock-out early (the admin's remedy); True if there was one."""
        self._failures.pop(key, None)
        if self.on_lockout is not None:
            self.on_lockout(key, 0.0)
        return self._locked.pop(key, None) is not None

    def apply_lockout(self, key: str, until: float) -> None:
        """Lock ``key`` out until ``until`` (0: unlock), as the primary decided."""
        if until:
            self._locked[key] = until
        else:
            self._locked.pop(key, None)
