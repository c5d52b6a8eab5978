"""The HTTP side (ASGI on Starlette, served by hypercorn's trio worker in the SIP process):
the provisioning API under ``/api/v1``, the live console, webcallback URLs, ``/healthz``.

Starlette rather than FastAPI: it is the small ASGI toolkit both are built on, runs on
trio through anyio, and keeps the dependency list short; request validation is done by
hand (``engine.web.context.Fields``).  Every endpoint is one row of
``engine.web.routes.ENDPOINTS``; docs/api.md documents each.

Build it from the composition root::

    app = build_http_app(WebServices(store=..., events=..., registrar=..., calls=...,
                                     compiler=pool, webcallback=..., statistics=...,
                                     config=WebConfig(...)))

Exceptions: handlers raise :class:`engine.web.errors.ApiError`, turned into a 4xx JSON
body ``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.web.console import WEBCALL_STARTED
from engine.web.services import (
    CallControl,
    CompileChecker,
    WebcallbackRunner,
    WebConfig,
    WebServices,
)

__all__ = ["WEBCALL_STARTED", "CallControl", "CompileChecker", "WebConfig", "WebServices",
           "WebcallbackRunner", "build_http_app"]


def build_http_app(services: WebServices | None = None, *,
                   statistics: Callable[[], Mapping[str, Any]] | None = None,
                   version: str | None = None) -> Starlette:
    """The ASGI application.

    ``build_http_app(services)`` is the full app.  The keyword form
    (``statistics=``, ``version=``) serves ``/healthz`` only; it remains for a
    composition root that has not yet built :class:`WebServices`."""
    if services is None:
        stats = statistics or dict

        async def healthz(request: Request) -> JSONResponse:
            return JSONResponse({"status": "ok", "version": version or "0+unknown", "sip": dict(stats())})

        return Starlette(routes=[Route("/healthz", healthz)])

    from engine.web.context import Api
    from engine.web.routes import ENDPOINTS, starlette_endpoint

    api = Api(services)
    routes = [Route(ep.path, starlette_endpoint(api, ep), methods=[ep.method]) for ep in ENDPOINTS]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail), "details": []}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
