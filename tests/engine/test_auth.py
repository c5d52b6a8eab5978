from __future__ import annotations

from pathlib import Path

import pytest

from engine.auth import Authenticator, AuthOutcome, AuthResult
from engine.events import EventBus
from engine.storage import LOCAL_DOMAIN, Store
from sip.digest import authorization_for
from sip.message import Request
from sip.parse import parse_message_untrusted

NOW = 1_800_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store.open(tmp_path)
    store.add_customer("acme", "pw", now=1.0)
    store.add_account("alice", LOCAL_DOMAIN, customer="acme", password="secret", now=1.0)
    store.add_account("bob", LOCAL_DOMAIN, customer="acme", password="secret", now=1.0)
    return store


def request(user: str, authorization: str | None = None) -> Request:
    lines = [
        "REGISTER sip:127.0.0.1 SIP/2.0",
        "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc",
        f"From: <sip:{user}@127.0.0.1>;tag=1",
        f"To: <sip:{user}@127.0.0.1>",
        "Call-ID: c1",
        "CSeq: 1 REGISTER",
    ]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    message = parse_message_untrusted(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def attempt(auth: Authenticator, user: str, password: str | None, *, source: str = "198.51.100.7",
            now: float = NOW) -> AuthResult:
    """One REGISTER round: without credentials if ``password`` is None, else answering a
    fresh challenge with ``password``."""
    challenge = auth.check(request(user), user=user, domain=LOCAL_DOMAIN, realm=LOCAL_DOMAIN,
                           source=source, now=now)
    if password is None or challenge.outcome is not AuthOutcome.CHALLENGE:
        return challenge
    value = authorization_for(challenge.headers[1][1], "REGISTER", "sip:127.0.0.1", user, password)
    return auth.check(request(user, value), user=user, domain=LOCAL_DOMAIN, realm=LOCAL_DOMAIN,
                      source=source, now=now)


def test_right_password_is_accepted_with_the_account(store: Store) -> None:
    auth = Authenticator(store=store, events=EventBus())
    result = attempt(auth, "alice", "secret")
    assert result.outcome is AuthOutcome.ACCEPTED
    assert result.account is not None and result.account.aor == "alice@local"


def test_five_failures_lock_the_account_even_against_the_right_password(store: Store) -> None:
    bus = EventBus()
    auth = Authenticator(store=store, events=bus)
    with bus.subscribe(None, types=["auth"]) as sub:
        for n in range(5):
            result = attempt(auth, "alice", "guess", source=f"198.51.100.{n}", now=NOW + n)
            assert result.outcome is AuthOutcome.CHALLENGE  # each failure is re-challenged
        locked = attempt(auth, "alice", "secret", source="192.0.2.99", now=NOW + 6)
        assert locked.outcome is AuthOutcome.FORBIDDEN and "locked out" in (locked.reason or "")
        kinds = [e.data["kind"] for e in iter(sub.receive_nowait, None)]
        assert kinds == ["failure"] * 5 + ["lockout"]
    # Bob is not affected, and Alice is let in again after 15 minutes.
    assert attempt(auth, "bob", "secret", source="192.0.2.99", now=NOW + 7).outcome is AuthOutcome.ACCEPTED
    assert attempt(auth, "alice", "secret", source="192.0.2.99", now=NOW + 5 + 901).outcome is AuthOutcome.ACCEPTED


def test_five_failures_from_one_address_lock_that_address_across_accounts(store: Store) -> None:
    auth = Authenticator(store=store, events=EventBus())
    for n, user in enumerate(["alice", "bob", "carol", "dave", "erin"]):
        attempt(auth, user, "guess", source="203.0.113.66", now=NOW + n)
    assert attempt(auth, "bob", "secret", source="203.0.113.66", now=NOW + 10).outcome is AuthOutcome.FORBIDDEN
    assert attempt(auth, "bob", "secret", source="203.0.113.67", now=NOW + 10).outcome is AuthOutcome.ACCEPTED
    assert set(auth.lockouts(NOW + 10)) == {"src:203.0.113.66"}


def test_failures_spread_beyond_the_window_do_not_lock(store: Store) -> None:
    auth = Authenticator(store=store, events=EventBus())
    for n in range(8):
        attempt(auth, "alice", "guess", now=NOW + 20 * n)  # one every 20 s: at most 3 per minute
    assert attempt(auth, "alice", "secret", now=NOW + 200).outcome is AuthOutcome.ACCEPTED


def test_unknown_accounts_are_throttled_like_known_ones(store: Store) -> None:
    auth = Authenticator(store=store, events=EventBus(), max_failures=3)
    for n in range(3):
        attempt(auth, "ghost", "guess", source=f"198.51.100.{n}", now=NOW)
        attempt(auth, "alice", "guess", source=f"192.0.2.{n}", now=NOW)
    assert attempt(auth, "ghost", None, source="10.1.1.1", now=NOW).outcome is AuthOutcome.FORBIDDEN
    assert attempt(auth, "alice", None, source="10.1.1.1", now=NOW).outcome is AuthOutcome.FORBIDDEN


def test_requests_without_credentials_are_not_failures(store: Store) -> None:
    auth = Authenticator(store=store, events=EventBus())
    for _ in range(20):
        assert attempt(auth, "alice", None).outcome is AuthOutcome.CHALLENGE
    assert attempt(auth, "alice", "secret").outcome is AuthOutcome.ACCEPTED


def test_limits_are_configurable(store: Store) -> None:
    auth = Authenticator(store=store, events=EventBus(), max_failures=2, failure_window=10.0,
                         lockout=30.0)
    attempt(auth, "alice", "guess", now=NOW)
    attempt(auth, "alice", "guess", now=NOW + 1)
    assert attempt(auth, "alice", "secret", now=NOW + 2).outcome is AuthOutcome.FORBIDDEN
    assert attempt(auth, "alice", "secret", now=NOW + 32).outcome is AuthOutcome.ACCEPTED


def test_malformed_digest_is_a_bad_request(store: Store) -> None:
    auth = Authenticator(store=store, events=EventBus())
    broken = request("alice", 'Digest username="alice", realm="local"')
    result = auth.check(broken, user="alice", domain=LOCAL_DOMAIN, realm=LOCAL_DOMAIN,
                        source="198.51.100.7", now=NOW)
    assert result.outcome is AuthOutcome.BAD_REQUEST


def test_account_added_by_another_process_authenticates_at_once(store: Store, tmp_path: Path) -> None:
    auth = Authenticator(store=store, events=EventBus())
    assert attempt(auth, "carol", "pw").outcome is AuthOutcome.CHALLENGE
    Store.open(tmp_path).add_account("carol", LOCAL_DOMAIN, customer="acme", password="pw", now=2.0)
    assert attempt(auth, "carol", "pw").outcome is AuthOutcome.ACCEPTED


def _algorithms(result: AuthResult) -> list[str]:
    return [value.split("algorithm=")[1].split(",")[0] for _, value in result.headers]


def _with_agent(user: str, agent: str | None) -> Request:
    base = request(user)
    if agent is None:
        return base
    return base.replace(headers=base.headers.with_added("User-Agent", agent))


@pytest.mark.parametrize(("agent", "order"), [
    ("Linphone/5.2 (belle-sip/5.2)", ["SHA-256", "MD5"]),
    ("sipsak 0.9.8.1", ["MD5", "SHA-256"]),
    ("SIPp/3.6.1", ["MD5", "SHA-256"]),
    (None, ["MD5", "SHA-256"]),  # SIPp's own scenarios send no User-Agent
])
def test_first_challenge_only_clients_get_md5_on_top(store: Store, agent: str | None,
                                                      order: list[str]) -> None:
    auth = Authenticator(store=store, events=EventBus())
    for user in ("alice", "nobody"):  # never depends on the account
        result = auth.check(_with_agent(user, agent), user=user, domain=LOCAL_DOMAIN,
                            realm=LOCAL_DOMAIN, source="198.51.100.7", now=NOW)
        assert _algorithms(result) == order
