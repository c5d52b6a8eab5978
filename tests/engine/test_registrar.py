from __future__ import annotations

import email.utils
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

import pytest
import trio

from engine.auth import Authenticator
from engine.events import EventBus
from engine.registrar import Registrar
from engine.storage import LOCAL_DOMAIN, Store
from sip.digest import DigestAlgorithm, authorization_for, choose_challenge
from sip.message import Request, Response
from sip.parse import parse_message_untrusted

NOW = 1_800_000_000.0
TORTURE = Path("/work/shared/sip-torture")
SOURCE = ("203.0.113.5", 40000)
LOCAL = ("127.0.0.1", 5060)


@dataclass
class Env:
    store: Store
    bus: EventBus
    registrar: Registrar
    nursery: trio.Nursery


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = Store.open(tmp_path / "data", default_domain="example.com")
    store.add_customer("acme", "pw", now=1.0)
    store.add_account("alice", LOCAL_DOMAIN, customer="acme", password="secret", now=1.0)
    store.add_account("dora", LOCAL_DOMAIN, customer="acme", password="pw", disabled=True, now=1.0)
    store.add_account("kim", LOCAL_DOMAIN, customer="acme", password="pw", keepalive=True, now=1.0)
    bus = EventBus()
    registrar = Registrar(store=store, auth=Authenticator(store=store, events=bus), events=bus)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        yield Env(store, bus, registrar, nursery)
        nursery.cancel_scope.cancel()


def register(user: str = "alice", *, host: str = "example.com", cseq: int = 1,
             call_id: str = "call-1", contacts: list[str] | None = None,
             expires: str | None = None, authorization: str | None = None,
             extra: list[str] | None = None) -> Request:
    lines = [
        f"REGISTER sip:{host} SIP/2.0",
        "Via: SIP/2.0/UDP 192.168.1.20:5070;branch=z9hG4bK" + str(cseq) + user,
        f"From: <sip:{user}@{host}>;tag=from1",
        f"To: <sip:{user}@{host}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        "Max-Forwards: 70",
        "User-Agent: test-phone/1.0",
    ]
    for contact in [f"<sip:{user}@192.168.1.20:5070>"] if contacts is None else contacts:
        lines.append(f"Contact: {contact}")
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    lines += extra or []
    return parse(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())


def parse(data: bytes) -> Request:
    message = parse_message_untrusted(data)
    assert isinstance(message, Request)
    return message


async def send(env: Env, request: Request, now: float = NOW) -> Response:
    with trio.fail_after(5):
        return await env.registrar.handle_register(request, source=SOURCE, transport="UDP",
                                                   local=LOCAL, now=now)


class RegisterOptions(TypedDict, total=False):
    """What register() takes besides the user, host, CSeq and credentials."""

    call_id: str
    contacts: list[str] | None
    expires: str | None
    extra: list[str] | None


async def authed(env: Env, user: str = "alice", password: str = "secret", *,
                 algorithm: DigestAlgorithm = DigestAlgorithm.MD5, now: float = NOW,
                 host: str = "example.com", cseq: int = 1, **kw: Unpack[RegisterOptions]) -> Response:
    """The two-step exchange a phone does: REGISTER, 401, REGISTER with credentials."""
    first = await send(env, register(user, host=host, cseq=cseq, **kw), now)
    assert first.status == 401
    challenge = choose_challenge(first.headers.get_all("WWW-Authenticate"), supported=(algorithm,))
    assert challenge is not None
    value = authorization_for(challenge, "REGISTER", f"sip:{host}", user, password)
    return await send(env, register(user, host=host, cseq=cseq + 1, authorization=value, **kw), now)


def found(pattern: str, text: str) -> str:
    """The first group of ``pattern`` in ``text``, which must match."""
    match = re.search(pattern, text)
    assert match is not None, text
    return match.group(1)


def contacts_of(response: Response) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in response.headers.get_all("Contact"):
        uri = value[value.index("<") + 1 : value.index(">")]
        out[uri] = int(found(r";expires=(\d+)", value))
    return out


async def test_first_register_is_challenged_with_sha256_then_md5(env: Env) -> None:
    response = await send(env, register())
    assert response.status == 401
    challenges = response.headers.get_all("WWW-Authenticate")
    assert [found(r"algorithm=([\w-]+)", c) for c in challenges] == ["SHA-256", "MD5"]
    assert all('realm="local"' in c and 'qop="auth"' in c for c in challenges)
    assert response.to.tag


@pytest.mark.parametrize("algorithm", [DigestAlgorithm.MD5, DigestAlgorithm.SHA256])
async def test_authenticated_register_binds_and_lists_the_contact(env: Env, algorithm: DigestAlgorithm) -> None:
    response = await authed(env, algorithm=algorithm, expires="600")
    assert response.status == 200
    assert contacts_of(response) == {"sip:alice@192.168.1.20:5070": 600}
    assert email.utils.parsedate_to_datetime(response.headers.get("Date") or "").timestamp() == NOW
    (binding,) = env.registrar.lookup("alice@example.com")
    assert binding.received == SOURCE and binding.local == LOCAL and binding.transport == "UDP"
    assert binding.expires_at == NOW + 600 and binding.user_agent == "test-phone/1.0"
    # The local socket's address names the default domain too (SIPp registers to an IP).
    assert env.registrar.lookup("alice@127.0.0.1") == [binding]


async def test_unknown_user_gets_the_same_answers_as_a_wrong_password(env: Env) -> None:
    def shape(response: Response) -> tuple[int, str, list[str]]:
        challenges = [re.sub(r'nonce="[^"]*"', "nonce", c)
                      for c in response.headers.get_all("WWW-Authenticate")]
        return response.status, response.reason, challenges

    wrong = await authed(env, "alice", "guess")
    unknown = await authed(env, "mallory", "guess")
    assert shape(wrong) == shape(unknown)
    assert wrong.status == 401
    first_known = await send(env, register("alice"))
    first_unknown = await send(env, register("mallory"))
    assert shape(first_known) == shape(first_unknown)


async def test_credentials_of_another_account_do_not_register_this_one(env: Env) -> None:
    first = await send(env, register("alice"))
    challenge = choose_challenge(first.headers.get_all("WWW-Authenticate"))
    assert challenge is not None
    kims = authorization_for(challenge, "REGISTER", "sip:example.com", "kim", "pw")
    response = await send(env, register("alice", cseq=2, authorization=kims))
    assert response.status == 401
    assert env.registrar.lookup("alice@example.com") == []


async def test_disabled_account_is_refused_only_after_authentication(env: Env) -> None:
    assert (await send(env, register("dora"))).status == 401
    response = await authed(env, "dora", "pw")
    assert response.status == 403 and "disabled" in response.reason


async def test_too_brief_interval_gets_423_with_min_expires(env: Env) -> None:
    response = await authed(env, expires="30")
    assert response.status == 423
    assert response.headers.get("Min-Expires") == "60"
    assert env.registrar.lookup("alice@example.com") == []


async def test_expiry_defaults_clamps_and_contact_param_overrides_header(env: Env) -> None:
    assert contacts_of(await authed(env)) == {"sip:alice@192.168.1.20:5070": 3600}
    response = await authed(env, call_id="c2", expires="100000",
                            contacts=["<sip:alice@192.168.1.21>;expires=120", "<sip:alice@192.168.1.22>"])
    assert contacts_of(response) == {
        "sip:alice@192.168.1.20:5070": 3600,
        "sip:alice@192.168.1.21": 120,
        "sip:alice@192.168.1.22": 3600,
    }


async def test_remaining_time_is_reported_and_expired_bindings_are_swept(env: Env) -> None:
    await authed(env, expires="300")
    query = await authed(env, call_id="q", contacts=[], now=NOW + 100)
    assert contacts_of(query) == {"sip:alice@192.168.1.20:5070": 200}
    assert len(env.registrar.lookup("alice@example.com", NOW + 301)) == 0
    with env.bus.subscribe(None, types=["registrar"]) as sub:
        assert await env.registrar.sweep(NOW + 301) == 1
        event = sub.receive_nowait()
        assert event is not None and event.data["kind"] == "expired"
    assert env.store.load_bindings() == []


async def test_contact_with_expires_zero_removes_only_that_binding(env: Env) -> None:
    await authed(env, contacts=["<sip:alice@192.0.2.1>", "<sip:alice@192.0.2.2>"])
    response = await authed(env, cseq=3, contacts=["<sip:alice@192.0.2.1>;expires=0"])
    assert contacts_of(response) == {"sip:alice@192.0.2.2": 3600}
    assert [str(b.contact) for b in env.store.load_bindings()] == ["sip:alice@192.0.2.2"]


async def test_star_with_expires_zero_removes_everything(env: Env) -> None:
    await authed(env, contacts=["<sip:alice@192.0.2.1>", "<sip:alice@192.0.2.2>"])
    bad = await authed(env, cseq=3, contacts=["*"], expires="60")
    assert bad.status == 400
    # (The parser already refuses "*" mixed with other contacts; the registrar must too
    # when such a message is built in-process.)
    first = await send(env, register(cseq=5, contacts=["*"], expires="0"))
    challenge = choose_challenge(first.headers.get_all("WWW-Authenticate"))
    assert challenge is not None
    value = authorization_for(challenge, "REGISTER", "sip:example.com", "alice", "secret")
    mixed = register(cseq=6, contacts=["*"], expires="0", authorization=value)
    mixed = mixed.replace(headers=mixed.headers.with_added("Contact", "<sip:alice@192.0.2.3>"))
    assert (await send(env, mixed)).status == 400
    with env.bus.subscribe(None) as sub:
        response = await authed(env, cseq=7, contacts=["*"], expires="0")
        assert response.status == 200 and response.headers.get_all("Contact") == []
        kinds = [e.data["kind"] for e in iter(sub.receive_nowait, None) if e.type == "registrar"]
        assert kinds == ["unregistered", "unregistered"]
    assert env.registrar.lookup("alice@example.com") == [] and env.store.load_bindings() == []


async def test_same_call_id_needs_a_higher_cseq(env: Env) -> None:
    await authed(env, cseq=10, expires="600")
    stale = await authed(env, cseq=5, expires="900")  # authenticated with CSeq 6 < 11
    assert stale.status == 400
    assert contacts_of(await authed(env, cseq=20, expires="900")) == {"sip:alice@192.168.1.20:5070": 900}
    # A new Call-ID (the phone rebooted) may use any CSeq.
    assert (await authed(env, cseq=1, call_id="after-reboot")).status == 200


async def test_at_most_ten_bindings_and_the_oldest_goes_first(env: Env) -> None:
    for n in range(12):
        response = await authed(env, cseq=2 * n + 1, contacts=[f"<sip:alice@192.0.2.{n}>"], now=NOW + n)
        assert response.status == 200
    remaining = contacts_of(response)
    assert len(remaining) == 10
    assert "sip:alice@192.0.2.0" not in remaining and "sip:alice@192.0.2.1" not in remaining
    assert "sip:alice@192.0.2.11" in remaining


async def test_bindings_survive_a_restart(env: Env, tmp_path: Path) -> None:
    await authed(env, expires="600")
    store = Store.open(tmp_path / "data", default_domain="example.com")
    bus = EventBus()
    restarted = Registrar(store=store, auth=Authenticator(store=store, events=bus), events=bus)
    (binding,) = restarted.lookup("alice@example.com", NOW)
    assert binding.received == SOURCE and binding.expires_at == NOW + 600


async def test_keepalive_targets_are_bindings_of_flagged_accounts(env: Env) -> None:
    await authed(env, "alice", "secret")
    await authed(env, "kim", "pw")
    targets = env.registrar.keepalive_targets(NOW)
    assert [b.aor for b in targets] == ["kim@local"]


async def test_unserved_domain_and_foreign_aor_get_404(env: Env) -> None:
    assert (await send(env, register(host="elsewhere.org"))).status == 404
    request = register()
    foreign = request.replace(headers=request.headers.with_replaced("To", "<sip:alice@elsewhere.org>"))
    assert (await send(env, foreign)).status == 404


async def test_registered_event_reaches_the_owner(env: Env) -> None:
    acme = env.store.customer_by_name("acme")
    assert acme is not None
    with env.bus.subscribe(acme.id) as sub:
        await authed(env)
        event = sub.receive_nowait()
        assert event is not None and event.type == "registrar"
        assert event.data["kind"] == "registered" and event.data["aor"] == "alice@local"
        assert event.data["received"] == "203.0.113.5:40000"


def torture(name: str, user: str) -> Request:
    request = parse((TORTURE / f"{name}.dat").read_bytes())
    return request


async def authed_torture(env: Env, request: Request, user: str, password: str) -> Response:
    first = await send(env, request)
    assert first.status == 401
    challenge = choose_challenge(first.headers.get_all("WWW-Authenticate"))
    assert challenge is not None
    value = authorization_for(challenge, "REGISTER", str(request.uri), user, password)
    cseq = request.cseq.number + 1
    headers = request.headers.with_replaced("CSeq", f"{cseq} REGISTER").with_added("Authorization", value)
    return await send(env, request.replace(headers=headers))


@pytest.fixture
def torture_accounts(env: Env) -> Env:
    env.store.add_account("watson", LOCAL_DOMAIN, customer="acme", password="pw", now=1.0)
    env.store.add_account("user", LOCAL_DOMAIN, customer="acme", password="pw", now=1.0)
    env.store.add_account("j.user", LOCAL_DOMAIN, customer="acme", password="pw", now=1.0)
    return env


async def test_cparam01_unknownparam_is_a_contact_param_not_a_uri_param(torture_accounts: Env) -> None:
    response = await authed_torture(torture_accounts, torture("cparam01", "watson"), "watson", "pw")
    assert response.status == 200
    (binding,) = torture_accounts.registrar.lookup("watson@example.com")
    assert str(binding.contact) == "sip:+19725552222@gw1.example.net"
    assert response.headers.get_all("Contact") == ["<sip:+19725552222@gw1.example.net>;unknownparam;expires=3600"]


async def test_cparam02_unknownparam_inside_brackets_stays_in_the_uri(torture_accounts: Env) -> None:
    response = await authed_torture(torture_accounts, torture("cparam02", "watson"), "watson", "pw")
    assert response.status == 200
    (binding,) = torture_accounts.registrar.lookup("watson@example.com")
    assert str(binding.contact) == "sip:+19725552222@gw1.example.net;unknownparam"


async def test_regescrt_contact_keeps_its_escaped_route_header(torture_accounts: Env) -> None:
    response = await authed_torture(torture_accounts, torture("regescrt", "user"), "user", "pw")
    assert response.status == 200
    assert response.headers.get_all("Contact") == [
        "<sip:user@example.com?Route=%3Csip:sip.example.com%3E>;expires=3600"]
    (stored,) = torture_accounts.store.load_bindings()
    assert str(stored.contact) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


async def test_regaut01_unknown_scheme_is_challenged(torture_accounts: Env) -> None:
    response = await send(torture_accounts, torture("regaut01", "j.user"))
    assert response.status == 401
    assert len(response.headers.get_all("WWW-Authenticate")) == 2
