"""Tenant isolation: a customer trying every endpoint on another customer's objects gets
404 every time, and nothing of the other's changes."""

from __future__ import annotations

import time
from typing import Any

from engine.storage import Binding
from sip.uri import URI
from tests.web.conftest import WebServer


async def _snapshot(web: WebServer, customer_id: int) -> dict[str, Any]:
    tables = ("sip_accounts", "dialplans", "providers", "kv", "traces", "cdrs", "webcallback_keys")
    snap: dict[str, Any] = {t: web.store.query_all(f"SELECT * FROM {t} WHERE customer_id = ? ORDER BY 1",
                                                   (customer_id,)) for t in tables}
    snap["customer"] = web.store.query_all("SELECT * FROM customers WHERE id = ?", (customer_id,))
    snap["bindings"] = [b.id for b in web.store.load_bindings()]
    snap["calls"] = await web.calls.active_calls(customer_id)
    return snap


async def test_a_customer_gets_404_for_everything_of_another_and_nothing_changes(web: WebServer) -> None:
    alice = web.add_customer("alice", email="alice@example.com")
    bob = web.add_customer("bob")
    a_token, b_token = await web.login("alice"), await web.login("bob")
    async with web.client(a_token) as a:
        account = (await a.post("/api/v1/sip-accounts", json={"user": "1001", "password": "secret1"})).json()
        assert (await a.put("/api/v1/dialplans/secret-plan", json={"source": "x = 1\n"})).status_code == 201
        provider = (await a.post("/api/v1/providers", json={"name": "trunk", "server": "sip.example.com"})).json()
        assert (await a.put("/api/v1/kv/pin", json={"value": "1234"})).status_code == 201
    await web.store.write(lambda conn: conn.execute(
        "INSERT INTO traces (id, customer_id, call_id, dialplan, created, text) VALUES ('ta', ?, 'c', 'd', 1, 'x')",
        (alice.id,)))
    await web.store.write(lambda conn: conn.execute(
        "INSERT INTO cdrs (id, customer_id, call_id, direction, leg, from_uri, to_uri, created) "
        "VALUES ('ca', ?, 'c', 'in', 'caller', 'sip:a@x', 'sip:b@x', 1)", (alice.id,)))
    now = time.time()
    await web.store.save_bindings([Binding(
        id="ba", account_id=account["id"], aor="1001@local", contact=URI.parse("sip:1001@192.0.2.1"),
        contact_params=(), received=("192.0.2.1", 5060), transport="UDP", local=("127.0.0.1", 5060),
        expires_at=now + 600, call_id="r", cseq=1, user_agent=None, registered_at=now)])
    await web.registrar.load(now)
    web.calls.calls["call-a"] = {"id": "call-a", "customer_id": alice.id}
    before = await _snapshot(web, alice.id)

    attempts: list[tuple[str, str, dict[str, Any] | None]] = []
    ids = [account["id"], provider["id"]]
    for n in range(1, max(ids) + 3):  # ids guessed in sequence, Alice's among them
        attempts += [
            ("GET", f"/api/v1/sip-accounts/{n}", None),
            ("PATCH", f"/api/v1/sip-accounts/{n}", {"disabled": True, "password": "hijacked"}),
            ("DELETE", f"/api/v1/sip-accounts/{n}", None),
            ("GET", f"/api/v1/providers/{n}", None),
            ("PATCH", f"/api/v1/providers/{n}", {"server": "evil.example"}),
            ("DELETE", f"/api/v1/providers/{n}", None),
        ]
    q = f"?customer_id={alice.id}"
    attempts += [
        ("GET", "/api/v1/dialplans/secret-plan", None),
        ("DELETE", "/api/v1/dialplans/secret-plan", None),
        ("GET", f"/api/v1/dialplans/secret-plan{q}", None),
        ("PUT", f"/api/v1/dialplans/secret-plan{q}", {"source": "x = 2\n"}),
        ("PUT", "/api/v1/dialplans/secret-plan", {"source": "x = 2\n", "customer_id": alice.id}),
        ("DELETE", f"/api/v1/dialplans/secret-plan{q}", None),
        ("POST", "/api/v1/dialplans", {"name": "planted", "source": "x = 1\n", "customer_id": alice.id}),
        ("POST", "/api/v1/sip-accounts", {"user": "planted", "password": "secret1", "customer_id": alice.id}),
        ("POST", "/api/v1/providers", {"name": "planted", "server": "x.example", "customer_id": alice.id}),
        ("GET", "/api/v1/kv/pin", None),
        ("DELETE", "/api/v1/kv/pin", None),
        ("GET", f"/api/v1/kv/pin{q}", None),
        ("PUT", f"/api/v1/kv/pin{q}", {"value": "0000"}),
        ("DELETE", f"/api/v1/kv/pin{q}", None),
        ("GET", "/api/v1/traces/ta", None),
        ("GET", "/api/v1/cdrs/ca", None),
        ("DELETE", "/api/v1/bindings/ba", None),
        ("DELETE", "/api/v1/calls/call-a", None),
        ("GET", f"/api/v1/customer{q}", None),
        ("PATCH", f"/api/v1/customer{q}", {"email": "bob@evil.example"}),
        ("GET", f"/api/v1/customer/webcallback-key{q}", None),
        ("POST", f"/api/v1/customer/webcallback-key{q}", None),
        ("GET", "/api/v1/customers", None),
    ]
    for path in ("sip-accounts", "dialplans", "providers", "bindings", "calls", "cdrs", "traces", "kv", "events"):
        attempts.append(("GET", f"/api/v1/{path}{q}", None))

    async with web.client(b_token) as b:
        for method, path, body in attempts:
            response = await b.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.status_code, response.text)
            assert response.json()["error"]["code"] == "not_found"
        # Bob's unfiltered lists show nothing of Alice's.
        for path in ("sip-accounts", "dialplans", "providers", "bindings", "calls", "cdrs", "traces", "kv"):
            listing = (await b.get(f"/api/v1/{path}")).json()
            assert listing["items"] == [] and listing["total"] == 0, path
        # Bob writing a key of the same name makes his own key, not Alice's.
        assert (await b.put("/api/v1/kv/pin", json={"value": "bob"})).status_code == 201

    assert await _snapshot(web, alice.id) == before
    assert web.store.query_all("SELECT COUNT(*) FROM customers")[0][0] == 2
    assert bob.id != alice.id
