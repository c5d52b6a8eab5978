"""Login, session tokens, extension, logout and the login throttle."""

from __future__ import annotations

import re

from tests.web.conftest import PASSWORD, WebServer


async def test_login_returns_a_96_hex_token_valid_an_hour_with_an_httponly_cookie(web: WebServer) -> None:
    web.add_customer("alice")
    async with web.client() as client:
        response = await client.post("/api/v1/login", json={"username": "alice", "password": PASSWORD})
        assert response.status_code == 200
        body = response.json()
        assert re.fullmatch(r"[0-9a-f]{96}", body["token"])
        assert 3590 < body["expires_at"] - web.clock() <= 3600
        cookie = response.headers["set-cookie"]
        assert f"dialspell_session={body['token']}" in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
        # The cookie alone authenticates a browser.
        me = await client.get("/api/v1/customer")
        assert me.status_code == 200 and me.json()["name"] == "alice"
    async with web.client(body["token"]) as client:
        assert (await client.get("/api/v1/session")).json()["customer"]["name"] == "alice"
    # Only a hash of the token is stored.
    stored = web.store.query_all("SELECT token_hash FROM web_sessions")
    assert len(stored) == 1 and stored[0][0] != body["token"]


async def test_wrong_password_and_missing_token_get_clear_401s(web: WebServer) -> None:
    web.add_customer("alice")
    async with web.client() as client:
        wrong = await client.post("/api/v1/login", json={"username": "alice", "password": "nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "bad_credentials"
        unknown = await client.post("/api/v1/login", json={"username": "nobody", "password": "nope"})
        assert unknown.json() == wrong.json()
        missing = await client.get("/api/v1/sip-accounts")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert "POST /api/v1/login" in missing.json()["error"]["message"]
        bad = await client.post("/api/v1/login", content=b"{not json")
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_json"
        incomplete = await client.post("/api/v1/login", json={"username": "alice"})
        assert incomplete.status_code == 422
        assert incomplete.json()["error"]["details"] == [{"field": "password", "message": "is required"}]
    async with web.client("0" * 96) as client:
        gone = await client.get("/api/v1/customer")
        assert gone.status_code == 401 and "log in again" in gone.json()["error"]["message"]


async def test_sessions_expire_after_60_minutes(web: WebServer) -> None:
    web.add_customer("alice")
    token = await web.login("alice")
    async with web.client(token) as client:
        web.clock.offset = 59 * 60
        assert (await client.get("/api/v1/customer")).status_code == 200
        web.clock.offset = 61 * 60
        assert (await client.get("/api/v1/customer")).status_code == 401


async def test_extend_never_goes_past_600_minutes_after_login(web: WebServer) -> None:
    web.add_customer("alice")
    token = await web.login("alice")
    start = web.clock()
    async with web.client(token) as client:
        extended = await client.post("/api/v1/session/extend", json={"minutes": 120})
        assert extended.status_code == 200
        assert 179 * 60 < extended.json()["expires_at"] - start <= 180 * 60
        capped = await client.post("/api/v1/session/extend", json={"minutes": 600})
        assert 599 * 60 < capped.json()["expires_at"] - start <= 600 * 60
        too_much = await client.post("/api/v1/session/extend", json={"minutes": 601})
        assert too_much.status_code == 422
        web.clock.offset = 599 * 60
        assert (await client.get("/api/v1/customer")).status_code == 200
        web.clock.offset = 601 * 60
        assert (await client.get("/api/v1/customer")).status_code == 401


async def test_logout_ends_the_session_at_once(web: WebServer) -> None:
    web.add_customer("alice")
    token = await web.login("alice")
    other = await web.login("alice")
    async with web.client(token) as client:
        assert (await client.post("/api/v1/logout")).status_code == 204
        assert (await client.get("/api/v1/customer")).status_code == 401
    async with web.client(other) as client:
        assert (await client.get("/api/v1/customer")).status_code == 200


async def test_login_failures_are_throttled_per_account_and_per_source(web: WebServer) -> None:
    web.add_customer("alice")
    web.add_customer("bob")
    async with web.client() as client:
        for _ in range(5):
            r = await client.post("/api/v1/login", json={"username": "alice", "password": "guess"})
            assert r.status_code == 401
        # The right password is refused too while the account is locked.
        locked = await client.post("/api/v1/login", json={"username": "alice", "password": PASSWORD})
        assert locked.status_code == 429
        assert locked.json()["error"]["code"] == "rate_limited"
        assert int(locked.headers["retry-after"]) > 0
        # Another account from the same address still works (the source limit is higher)...
        assert (await client.post("/api/v1/login", json={"username": "bob", "password": PASSWORD})).status_code == 200
        # ... until the source has failed 20 times, whatever the names.
        for n in range(15):
            await client.post("/api/v1/login", json={"username": f"user{n}", "password": "guess"})
        blocked = await client.post("/api/v1/login", json={"username": "bob", "password": PASSWORD})
        assert blocked.status_code == 429
        web.clock.offset = 301
        assert (await client.post("/api/v1/login", json={"username": "alice", "password": PASSWORD})).status_code == 200


async def test_password_change_needs_the_old_one_and_ends_other_sessions(web: WebServer) -> None:
    web.add_customer("alice")
    token = await web.login("alice")
    other = await web.login("alice")
    async with web.client(token) as client:
        wrong = await client.post("/api/v1/customer/password",
                                  json={"old_password": "nope", "new_password": "a new password"})
        assert wrong.status_code == 422
        short = await client.post("/api/v1/customer/password",
                                  json={"old_password": PASSWORD, "new_password": "short"})
        assert short.status_code == 422
        ok = await client.post("/api/v1/customer/password",
                               json={"old_password": PASSWORD, "new_password": "a new password"})
        assert ok.status_code == 204
        assert (await client.get("/api/v1/customer")).status_code == 200
    async with web.client(other) as client:
        assert (await client.get("/api/v1/customer")).status_code == 401
    await web.login("alice", "a new password")
