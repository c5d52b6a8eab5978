"""Sessions (login, extend, logout) and the customer resource (sign-up, self, password,
webcallback key; the admin's customer list)."""

from __future__ import annotations

import re
import secrets
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.events import Event
from engine.storage import ConflictError, check_password, hash_password
from engine.web.context import NAME, Api, Fields, Principal, json_body, page_json, paging
from engine.web.errors import ApiError, invalid, not_found, rate_limited
from engine.web.repository import customer_json
from sip.digest import DigestAlgorithm, compute_ha1

COOKIE = "dialspell_session"
TOKEN = re.compile(r"^[0-9a-f]{96}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 8

#: The ``default`` dialplan every new customer starts with.
DEFAULT_DIALPLAN = """\
# Your default dialplan (edit it, or push your own with `dialspell dialplan push`).
# Calls you place go where you dialled; calls to you ring your registered phones.
if sys.Out:
    sys.Dial(req.URI.ToString())
else:
    sys.Dial("%s@local" % sys.Username)
"""


def new_token() -> str:
    """A session token: 384 random bits as 96 lowercase hex characters."""
    return secrets.token_hex(48)


def new_webcallback_key() -> str:
    return secrets.token_urlsafe(24)


def _source(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _session_cookie(response: Response, request: Request, token: str, max_age: int) -> None:
    response.set_cookie(COOKIE, token, max_age=max_age, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")


async def login(api: Api, request: Request) -> Response:
    """``POST /api/v1/login``: check the password, throttled per account and source."""
    fields = Fields(await json_body(request), ("username", "password"))
    username = fields.text("username", required=True, max_len=128) or ""
    password = fields.text("password", required=True, max_len=1024) or ""
    fields.check()
    now = api.now()
    source = _source(request)
    account_key = username.lower()
    wait = max(api.login_by_account.retry_after(account_key, now),
               api.login_by_source.retry_after(source, now))
    if wait > 0:
        raise rate_limited("failed logins", wait)
    found = api.repo.password_hash(username)
    stored = found[1] if found is not None else api.dummy_hash
    # scrypt takes tens of milliseconds: off the trio thread, and as long for unknown names.
    good = await trio.to_thread.run_sync(check_password, password, stored)
    if found is None or not good:
        api.login_by_account.hit(account_key, now)
        api.login_by_source.hit(source, now)
        if found is not None:
            api.services.events.publish(Event(owner=found[0].id, type="auth", time=now, data={
                "kind": "web_login_failed", "username": username, "source": source}))
        raise ApiError(401, "bad_credentials", "wrong user name or password")
    customer = found[0]
    api.login_by_account.clear(account_key)
    token = new_token()
    minutes = api.config.session_minutes
    expires_at = now + minutes * 60
    await api.repo.create_session(customer.id, token, now=now, expires_at=expires_at, source=source)
    response = JSONResponse({"token": token, "expires_at": expires_at, "customer": customer_json(customer)})
    _session_cookie(response, request, token, minutes * 60)
    return response


async def session_info(api: Api, request: Request, who: Principal) -> Response:
    return JSONResponse({"customer": customer_json(who.customer), "created": who.created,
                         "expires_at": who.expires_at})


async def extend_session(api: Api, request: Request, who: Principal) -> Response:
    """``POST /api/v1/session/extend {minutes}``: never past ``session_max_minutes``
    after login."""
    cap = api.config.session_max_minutes
    fields = Fields(await json_body(request), ("minutes",))
    minutes = fields.integer("minutes", low=1, high=cap)
    if minutes is None and not fields.problems:
        fields.problem("minutes", "is required")
    fields.check()
    assert minutes is not None
    now = api.now()
    expires_at = min(max(who.expires_at, now) + minutes * 60, who.created + cap * 60)
    await api.repo.set_session_expiry(who.token, expires_at)
    response = JSONResponse({"expires_at": expires_at, "max_expires_at": who.created + cap * 60})
    _session_cookie(response, request, who.token, max(0, int(expires_at - now)))
    return response


async def logout(api: Api, request: Request, who: Principal) -> Response:
    await api.repo.end_session(who.token)
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


async def sign_up(api: Api, request: Request) -> Response:
    """``POST /api/v1/customer``: a new customer, its SIP account and ``default`` dialplan."""
    if not api.config.signup_enabled:
        raise ApiError(403, "signup_disabled", "sign-up is disabled on this server; ask its operator")
    now = api.now()
    source = _source(request)
    wait = api.signups.retry_after(source, now)
    if wait > 0:
        raise rate_limited("sign-ups from your address", wait)
    fields = Fields(await json_body(request), ("username", "password", "email", "sip_password"))
    username = fields.text("username", required=True, max_len=64, pattern=NAME) or ""
    password = fields.text("password", required=True, max_len=1024) or ""
    email = fields.text("email", max_len=254, pattern=EMAIL)
    sip_password = fields.text("sip_password", max_len=128)
    if password and len(password) < MIN_PASSWORD:
        fields.problem("password", f"must be at least {MIN_PASSWORD} characters")
    fields.check()
    api.signups.hit(source, now)
    domain = api.config.signup_domain
    generated = sip_password is None
    sip_secret = sip_password if sip_password is not None else secrets.token_urlsafe(12)
    ha1 = (compute_ha1(username, domain, sip_secret, DigestAlgorithm.MD5),
           compute_ha1(username, domain, sip_secret, DigestAlgorithm.SHA256))
    hashed = await trio.to_thread.run_sync(hash_password, password)
    try:
        customer = await api.repo.sign_up(name=username, email=email, password_hash=hashed, domain=domain,
                                          ha1=ha1, dialplan=DEFAULT_DIALPLAN, key=new_webcallback_key(),
                                          now=now)
    except ConflictError as exc:
        raise ApiError(409, "conflict", str(exc)) from exc
    body: dict[str, Any] = {"customer": customer_json(customer), "sip_account": f"{username}@{domain}"}
    if generated:
        body["sip_password"] = sip_secret  # shown once: only HA1 values are kept
    return JSONResponse(body, status_code=201)


async def get_customer(api: Api, request: Request, who: Principal) -> Response:
    customer = api.repo.customer(api.target_owner(who, request))
    if customer is None:
        raise not_found("customer")
    return JSONResponse(customer_json(customer))


async def update_customer(api: Api, request: Request, who: Principal) -> Response:
    target = api.target_owner(who, request)
    fields = Fields(await json_body(request), ("email",))
    email = fields.text("email", max_len=254, pattern=EMAIL, nullable=True)
    fields.check()
    if fields.has("email"):
        try:
            await api.repo.update_customer(target, email=email or None)
        except ConflictError as exc:
            raise ApiError(409, "conflict", str(exc)) from exc
    customer = api.repo.customer(target)
    assert customer is not None
    return JSONResponse(customer_json(customer))


async def change_password(api: Api, request: Request, who: Principal) -> Response:
    """``POST /api/v1/customer/password {old_password, new_password}``; other sessions end."""
    fields = Fields(await json_body(request), ("old_password", "new_password"))
    old = fields.text("old_password", required=True, max_len=1024) or ""
    new = fields.text("new_password", required=True, max_len=1024) or ""
    if new and len(new) < MIN_PASSWORD:
        fields.problem("new_password", f"must be at least {MIN_PASSWORD} characters")
    fields.check()
    stored = api.repo.password_hash_of(who.customer.id) or api.dummy_hash
    if not await trio.to_thread.run_sync(check_password, old, stored):
        raise invalid("old_password", "is not your current password")
    hashed = await trio.to_thread.run_sync(hash_password, new)
    await api.repo.set_password(who.customer.id, hashed, keep_session=who.token)
    return Response(status_code=204)


def _key_json(api: Api, request: Request, name: str, key: str) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/")
    return {"key": key, "url": f"{base}/webcallback/{name}?number=NUMBER&key={key}"}


async def get_webcallback_key(api: Api, request: Request, who: Principal) -> Response:
    target = api.target_owner(who, request)
    customer = api.repo.customer(target)
    assert customer is not None
    key = api.repo.webcallback_key(target)
    if key is None:
        key = new_webcallback_key()
        await api.repo.set_webcallback_key(target, key, api.now())
    return JSONResponse(_key_json(api, request, customer.name, key))


async def regenerate_webcallback_key(api: Api, request: Request, who: Principal) -> Response:
    target = api.target_owner(who, request)
    customer = api.repo.customer(target)
    assert customer is not None
    key = new_webcallback_key()
    await api.repo.set_webcallback_key(target, key, api.now())
    return JSONResponse(_key_json(api, request, customer.name, key))


async def list_customers(api: Api, request: Request, who: Principal) -> Response:
    if not who.customer.admin:
        raise not_found("resource")
    limit, offset = paging(request)
    return JSONResponse(page_json(api.repo.customers(limit, offset), limit, offset))
