"""The /api/v1 resources as a customer and as an admin sees them."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from engine.storage import Binding
from engine.web import WebConfig
from sip.uri import URI
from tests.web.conftest import PASSWORD, ServerOptions, WebServer, start_web


async def test_sign_up_creates_customer_account_and_default_dialplan(web: WebServer) -> None:
    async with web.client() as client:
        r = await client.post("/api/v1/customer", json={"username": "carol", "password": "long enough pw",
                                                        "email": "carol@example.com"})
        assert r.status_code == 201, r.text
        assert r.json()["sip_account"] == "carol@local" and len(r.json()["sip_password"]) >= 12
        again = await client.post("/api/v1/customer", json={"username": "CAROL", "password": "long enough pw"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
        same_mail = await client.post("/api/v1/customer", json={"username": "dave", "password": "long enough pw",
                                                                "email": "Carol@example.com"})
        assert same_mail.status_code == 409 and "e-mail" in same_mail.json()["error"]["message"]
        short = await client.post("/api/v1/customer", json={"username": "erin", "password": "short"})
        assert short.status_code == 422
    token = await web.login("carol", "long enough pw")
    async with web.client(token) as client:
        accounts = (await client.get("/api/v1/sip-accounts")).json()
        assert [a["aor"] for a in accounts["items"]] == ["carol@local"]
        assert accounts["items"][0]["out_dialplan"] == "default"
        default = (await client.get("/api/v1/dialplans/default")).json()
        assert "sys.Dial" in default["source"]
        key = (await client.get("/api/v1/customer/webcallback-key")).json()
        assert len(key["key"]) >= 32 and "/webcallback/carol?number=" in key["url"]
    # The new account is in the SIP directory at once.
    assert web.store.directory(force=True).account("carol", "local") is not None


async def test_sign_up_is_rate_limited_per_address(web: WebServer) -> None:
    async with web.client() as client:
        for n in range(5):
            r = await client.post("/api/v1/customer", json={"username": f"user{n}", "password": "long enough pw"})
            assert r.status_code == 201
        r = await client.post("/api/v1/customer", json={"username": "user9", "password": "long enough pw"})
        assert r.status_code == 429 and "retry-after" in r.headers


async def test_sip_account_crud_and_validation(web: WebServer) -> None:
    web.add_customer("alice")
    async with web.client(await web.login("alice")) as client:
        bad = await client.post("/api/v1/sip-accounts", json={"user": "a b", "domain": "nowhere.example",
                                                              "password": "x", "colour": "red"})
        assert bad.status_code == 422
        fields = {d["field"] for d in bad.json()["error"]["details"]}
        assert {"colour", "user", "password"} <= fields
        created = await client.post("/api/v1/sip-accounts", json={"user": "1001", "password": "secret1",
                                                                  "keepalive": True})
        assert created.status_code == 201
        account = created.json()
        assert account["aor"] == "1001@local" and account["keepalive"] is True
        assert "ha1_md5" not in account
        dup = await client.post("/api/v1/sip-accounts", json={"user": "1001", "password": "secret1"})
        assert dup.status_code == 409
        patched = await client.patch(f"/api/v1/sip-accounts/{account['id']}",
                                     json={"disabled": True, "password": "another1"})
        assert patched.json()["disabled"] is True
        stored = web.store.directory(force=True).account("1001", "local")
        assert stored is not None and stored.disabled
        page = (await client.get("/api/v1/sip-accounts", params={"user": "1001"})).json()
        assert page["total"] == 1 and page["limit"] == 50 and page["offset"] == 0
        assert (await client.delete(f"/api/v1/sip-accounts/{account['id']}")).status_code == 204
        assert (await client.get(f"/api/v1/sip-accounts/{account['id']}")).status_code == 404


async def test_dialplan_that_does_not_compile_is_refused_with_its_line_and_column(web: WebServer) -> None:
    web.add_customer("alice")
    async with web.client(await web.login("alice")) as client:
        r = await client.put("/api/v1/dialplans/main", json={"source": "x = 1\nimport os\n"})
        assert r.status_code == 422
        error = r.json()["error"]
        assert error["code"] == "compile_error"
        assert error["details"][0]["line"] == 2 and "column" in error["details"][0]
        assert (await client.get("/api/v1/dialplans/main")).status_code == 404
        ok = await client.put("/api/v1/dialplans/main", json={
            "source": 'sys.Log("hi")\n', "trace_email": "me@example.com", "limits": {"cpu_seconds": 0.5}})
        assert ok.status_code == 201, ok.text
        assert ok.json()["limits"] == {"cpu_seconds": 0.5}
        too_high = await client.put("/api/v1/dialplans/main", json={"limits": {"cpu_seconds": 50}})
        assert too_high.status_code == 422
        replaced = await client.put("/api/v1/dialplans/main", json={"source": 'sys.Log("bye")\n'})
        assert replaced.status_code == 200
        assert replaced.json()["trace_email"] == "me@example.com"  # kept when not given
        assert web.store.dialplan_source(1, "main") == 'sys.Log("bye")\n'
        dup = await client.post("/api/v1/dialplans", json={"name": "main", "source": "x = 1\n"})
        assert dup.status_code == 409
        listing = (await client.get("/api/v1/dialplans")).json()
        assert [d["name"] for d in listing["items"]] == ["main"] and "source" not in listing["items"][0]
        # A dialplan an account uses cannot be deleted.
        await client.post("/api/v1/sip-accounts", json={"user": "1001", "password": "secret1",
                                                        "in_dialplan": "main"})
        busy = await client.delete("/api/v1/dialplans/main")
        assert busy.status_code == 409 and "1001@local" in busy.json()["error"]["message"]


async def test_providers_validate_registration_fields_and_hide_the_password(web: WebServer) -> None:
    web.add_customer("alice")
    async with web.client(await web.login("alice")) as client:
        bad = await client.post("/api/v1/providers", json={"name": "trunk", "server": "sip.example.com",
                                                           "register_expiry": 30})
        assert bad.status_code == 422
        assert bad.json()["error"]["details"][0]["field"] == "register_expiry"
        r = await client.post("/api/v1/providers", json={
            "name": "trunk", "server": "sip.example.com:5070", "username": "u", "password": "p",
            "register": True, "register_contact": "sip:me@203.0.113.1", "register_expiry": 600,
            "headers": [["X-Account", "77"]]})
        assert r.status_code == 201, r.text
        provider = r.json()
        assert provider["has_password"] is True and "password" not in provider
        assert provider["register"] is True and provider["register_expiry"] == 600
        changed = await client.patch(f"/api/v1/providers/{provider['id']}", json={"register": False})
        assert changed.json()["register"] is False and changed.json()["username"] == "u"
        assert (await client.delete(f"/api/v1/providers/{provider['id']}")).status_code == 204


async def _bind(web: WebServer, user: str, ident: str) -> None:
    account = web.store.directory(force=True).account(user, "local")
    assert account is not None
    now = time.time()
    await web.store.save_bindings([Binding(
        id=ident, account_id=account.id, aor=account.aor, contact=URI.parse(f"sip:{user}@192.0.2.1:5060"),
        contact_params=(), received=("192.0.2.1", 5060), transport="UDP", local=("127.0.0.1", 5060),
        expires_at=now + 600, call_id="c1", cseq=1, user_agent="phone", registered_at=now)])
    await web.registrar.load(now)


async def test_bindings_list_and_remove(web: WebServer) -> None:
    web.add_customer("alice")
    web.store.add_account("1001", "local", customer="alice", password="x", now=time.time())
    await _bind(web, "1001", "b1")
    async with web.client(await web.login("alice")) as client:
        listing = (await client.get("/api/v1/bindings")).json()
        assert [b["id"] for b in listing["items"]] == ["b1"]
        assert listing["items"][0]["received"] == "192.0.2.1:5060"
        assert (await client.delete("/api/v1/bindings/b1")).status_code == 204
        assert (await client.get("/api/v1/bindings")).json()["items"] == []
    assert web.registrar.lookup("1001@local") == []
    assert web.store.load_bindings() == []


async def test_calls_list_and_hang_up_cdrs_traces_and_kv(web: WebServer) -> None:
    alice = web.add_customer("alice")
    web.calls.calls["call-1"] = {"id": "call-1", "customer_id": alice.id, "from": "sip:1001@local"}
    await web.store.write(lambda conn: conn.executemany(
        "INSERT INTO traces (id, customer_id, call_id, dialplan, created, text) VALUES (?, ?, ?, ?, ?, ?)",
        [(f"t{n}", alice.id, f"c{n}", "default", 1000.0 + n, f"line {n}") for n in range(3)]))
    await web.store.write(lambda conn: conn.execute(
        "INSERT INTO cdrs (id, customer_id, call_id, direction, leg, from_uri, to_uri, created, status) "
        "VALUES ('cdr1', ?, 'c1', 'out', 'caller', 'sip:a@local', 'sip:b@local', 1000, 200)", (alice.id,)))
    async with web.client(await web.login("alice")) as client:
        assert [c["id"] for c in (await client.get("/api/v1/calls")).json()["items"]] == ["call-1"]
        assert (await client.delete("/api/v1/calls/call-1")).status_code == 204
        assert web.calls.hung_up == ["call-1"]
        assert (await client.delete("/api/v1/calls/call-1")).status_code == 404
        traces = (await client.get("/api/v1/traces", params={"limit": 2})).json()
        assert [t["id"] for t in traces["items"]] == ["t2", "t1"] and traces["total"] == 3
        assert "text" not in traces["items"][0]
        assert (await client.get("/api/v1/traces", params={"offset": 2})).json()["items"][0]["id"] == "t0"
        assert (await client.get("/api/v1/traces/t1")).json()["text"] == "line 1"
        cdrs = (await client.get("/api/v1/cdrs", params={"direction": "out", "since": 999})).json()
        assert [c["id"] for c in cdrs["items"]] == ["cdr1"]
        assert (await client.get("/api/v1/cdrs", params={"since": 1001})).json()["total"] == 0
        assert (await client.get("/api/v1/cdrs", params={"limit": 0})).status_code == 422
        put = await client.put("/api/v1/kv/block:555", json={"value": "1"})
        assert put.status_code == 201
        assert (await client.put("/api/v1/kv/block:555", json={"value": "2"})).status_code == 200
        assert (await client.get("/api/v1/kv/block:555")).json()["value"] == "2"
        assert (await client.get("/api/v1/kv", params={"prefix": "block:"})).json()["total"] == 1
        assert (await client.delete("/api/v1/kv/block:555")).status_code == 204
        assert (await client.get("/api/v1/kv/block:555")).status_code == 404
        # What sys.DBWrite refuses, the API refuses too: CR, LF and NUL.
        for key, value, field in (("a%00b", "1", "key"), ("ab", "line\r\nbreak", "value")):
            refused = await client.put(f"/api/v1/kv/{key}", json={"value": value})
            assert refused.status_code == 422
            assert refused.json()["error"]["message"] == f"{field}: must not contain CR, LF or NUL"
        assert (await client.get("/api/v1/kv")).json()["total"] == 0


async def test_admin_sees_and_manages_everyone(web: WebServer) -> None:
    web.add_customer("root", admin=True)
    alice = web.add_customer("alice")
    web.store.add_account("1001", "local", customer="alice", password="x", now=time.time())
    async with web.client(await web.login("root")) as client:
        everyone = (await client.get("/api/v1/customers")).json()
        assert {c["name"] for c in everyone["items"]} == {"root", "alice"}
        accounts = (await client.get("/api/v1/sip-accounts", params={"customer_id": alice.id})).json()
        assert [a["aor"] for a in accounts["items"]] == ["1001@local"]
        made = await client.put("/api/v1/dialplans/for-alice", params={"customer_id": alice.id},
                                json={"source": "x = 1\n"})
        assert made.status_code == 201 and made.json()["customer_id"] == alice.id
        assert (await client.delete(f"/api/v1/sip-accounts/{accounts['items'][0]['id']}")).status_code == 204
    async with web.client(await web.login("alice")) as client:
        assert (await client.get("/api/v1/customers")).status_code == 404
        assert (await client.get("/api/v1/dialplans/for-alice")).status_code == 200


async def test_unknown_paths_and_methods_get_json_errors_and_openapi_lists_every_route(web: WebServer) -> None:
    async with web.client() as client:
        missing = await client.get("/api/v1/nothing-here")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        wrong = await client.put("/api/v1/login")
        assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
        spec = (await client.get("/api/v1/openapi.json")).json()
        assert spec["openapi"].startswith("3.1")
        assert set(spec["paths"]["/api/v1/kv/{key}"]) == {"get", "put", "delete"}
        assert spec["paths"]["/api/v1/dialplans/{name}"]["put"]["security"]
        health = (await client.get("/healthz")).json()
        assert health["status"] == "ok" and health["version"] == "test"


async def test_signup_switched_off_is_refused(tmp_path: Path) -> None:
    async with start_web(tmp_path, ServerOptions(config=WebConfig(signup_enabled=False))) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            r = await client.post("/api/v1/customer", json={"username": "x1", "password": PASSWORD})
            assert r.status_code == 403 and r.json()["error"]["code"] == "signup_disabled"
        assert server.store.customer_by_name("x1") is None
