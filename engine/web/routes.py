"""The route table: every endpoint once, with what the OpenAPI description and
docs/api.md say about it.  The app, ``/api/v1/openapi.json`` and the docs test all read
this table, so an endpoint cannot exist without being described."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.web import api_customer as cust
from engine.web import api_records as rec
from engine.web import api_resources as res
from engine.web import console
from engine.web.context import Api, Handler, Principal, PublicHandler
from engine.web.errors import ApiError


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One method on one path.  ``auth``: ``session`` (bearer token or cookie),
    ``public``, or ``key`` (the webcallback key in the query)."""

    method: str
    path: str
    summary: str
    handler: Handler | None = None
    public: PublicHandler | None = None
    body: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    status: int = 200
    admin: bool = False

    @property
    def auth(self) -> str:
        return "session" if self.handler is not None else ("key" if "webcallback" in self.path else "public")

    @property
    def doc_path(self) -> str:
        """The path as documented (no Starlette converters)."""
        return re.sub(r"\{(\w+):\w+\}", r"{\1}", self.path)


_PAGE = ("limit", "offset", "customer_id")
_V1 = "/api/v1"


async def _openapi_handler(api: Api, request: Request) -> Response:
    return JSONResponse(openapi(api.config.version))


async def _healthz(api: Api, request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": api.config.version, "sip": dict(api.services.statistics())})


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(method="GET", path="/healthz", summary="Liveness and live SIP counters.", public=_healthz),
    Endpoint(method="GET", path=f"{_V1}/openapi.json", summary="This API's OpenAPI 3.1 description.",
             public=_openapi_handler),
    # sessions
    Endpoint(method="POST", path=f"{_V1}/login", summary="Log in; returns a session token (60 minutes).",
             public=cust.login, body=("username", "password")),
    Endpoint(method="GET", path=f"{_V1}/session", summary="The current session and its expiry.",
             handler=cust.session_info),
    Endpoint(method="POST", path=f"{_V1}/session/extend",
             summary="Extend the session (600 minutes after login at most).", handler=cust.extend_session,
             body=("minutes",)),
    Endpoint(method="POST", path=f"{_V1}/logout", summary="End the session at once.", handler=cust.logout,
             status=204),
    # customer
    Endpoint(method="POST", path=f"{_V1}/customer",
             summary="Sign up (when enabled): customer, SIP account of the same name, `default` dialplan.",
             public=cust.sign_up, body=("username", "password", "email", "sip_password"), status=201),
    Endpoint(method="GET", path=f"{_V1}/customer", summary="Your customer record.", handler=cust.get_customer,
             query=("customer_id",)),
    Endpoint(method="PATCH", path=f"{_V1}/customer", summary="Update your e-mail address.",
             handler=cust.update_customer, body=("email",), query=("customer_id",)),
    Endpoint(method="POST", path=f"{_V1}/customer/password",
             summary="Change your password (your other sessions end).", handler=cust.change_password,
             body=("old_password", "new_password"), status=204),
    Endpoint(method="GET", path=f"{_V1}/customer/webcallback-key",
             summary="Your webcallback key and URL.", handler=cust.get_webcallback_key, query=("customer_id",)),
    Endpoint(method="POST", path=f"{_V1}/customer/webcallback-key",
             summary="Replace your webcallback key (the old URL stops working).",
             handler=cust.regenerate_webcallback_key, query=("customer_id",)),
    Endpoint(method="GET", path=f"{_V1}/customers", summary="Every customer (admins only).",
             handler=cust.list_customers, query=("limit", "offset"), admin=True),
    # SIP accounts
    Endpoint(method="GET", path=f"{_V1}/sip-accounts", summary="Your SIP accounts.", handler=res.list_accounts,
             query=(*_PAGE, "user", "domain")),
    Endpoint(method="POST", path=f"{_V1}/sip-accounts", summary="Create a SIP account.",
             handler=res.create_account, status=201,
             body=("user", "domain", "password", "in_dialplan", "out_dialplan", "incoming_only",
                   "keepalive", "disabled", "customer_id")),
    Endpoint(method="GET", path=f"{_V1}/sip-accounts/{{id}}", summary="One SIP account.",
             handler=res.get_account),
    Endpoint(method="PATCH", path=f"{_V1}/sip-accounts/{{id}}",
             summary="Change a SIP account's password, dialplans or flags.", handler=res.update_account,
             body=("password", "in_dialplan", "out_dialplan", "incoming_only", "keepalive", "disabled")),
    Endpoint(method="DELETE", path=f"{_V1}/sip-accounts/{{id}}", summary="Delete a SIP account.",
             handler=res.delete_account, status=204),
    # dialplans
    Endpoint(method="GET", path=f"{_V1}/dialplans", summary="Your dialplans (without their source).",
             handler=res.list_dialplans, query=(*_PAGE, "name")),
    Endpoint(method="POST", path=f"{_V1}/dialplans",
             summary="Create a dialplan; a source that does not compile gets 422 with its errors.",
             handler=res.create_dialplan, body=("name", "source", "trace_email", "limits", "customer_id"),
             status=201),
    Endpoint(method="GET", path=f"{_V1}/dialplans/{{name}}", summary="One dialplan with its source.",
             handler=res.get_dialplan, query=("customer_id",)),
    Endpoint(method="PUT", path=f"{_V1}/dialplans/{{name}}",
             summary="Create or replace a dialplan (compiled first).", handler=res.put_dialplan,
             body=("source", "trace_email", "limits", "customer_id"), query=("customer_id",)),
    Endpoint(method="DELETE", path=f"{_V1}/dialplans/{{name}}",
             summary="Delete a dialplan no account uses.", handler=res.delete_dialplan,
             query=("customer_id",), status=204),
    # providers
    Endpoint(method="GET", path=f"{_V1}/providers", summary="Your SIP providers.", handler=res.list_providers,
             query=(*_PAGE, "name")),
    Endpoint(method="POST", path=f"{_V1}/providers", summary="Add a SIP provider.", handler=res.create_provider,
             status=201,
             body=("name", "server", "username", "password", "from_user", "from_host", "outbound_proxy",
                   "headers", "register", "register_contact", "register_expiry", "customer_id")),
    Endpoint(method="GET", path=f"{_V1}/providers/{{id}}", summary="One provider (password not shown).",
             handler=res.get_provider),
    Endpoint(method="PATCH", path=f"{_V1}/providers/{{id}}", summary="Change a provider.",
             handler=res.update_provider,
             body=("name", "server", "username", "password", "from_user", "from_host", "outbound_proxy",
                   "headers", "register", "register_contact", "register_expiry")),
    Endpoint(method="DELETE", path=f"{_V1}/providers/{{id}}", summary="Delete a provider.",
             handler=res.delete_provider, status=204),
    # bindings and calls
    Endpoint(method="GET", path=f"{_V1}/bindings", summary="Registered contacts of your accounts.",
             handler=res.list_bindings, query=(*_PAGE, "account_id")),
    Endpoint(method="DELETE", path=f"{_V1}/bindings/{{id}}", summary="Remove a registered contact.",
             handler=res.delete_binding, status=204),
    Endpoint(method="GET", path=f"{_V1}/calls", summary="Your calls in progress.", handler=res.list_calls,
             query=_PAGE),
    Endpoint(method="DELETE", path=f"{_V1}/calls/{{id}}", summary="Hang up a call in progress.",
             handler=res.hang_up_call, status=204),
    # records
    Endpoint(method="GET", path=f"{_V1}/cdrs", summary="Call detail records, newest first.",
             handler=rec.list_cdrs,
             query=(*_PAGE, "since", "until", "call_id", "bridge_id", "direction", "leg")),
    Endpoint(method="GET", path=f"{_V1}/cdrs/{{id}}", summary="One call detail record.", handler=rec.get_cdr),
    Endpoint(method="GET", path=f"{_V1}/traces", summary="Dialplan execution traces, newest first (no text).",
             handler=rec.list_traces, query=(*_PAGE, "since", "until", "call_id", "dialplan")),
    Endpoint(method="GET", path=f"{_V1}/traces/{{id}}", summary="One trace with its text.",
             handler=rec.get_trace),
    Endpoint(method="GET", path=f"{_V1}/kv", summary="Your dialplans' key/value store.", handler=rec.list_kv,
             query=(*_PAGE, "prefix")),
    Endpoint(method="GET", path=f"{_V1}/kv/{{key:path}}", summary="One key's value.", handler=rec.get_kv,
             query=("customer_id",)),
    Endpoint(method="PUT", path=f"{_V1}/kv/{{key:path}}", summary="Write a key.", handler=rec.put_kv,
             body=("value", "customer_id"), query=("customer_id",)),
    Endpoint(method="DELETE", path=f"{_V1}/kv/{{key:path}}", summary="Delete a key.", handler=rec.delete_kv,
             query=("customer_id",), status=204),
    # live
    Endpoint(method="GET", path=f"{_V1}/events", summary="The live console: your events as Server-Sent Events.",
             handler=console.events, query=("types", "sip", "customer_id")),
    Endpoint(method="GET", path="/webcallback/{user}",
             summary="Run the user's `webcallback` dialplan as an Out call to `number`.",
             public=console.webcallback, query=("number", "key")),
)


def openapi(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 description generated from :data:`ENDPOINTS`."""
    paths: dict[str, dict[str, Any]] = {}
    error = {"$ref": "#/components/schemas/Error"}
    for ep in ENDPOINTS:
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", ep.doc_path)]
        params += [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                   for name in ep.query]
        operation: dict[str, Any] = {
            "summary": ep.summary,
            "operationId": f"{ep.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', ep.doc_path.lower()).strip('_')}",
            "parameters": params,
            "responses": {
                str(ep.status): {"description": "success"},
                "4XX": {"description": "error", "content": {"application/json": {"schema": error}}},
            },
        }
        if ep.body:
            operation["requestBody"] = {"content": {"application/json": {"schema": {
                "type": "object", "properties": {name: {} for name in ep.body},
                "additionalProperties": False}}}}
        if ep.auth == "session":
            operation["security"] = [{"bearer": []}, {"cookie": []}]
        paths.setdefault(ep.doc_path, {})[ep.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "dialspell provisioning API", "version": version},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": cust.COOKIE},
            },
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "code": {"type": "string"}, "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}}}}}}},
        },
    }


def authenticate(api: Api, request: Request) -> Principal:
    """The caller of a ``session`` endpoint, from ``Authorization: Bearer`` or the
    cookie; 401 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    token = value.strip() if scheme.lower() == "bearer" else request.cookies.get(cust.COOKIE, "")
    if not token:
        raise _unauthenticated("log in first: POST /api/v1/login, then send Authorization: Bearer TOKEN")
    if not cust.TOKEN.match(token):
        raise _unauthenticated("the session token is malformed")
    found = api.repo.session(token, api.now())
    if found is None:
        raise _unauthenticated("the session has expired or ended; log in again")
    customer, created, expires_at = found
    return Principal(customer=customer, token=token, created=created, expires_at=expires_at)


def _unauthenticated(message: str) -> ApiError:
    return ApiError(401, "unauthenticated", message, headers={"WWW-Authenticate": "Bearer"})


def starlette_endpoint(api: Api, ep: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint of ``ep``: authentication and the error body around its
    handler."""

    async def endpoint(request: Request) -> Response:
        try:
            if ep.handler is not None:
                return await ep.handler(api, request, authenticate(api, request))
            assert ep.public is not None
            return await ep.public(api, request)
        except ApiError as exc:
            return exc.response()

    return endpoint
