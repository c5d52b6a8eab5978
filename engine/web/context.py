"""What every handler gets: the services, the repository, the limiters, the caller, and
the helpers that read a request (JSON body, paging, owner scope) the same way everywhere."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from engine.storage import Customer, hash_password
from engine.web.errors import ApiError, invalid, not_found
from engine.web.ratelimit import SlidingWindow
from engine.web.repository import Filter, Page, WebRepository
from engine.web.services import WebServices

MAX_BODY = 256 * 1024
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """The authenticated caller: whose session, and the token that proved it."""

    customer: Customer
    token: str
    expires_at: float
    created: float


class Api:
    """Shared state of one app: services, repository, rate limiters, the clock."""

    def __init__(self, services: WebServices) -> None:
        self.services = services
        self.config = services.config
        self.repo = WebRepository(services.store)
        cfg = services.config
        self.login_by_account = SlidingWindow(limit=cfg.login_failures_per_account,
                                              window=cfg.login_window_seconds)
        self.login_by_source = SlidingWindow(limit=cfg.login_failures_per_source,
                                             window=cfg.login_window_seconds)
        self.signups = SlidingWindow(limit=cfg.signup_per_hour, window=3600.0)
        self.webcallbacks = SlidingWindow(limit=cfg.webcallbacks_per_minute, window=60.0)
        self._clock = services.wall_clock or time.time
        #: checked against for unknown user names, so they cost as much as known ones
        self.dummy_hash = hash_password("not a password")

    def now(self) -> float:
        return self._clock()

    # -- scope --------------------------------------------------------------------------
    def owner_filter(self, who: Principal, request: Request) -> int | None:
        """Whose rows a list shows: the caller's; an admin's choice (``customer_id``) or
        everyone's.  A non-admin naming another customer gets 404."""
        wanted = _int_param(request, "customer_id")
        if who.customer.admin:
            return wanted
        if wanted is not None and wanted != who.customer.id:
            raise not_found("customer")
        return who.customer.id

    def target_owner(self, who: Principal, request: Request, body: dict[str, Any] | None = None) -> int:
        """The one customer an operation acts for: the caller, or for an admin the
        ``customer_id`` given (query or body), which must exist."""
        wanted = _int_param(request, "customer_id")
        if wanted is None and body is not None and body.get("customer_id") is not None:
            value = body.get("customer_id")
            if not isinstance(value, int) or isinstance(value, bool):
                raise invalid("customer_id", "must be an integer")
            if abs(value) > SQLITE_MAX_INT:
                raise invalid("customer_id", f"must be at most {SQLITE_MAX_INT}")
            wanted = value
        if wanted is None or wanted == who.customer.id:
            return who.customer.id
        if not who.customer.admin or self.repo.customer(wanted) is None:
            raise not_found("customer")
        return wanted

    @staticmethod
    def visible(who: Principal, row: dict[str, Any] | None, what: str) -> dict[str, Any]:
        """``row`` if the caller may see it, else 404 (absent and foreign look alike)."""
        if row is None or (not who.customer.admin and row.get("customer_id") != who.customer.id):
            raise not_found(what)
        return row


Handler = Callable[[Api, Request, Principal], Awaitable[Response]]
PublicHandler = Callable[[Api, Request], Awaitable[Response]]


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259 6), though Python's parser takes them."""
    raise ValueError(f"{name} is not a JSON value")


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, or 400/413 with a clear error."""
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, "too_large", f"the body is larger than {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ApiError(400, "bad_json", "the body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    return body


class Fields:
    """Reads and checks a JSON body's fields, collecting every problem into one 422."""

    def __init__(self, body: dict[str, Any], allowed: tuple[str, ...]) -> None:
        self.body = body
        self.problems: list[dict[str, Any]] = [
            {"field": name, "message": "unknown field"} for name in body if name not in allowed]

    def _bad(self, name: str, message: str) -> None:
        self.problems.append({"field": name, "message": message})

    def has(self, name: str) -> bool:
        return name in self.body

    def text(self, name: str, *, required: bool = False, max_len: int = 256,
             pattern: re.Pattern[str] | None = None, nullable: bool = False) -> str | None:
        value = self.body.get(name)
        if value is None:
            if required:
                self._bad(name, "is required")
            elif name in self.body and not nullable:
                self._bad(name, "cannot be null")
            return None
        if not isinstance(value, str):
            self._bad(name, "must be a string")
            return None
        if required and not value:
            self._bad(name, "cannot be empty")
        elif len(value) > max_len:
            self._bad(name, f"must be at most {max_len} characters")
        elif pattern is not None and not pattern.match(value):
            self._bad(name, f"must match {pattern.pattern}")
        return value

    def flag(self, name: str) -> bool | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, bool):
            self._bad(name, "must be true or false")
            return None
        return value

    def integer(self, name: str, *, low: int, high: int) -> int | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            self._bad(name, f"must be an integer from {low} to {high}")
            return None
        return value

    def raw(self, name: str) -> Any:
        return self.body.get(name)

    def problem(self, name: str, message: str) -> None:
        self._bad(name, message)

    def check(self) -> None:
        """Raise the 422 if anything was wrong."""
        if self.problems:
            first = self.problems[0]
            raise ApiError(422, "invalid", f"{first['field']}: {first['message']}", self.problems)


#: The largest integer SQLite stores; a bigger one cannot even be compared in a query.
SQLITE_MAX_INT = 2**63 - 1


def _int_param(request: Request, name: str) -> int | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise invalid(name, "must be an integer") from None
    if abs(value) > SQLITE_MAX_INT:
        raise invalid(name, f"must be at most {SQLITE_MAX_INT}")
    return value


def float_param(request: Request, name: str) -> float | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise invalid(name, "must be a number (Unix time)") from None
    if not math.isfinite(value):
        raise invalid(name, "must be a number (Unix time)")
    return value


def paging(request: Request) -> tuple[int, int]:
    """(limit, offset) from ``?limit=&offset=`` (default 50, at most 500)."""
    limit = _int_param(request, "limit")
    offset = _int_param(request, "offset")
    limit = DEFAULT_LIMIT if limit is None else limit
    offset = 0 if offset is None else offset
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid("limit", f"must be from 1 to {MAX_LIMIT}")
    if offset < 0:
        raise invalid("offset", "cannot be negative")
    return limit, offset


def page_json(page: Page, limit: int, offset: int) -> dict[str, Any]:
    return {"items": page.items, "total": page.total, "limit": limit, "offset": offset}


def equal_filters(request: Request, where: Filter, names: tuple[str, ...]) -> Filter:
    """Add ``column = ?`` for each of ``names`` given as a query parameter."""
    for name in names:
        value = request.query_params.get(name)
        if value is not None and value != "":
            where = where.add(f"{name} = ?", value)
    return where


def time_filters(request: Request, where: Filter, column: str = "created") -> Filter:
    since = float_param(request, "since")
    until = float_param(request, "until")
    if since is not None:
        where = where.add(f"{column} >= ?", since)
    if until is not None:
        where = where.add(f"{column} < ?", until)
    return where
