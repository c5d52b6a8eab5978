"""Every endpoint against hostile input: whatever the path, query or body, the answer is
never a 5xx, and a refusal is the API's JSON error with a message.

The inputs are drawn from a fixed seed, so a failure names a request that fails again:
path values SQLite cannot store or compare, control characters, wrong JSON types,
numbers too big for any column, NaN, bodies that are not JSON or not UTF-8."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import httpx
import pytest

from engine.web.routes import ENDPOINTS, Endpoint
from tests.web.conftest import PASSWORD, WebServer

SEED = 20261127
REQUESTS_PER_ENDPOINT = 60

PATH_VALUES = ["0", "-1", "1", "2", "99999999999999999999999", "9223372036854775808", "abc", "%00", "%0D%0A",
               "a" * 300, "%F0%9F%98%80", "..%2F..", "1e3", "%20", "default", "alice"]
QUERY_VALUES = ["", "-1", "0", "1", "abc", "1e400", "nan", "inf", "99999999999999999999999", "\x00", "a\r\nb",
                "yes", "true", "x" * 2000]
JSON_VALUES: list[Any] = [None, True, False, 0, -1, 2**70, -(2**70), 1.5, "", "x" * 5000, "\x00", "a\r\nb",
                          "sip:bob@example.com", "127.0.0.1:5060", [], {}, ["a", 1], {"a": {"b": []}}, "default",
                          "s3cret-Pw-123"]
RAW_BODIES = [b"", b"null", b"[]", b"{}", b"notjson", b"\xff\xfe{}", b'{"a":', b"NaN", b'{"value": NaN}',
              b"[" * 5000 + b"]" * 5000]


def _path(endpoint: Endpoint, rng: random.Random) -> str:
    return re.sub(r"\{\w+(?::\w+)?\}", lambda _: rng.choice(PATH_VALUES), endpoint.path)


def _query(endpoint: Endpoint, rng: random.Random) -> dict[str, str]:
    names = [*endpoint.query, "limit", "offset", "since", "until"]
    return {name: rng.choice(QUERY_VALUES) for name in rng.sample(names, k=rng.randint(0, len(names)))}


def _body(endpoint: Endpoint, rng: random.Random) -> bytes:
    if rng.random() < 0.25:
        return rng.choice(RAW_BODIES)
    names = [*endpoint.body, "unknown_field"]
    chosen = rng.sample(names, k=rng.randint(0, len(names)))
    return json.dumps({name: rng.choice(JSON_VALUES) for name in chosen}).encode()


def _is_api_error(response: httpx.Response) -> bool:
    if response.headers.get("content-type", "").startswith("text/plain"):
        return bool(response.text.strip())  # the webcallback URL answers people, in words
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error.get("code"), str) and isinstance(error.get("message"), str) and bool(error["message"])


@pytest.mark.parametrize("admin", [False, True], ids=["customer", "admin"])
async def test_no_input_makes_any_endpoint_fail_with_a_5xx(web: WebServer, admin: bool) -> None:
    web.add_customer("fuzz", admin=admin)
    web.add_customer("other")
    token = await web.login("fuzz")
    rng = random.Random(SEED + admin)
    failures: list[str] = []
    async with web.client(token) as client:
        for endpoint in ENDPOINTS:
            if endpoint.path.endswith("/events"):
                continue  # a stream that stays open: tests/web/test_console_live.py
            for _ in range(REQUESTS_PER_ENDPOINT):
                path = _path(endpoint, rng)
                params = _query(endpoint, rng)
                body = _body(endpoint, rng) if endpoint.method in ("POST", "PUT", "PATCH") else b""
                response = await client.request(endpoint.method, path, params=params, content=body,
                                                headers={"Content-Type": "application/json"})
                if response.status_code == 401 and endpoint.auth == "session":
                    # A draw ended the session (logout): a new one, unless the login
                    # throttle, which the draws' failed logins feed, says wait.
                    again = await client.post("/api/v1/login", json={"username": "fuzz", "password": PASSWORD})
                    if again.status_code == 200:
                        client.headers["Authorization"] = f"Bearer {again.json()['token']}"
                what = f"{endpoint.method} {path} {params} {body[:120]!r} -> {response.status_code}"
                if response.status_code >= 500:
                    failures.append(f"{what}: {response.text[:200]}")
                elif response.status_code >= 400 and not _is_api_error(response):
                    failures.append(f"{what}: not an API error: {response.text[:200]}")
    assert not failures, "\n".join(failures[:20])
