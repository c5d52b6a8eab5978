"""The HTTP side (ASGI on Starlette, served by hypercorn's trio worker in the SIP process).

Starlette rather than FastAPI: it is the small ASGI toolkit both are built on, runs on
trio through anyio, and keeps the dependency list short; request validation is done by
hand where the API needs it.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def build_http_app(*, statistics: Callable[[], dict[str, int]], version: str) -> Starlette:
    """The ASGI application.  ``statistics`` reports live counters for /healthz."""

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": version, "sip": statistics()})

    return Starlette(routes=[Route("/healthz", healthz)])
