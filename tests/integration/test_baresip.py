"""A real phone (baresip) registers and keeps its registration fresh."""

from __future__ import annotations

import time
from pathlib import Path

import trio

from tests.integration.conftest import running_server
from tests.integration.phones import Baresip


async def test_baresip_registers_and_refreshes_twice(tmp_path: Path) -> None:
    # Short expiries so that two refreshes happen within seconds.
    async with running_server(tmp_path / "data", min_expires=5, default_expires=5) as server:
        now = time.time()
        server.store.add_customer("acme", "console-pw", now=now)
        server.store.add_account("alice", "local", customer="acme", password="alice-pw", now=now)
        assert server.sip_address is not None
        with server.events.subscribe(None, types=["registrar"]) as events:
            phone = Baresip(tmp_path, user="alice", password="alice-pw", server=server.sip_address,
                            regint=6)
            async with trio.open_nursery() as nursery:
                await phone.start(nursery)
                try:
                    registrations = await phone.wait_event("REGISTER_OK", count=3, limit=30)
                    assert all(e.get("accountaor", "").startswith("sip:alice@") for e in registrations)
                    now = time.time()
                    (binding,) = server.registrar.lookup("alice@127.0.0.1", now)
                    assert binding.received == ("127.0.0.1", phone.sip_port)
                    assert binding.expires_at > now
                    assert binding.user_agent is not None and "baresip" in binding.user_agent.lower()
                finally:
                    await phone.stop()
                    nursery.cancel_scope.cancel()
            seen = []
            while (event := events.receive_nowait()) is not None:
                seen.append(event.data.get("kind"))
    # The registrar saw one registration and at least two refreshes of the same binding.
    assert seen[0] == "registered"
    assert seen.count("refreshed") >= 2, seen
