"""Callbacks with clients nobody on this team wrote: sys.Callback bridges two registered
baresip phones from a web callback URL, and a SIPp caller waiting in
sys.GoogleVoiceCall is bridged to the call that comes back."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import trio

from engine.server import Server
from tests.callbacks.test_google_voice import DIALPLAN as VOICE_DIALPLAN
from tests.callbacks.test_google_voice import call_back, fake_voice_service
from tests.callbacks.ua import PASSWORD, provision, running_server, user_agents
from tests.calls.sipp import uac
from tests.conftest import require_tool
from tests.integration.phones import Baresip

CLICK_TO_CALL = 'sys.Callback("alice@local", "bob@local")\n'


async def _registered(server: Server, *aors: str) -> None:
    # REGISTER_OK may come before our ctrl_tcp connection: ask the registrar instead.
    with trio.fail_after(10):
        while True:
            if all(server.registrar.lookup(aor, time.time()) for aor in aors):
                return
            await trio.sleep(0.05)


async def _web_callback(server: Server, customer: str, number: str) -> httpx.Response:
    assert server.http_address is not None
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=server.http_address) as client:
            login = await client.post("/api/v1/login", json={"username": customer, "password": PASSWORD})
            token = login.json()["token"]
            key = (await client.get("/api/v1/customer/webcallback-key",
                                    headers={"Authorization": f"Bearer {token}"})).json()["key"]
            return await client.get(f"/webcallback/{customer}", params={"number": number, "key": key})


async def test_web_callback_bridges_two_baresip_phones(tmp_path: Path) -> None:
    with trio.fail_after(45):
        async with running_server(tmp_path) as server:
            # The web callback URL runs the webcallback dialplan of the account named as the customer.
            provision(server, "acme", {"acme": (None, None), "alice": (None, None), "bob": (None, None)},
                      {"webcallback": CLICK_TO_CALL})
            assert server.sip_address is not None
            alice = Baresip(tmp_path, user="alice", password=PASSWORD, server=server.sip_address)
            bob = Baresip(tmp_path, user="bob", password=PASSWORD, server=server.sip_address)
            async with trio.open_nursery() as nursery:
                try:
                    await alice.start(nursery)
                    await bob.start(nursery)
                    await _registered(server, "alice@127.0.0.1", "bob@127.0.0.1")

                    page = await _web_callback(server, "acme", "100")
                    assert page.status_code == 200, page.text
                    assert page.text.strip() == "Web call was successfully initiated."

                    # alice is rung first and shown bob as the caller; then bob, shown alice.
                    (first,) = await alice.wait_event("CALL_ESTABLISHED", limit=15)
                    assert first["direction"] == "incoming"
                    assert first["peeruri"].startswith("sip:bob@"), first
                    (second,) = await bob.wait_event("CALL_ESTABLISHED", limit=15)
                    assert second["direction"] == "incoming"
                    assert second["peeruri"].startswith("sip:alice@"), second
                    for phone in (alice, bob):
                        listed = await phone.command("listcalls")
                        assert "ESTABLISHED" in listed["data"], listed

                    # bob hangs up; alice's phone sees the call end.
                    hung = await bob.command("hangup")
                    assert hung["ok"], hung
                    await bob.wait_event("CALL_CLOSED", limit=5)
                    await alice.wait_event("CALL_CLOSED", limit=5)
                    listed = await alice.command("listcalls")
                    assert "ESTABLISHED" not in listed["data"], listed
                finally:
                    await alice.stop()
                    await bob.stop()
                    nursery.cancel_scope.cancel()


async def test_sipp_caller_waiting_in_google_voice_call_is_bridged_to_the_callback(tmp_path: Path) -> None:
    require_tool("sipp")
    with trio.fail_after(45):
        async with fake_voice_service() as service, \
                running_server(tmp_path, google_voice_url=service.url) as server:
            provision(server, "acme", {"sipp": (None, "out"), "gvline": (None, None)},
                      {"out": VOICE_DIALPLAN % 20})
            assert server.sip_address is not None
            # One call: INVITE (with digest) -> 200 -> ACK -> BYE -> 200; exit 0 only if all came.
            caller = await uac(tmp_path, server.sip_address, service="5551234", user="sipp", password=PASSWORD,
                               calls=1, rate=1, extra=["-timeout", "30s"]).start()
            try:
                async with user_agents(server, "pstn", register=False) as (pstn,):
                    with trio.fail_after(10):
                        await service.connected.wait()
                    status, body, _dialog = await call_back(server.sip_address[1], pstn, "gvline")
                    # The callback is answered with SIPp's offer...
                    assert status == 200, status
                    assert b"m=audio " in body and b"RTP/AVP 0" in body
                    # ...SIPp gets the callback's answer, ACKs, and its BYE crosses the bridge.
                    bye, source = await pstn.request("BYE", seconds=15)
                    await pstn.ok(bye, source)
                    assert await caller.wait(within=15) == 0, caller.output()[-2000:]
            finally:
                await caller.stop()
            assert [p for p, _, _ in service.requests] == ["/login", "/connect"]
            assert service.requests[1][1]["destinationNumber"] == "5551234"
            assert service.requests[1][1]["forwardingNumber"] == "gvline"
