"""SIP accounts, dialplans, providers, bindings and calls in progress."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.storage import ConflictError
from engine.web.context import (
    NAME,
    SQLITE_MAX_INT,
    Api,
    Fields,
    Principal,
    equal_filters,
    json_body,
    page_json,
    paging,
)
from engine.web.errors import ApiError, invalid, not_found
from engine.web.repository import ACCOUNT_FLAGS, Filter, account_json
from sip.digest import DigestAlgorithm, compute_ha1

SIP_USER = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=-]{1,64}$")
HOSTPORT = re.compile(r"^(sip:)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_MIN_SIP_PASSWORD = 6


def _path_int(request: Request, name: str, what: str) -> int:
    try:
        value = int(request.path_params[name])
    except ValueError:
        raise not_found(what) from None
    if not 0 < value <= SQLITE_MAX_INT:
        raise not_found(what)  # no row has such an id (SQLite could not even compare it)
    return value


def _conflict(exc: ConflictError) -> ApiError:
    return ApiError(409, "conflict", str(exc))


# -- SIP accounts ---------------------------------------------------------------------------
_ACCOUNT_FIELDS = ("customer_id", "user", "domain", "password", "in_dialplan", "out_dialplan", *ACCOUNT_FLAGS)


def _account_fields(api: Api, fields: Fields, *, creating: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in ("in_dialplan", "out_dialplan"):
        if fields.has(name):
            values[name] = fields.text(name, max_len=64, pattern=NAME, nullable=True)
    for flag in ACCOUNT_FLAGS:
        value = fields.flag(flag)
        if value is not None:
            values[flag] = int(value)
    password = fields.text("password", required=creating, max_len=128)
    if password is not None and len(password) < _MIN_SIP_PASSWORD:
        fields.problem("password", f"must be at least {_MIN_SIP_PASSWORD} characters")
    if password is not None:
        values["password"] = password
    return values


def _with_ha1(values: dict[str, Any], user: str, domain: str) -> dict[str, Any]:
    password = values.pop("password", None)
    if password is not None:
        values["ha1_md5"] = compute_ha1(user, domain, password, DigestAlgorithm.MD5)
        values["ha1_sha256"] = compute_ha1(user, domain, password, DigestAlgorithm.SHA256)
    return values


async def list_accounts(api: Api, request: Request, who: Principal) -> Response:
    limit, offset = paging(request)
    where = equal_filters(request, Filter().owner(api.owner_filter(who, request)), ("user", "domain"))
    page = api.repo.accounts(where, limit, offset)
    page.items[:] = [account_json(r) for r in page.items]
    return JSONResponse(page_json(page, limit, offset))


async def create_account(api: Api, request: Request, who: Principal) -> Response:
    body = await json_body(request)
    owner = api.target_owner(who, request, body)
    fields = Fields(body, _ACCOUNT_FIELDS)
    user = fields.text("user", required=True, max_len=64, pattern=SIP_USER) or ""
    domain = (fields.text("domain", max_len=253) or "local").lower()
    values = _account_fields(api, fields, creating=True)
    if user and domain not in api.repo.served_domains():
        fields.problem("domain", f"{domain!r} is not served here (use 'local' for the server's own)")
    fields.check()
    row = {"user": user, "domain": domain, "customer_id": owner, "created": api.now(),
           **_with_ha1(values, user, domain)}
    try:
        account_id = await api.repo.add_account(row)
    except ConflictError as exc:
        raise _conflict(exc) from exc
    created = api.repo.account(account_id, None)
    assert created is not None
    return JSONResponse(account_json(created), status_code=201)


async def get_account(api: Api, request: Request, who: Principal) -> Response:
    row = api.visible(who, api.repo.account(_path_int(request, "id", "SIP account"), None), "SIP account")
    return JSONResponse(account_json(row))


async def update_account(api: Api, request: Request, who: Principal) -> Response:
    row = api.visible(who, api.repo.account(_path_int(request, "id", "SIP account"), None), "SIP account")
    fields = Fields(await json_body(request), _ACCOUNT_FIELDS[3:])
    values = _account_fields(api, fields, creating=False)
    fields.check()
    await api.repo.update("sip_accounts", row["id"], _with_ha1(values, row["user"], row["domain"]))
    updated = api.repo.account(row["id"], None)
    assert updated is not None
    return JSONResponse(account_json(updated))


async def delete_account(api: Api, request: Request, who: Principal) -> Response:
    row = api.visible(who, api.repo.account(_path_int(request, "id", "SIP account"), None), "SIP account")
    await api.repo.delete("sip_accounts", row["id"])
    return Response(status_code=204)


# -- dialplans ------------------------------------------------------------------------------
async def list_dialplans(api: Api, request: Request, who: Principal) -> Response:
    limit, offset = paging(request)
    where = equal_filters(request, Filter().owner(api.owner_filter(who, request)), ("name",))
    return JSONResponse(page_json(api.repo.dialplans(where, limit, offset), limit, offset))


def _dialplan_name(request: Request) -> str:
    name = str(request.path_params["name"])
    if not NAME.match(name):
        raise not_found("dialplan")
    return name


async def get_dialplan(api: Api, request: Request, who: Principal) -> Response:
    row = api.repo.dialplan(api.target_owner(who, request), _dialplan_name(request))
    if row is None:
        raise not_found("dialplan")
    return JSONResponse(row)


def _limits(api: Api, fields: Fields) -> dict[str, float]:
    raw = fields.raw("limits")
    if raw is None:
        return {}
    caps = api.config.dialplan_limit_caps
    if not isinstance(raw, dict):
        fields.problem("limits", "must be an object")
        return {}
    out: dict[str, float] = {}
    for name, value in raw.items():
        cap = caps.get(name)
        if cap is None:
            fields.problem(f"limits.{name}", f"unknown limit (known: {', '.join(sorted(caps))})")
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= cap:
            fields.problem(f"limits.{name}", f"must be a number above 0 and at most {cap}")
        else:
            out[name] = value
    return out


async def _save_dialplan(api: Api, request: Request, who: Principal, name: str, body: dict[str, Any],
                         *, create_only: bool) -> Response:
    owner = api.target_owner(who, request, body)
    fields = Fields(body, ("customer_id", "name", "source", "trace_email", "limits"))
    existing = api.repo.dialplan(owner, name)
    if create_only and existing is not None:
        raise ApiError(409, "conflict", f"a dialplan named {name!r} already exists; PUT replaces it")
    source = fields.text("source", required=existing is None, max_len=1024 * 1024)
    trace_email = fields.text("trace_email", max_len=254, nullable=True)
    limits = _limits(api, fields)
    fields.check()
    if source is None:
        assert existing is not None
        source = str(existing["source"])
    errors = await api.services.compiler.compile_errors(source)
    if errors:
        details = [{"line": e.line, "column": e.column, "message": e.message} for e in errors]
        first = errors[0]
        raise ApiError(422, "compile_error",
                       f"the dialplan does not compile: line {first.line}, column {first.column}: "
                       f"{first.message}", details)
    if existing is not None:
        if not fields.has("trace_email"):
            trace_email = existing["trace_email"]
        if not fields.has("limits"):
            limits = dict(existing["limits"])
    created = await api.repo.put_dialplan(owner, name, source=source, trace_email=trace_email or None,
                                          limits=limits, now=api.now())
    row = api.repo.dialplan(owner, name)
    return JSONResponse(row, status_code=201 if created else 200)


async def create_dialplan(api: Api, request: Request, who: Principal) -> Response:
    body = await json_body(request)
    name = body.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise invalid("name", f"is required and must match {NAME.pattern}")
    return await _save_dialplan(api, request, who, name, body, create_only=True)


async def put_dialplan(api: Api, request: Request, who: Principal) -> Response:
    body = await json_body(request)
    name = str(request.path_params["name"])
    if not NAME.match(name):
        raise invalid("name", f"must match {NAME.pattern}")
    if "name" in body and body["name"] != name:
        raise invalid("name", "differs from the name in the path")
    return await _save_dialplan(api, request, who, name, body, create_only=False)


async def delete_dialplan(api: Api, request: Request, who: Principal) -> Response:
    owner = api.target_owner(who, request)
    name = _dialplan_name(request)
    if api.repo.dialplan(owner, name) is None:
        raise not_found("dialplan")
    users = api.repo.accounts_using_dialplan(owner, name)
    if users:
        raise ApiError(409, "in_use", f"the dialplan is used by {', '.join(users)}; change their "
                       "in_dialplan/out_dialplan first", [{"account": u} for u in users])
    await api.repo.delete_dialplan(owner, name)
    return Response(status_code=204)


# -- providers ------------------------------------------------------------------------------
_PROVIDER_INPUT = ("customer_id", "name", "server", "username", "password", "from_user", "from_host",
                   "outbound_proxy", "headers", "register", "register_contact", "register_expiry")


def _provider_fields(fields: Fields, *, creating: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if creating or fields.has("name"):
        values["name"] = fields.text("name", required=True, max_len=64, pattern=NAME)
    if creating or fields.has("server"):
        values["server"] = fields.text("server", required=True, max_len=260, pattern=HOSTPORT)
    if fields.has("outbound_proxy"):
        values["outbound_proxy"] = fields.text("outbound_proxy", max_len=260, pattern=HOSTPORT, nullable=True)
    for name in ("username", "password", "from_user", "from_host", "register_contact"):
        if fields.has(name):
            values[name] = fields.text(name, max_len=256, nullable=True)
    if fields.has("register"):
        values["register"] = int(bool(fields.flag("register")))
    if fields.has("register_expiry"):
        expiry = fields.integer("register_expiry", low=60, high=3600)
        if expiry is not None:
            values["register_expiry"] = expiry
    if fields.has("headers"):
        headers = fields.raw("headers")
        ok = isinstance(headers, list) and len(headers) <= 20 and all(
            isinstance(h, list) and len(h) == 2 and isinstance(h[0], str) and isinstance(h[1], str)
            and HEADER_NAME.match(h[0]) and len(h[1]) <= 512 and "\r" not in h[1] and "\n" not in h[1]
            for h in headers)
        if not ok:
            fields.problem("headers", "must be a list of at most 20 [name, value] pairs of one-line strings")
        else:
            values["headers"] = json.dumps(headers)
    return values


async def list_providers(api: Api, request: Request, who: Principal) -> Response:
    limit, offset = paging(request)
    where = equal_filters(request, Filter().owner(api.owner_filter(who, request)), ("name",))
    return JSONResponse(page_json(api.repo.providers(where, limit, offset), limit, offset))


async def create_provider(api: Api, request: Request, who: Principal) -> Response:
    body = await json_body(request)
    owner = api.target_owner(who, request, body)
    fields = Fields(body, _PROVIDER_INPUT)
    values = _provider_fields(fields, creating=True)
    fields.check()
    try:
        provider_id = await api.repo.add_provider(owner, values, api.now())
    except ConflictError as exc:
        raise _conflict(exc) from exc
    return JSONResponse(api.repo.provider(provider_id, None), status_code=201)


async def get_provider(api: Api, request: Request, who: Principal) -> Response:
    row = api.visible(who, api.repo.provider(_path_int(request, "id", "provider"), None), "provider")
    return JSONResponse(row)


async def update_provider(api: Api, request: Request, who: Principal) -> Response:
    row = api.visible(who, api.repo.provider(_path_int(request, "id", "provider"), None), "provider")
    fields = Fields(await json_body(request), _PROVIDER_INPUT[1:])
    values = _provider_fields(fields, creating=False)
    fields.check()
    try:
        await api.repo.update("providers", row["id"], values)
    except ConflictError as exc:
        raise _conflict(exc) from exc
    return JSONResponse(api.repo.provider(row["id"], None))


async def delete_provider(api: Api, request: Request, who: Principal) -> Response:
    row = api.visible(who, api.repo.provider(_path_int(request, "id", "provider"), None), "provider")
    await api.repo.delete("providers", row["id"])
    return Response(status_code=204)


# -- bindings -------------------------------------------------------------------------------
def _bindings(api: Api, owner: int | None, account_id: int | None) -> list[dict[str, Any]]:
    now = api.now()
    directory = api.services.store.directory()
    out: list[dict[str, Any]] = []
    for account in directory.accounts_by_id.values():
        if owner is not None and account.customer_id != owner:
            continue
        if account_id is not None and account.id != account_id:
            continue
        for b in api.services.registrar.bindings_of(account.id, now):
            out.append({
                "id": b.id, "account_id": b.account_id, "customer_id": account.customer_id,
                "aor": b.aor, "contact": str(b.contact), "received": f"{b.received[0]}:{b.received[1]}",
                "transport": b.transport, "expires": b.remaining(now), "expires_at": b.expires_at,
                "user_agent": b.user_agent, "registered_at": b.registered_at,
            })
    out.sort(key=lambda b: (b["account_id"], b["registered_at"]))
    return out


async def list_bindings(api: Api, request: Request, who: Principal) -> Response:
    limit, offset = paging(request)
    account_text = request.query_params.get("account_id")
    try:
        account_id = int(account_text) if account_text else None
    except ValueError:
        raise invalid("account_id", "must be an integer") from None
    rows = _bindings(api, api.owner_filter(who, request), account_id)
    return JSONResponse({"items": rows[offset:offset + limit], "total": len(rows), "limit": limit,
                         "offset": offset})


async def delete_binding(api: Api, request: Request, who: Principal) -> Response:
    binding_id = str(request.path_params["id"])
    owner = None if who.customer.admin else who.customer.id
    if not any(b["id"] == binding_id for b in _bindings(api, owner, None)):
        raise not_found("binding")
    if await api.services.registrar.remove_binding(binding_id, api.now()) is None:
        raise not_found("binding")
    return Response(status_code=204)


# -- calls in progress ----------------------------------------------------------------------
async def list_calls(api: Api, request: Request, who: Principal) -> Response:
    limit, offset = paging(request)
    calls = await api.services.calls.active_calls(api.owner_filter(who, request))
    return JSONResponse({"items": calls[offset:offset + limit], "total": len(calls), "limit": limit,
                         "offset": offset})


async def hang_up_call(api: Api, request: Request, who: Principal) -> Response:
    owner = None if who.customer.admin else who.customer.id
    if not await api.services.calls.hang_up(str(request.path_params["id"]), owner):
        raise not_found("call")
    return Response(status_code=204)
