"""The live console on a real server: a sys.Log line of a real call's dialplan reaches
the owner's SSE stream within 100 ms of the call, and no other customer's stream."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import trio

from engine.softphone import SoftPhone
from tests.engine.test_samples_live import phone, provision, running_server
from tests.web.test_console_webcallback import EventStream

DIALPLAN = 'sys.Log("console sees %s" % req.URI.User)\nsys.Respond(486, "Busy here")\n'


async def _login(url: str, user: str) -> str:
    async with httpx.AsyncClient(base_url=url) as client:
        answer = await client.post("/api/v1/login", json={"username": user, "password": "pw"})
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


async def test_a_dialplan_log_line_reaches_the_console_within_100_ms(tmp_path: Path) -> None:
    async with running_server(tmp_path) as (server, nursery):
        assert server.http_address is not None
        provision(server, "acme", {"alice": (None, "out")}, {})
        provision(server, "other", {"olga": (None, None)}, {})
        owner = server.store.customer_by_name("acme")
        assert owner is not None
        server.store.put_dialplan(owner.id, "out", DIALPLAN, now=time.time())
        mine = await EventStream.open(server.http_address, await _login(server.http_address, "acme"),
                                      "?types=dialplan")
        theirs = await EventStream.open(server.http_address, await _login(server.http_address, "other"),
                                        "?types=dialplan")
        try:
            alice = await phone(nursery, server, "alice")
            started = trio.current_time()
            nursery.start_soon(_call_and_ignore, alice)
            with trio.fail_after(5):
                while True:
                    event = (await mine.events(1))[0]
                    if event.get("line"):
                        break
            elapsed = trio.current_time() - started
            assert event["line"] == "console sees 5551234"
            assert elapsed < 0.1, f"{elapsed * 1000:.1f} ms"
            # The other customer's stream got nothing of it.
            with trio.move_on_after(0.3):
                await theirs.events(1)
                raise AssertionError("another customer's console saw the line")
        finally:
            await mine.aclose()
            await theirs.aclose()


async def _call_and_ignore(alice: SoftPhone) -> None:
    try:
        await alice.call("5551234")
    except Exception:  # the dialplan answers 486: the phone reports a failed call
        pass
