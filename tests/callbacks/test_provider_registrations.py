"""Provider registrations against a real Kamailio registrar: digest, 200, refresh, a
wrong password, and an INVITE the provider sends to the registered contact reaching the
account chosen by the suffix rule."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from engine.provider_registrations import (
    ProviderRegistrationAgent,
    ProviderRegistrationState,
    RegistrationStatus,
)
from engine.server import Server
from tests.callbacks.kamailio import kamailio_registrar
from tests.callbacks.ua import provision, running_server, sdp, user_agents

pytestmark = pytest.mark.tool("kamailio")

TRUNK_USER = "trunk.bob"  # the suffix rule sends calls for trunk.bob to the account bob
TRUNK_PASSWORD = "trunk-secret"


async def add_provider(server: Server, customer_id: int, name: str, kamailio: tuple[str, int], *,
                       password: str = TRUNK_PASSWORD, expiry: int = 60, register: bool = True) -> int:
    def op(conn: sqlite3.Connection) -> int:
        cursor = conn.execute(
            "INSERT INTO providers (customer_id, name, server, username, password, headers, register, "
            "register_expiry, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (customer_id, name, f"{kamailio[0]}:{kamailio[1]}", TRUNK_USER, password, json.dumps([]),
             int(register), expiry, time.time()),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    return await server.store.write(op)


def agent_for(server: Server, *, refresh_margin: float = 57.0) -> ProviderRegistrationAgent:
    return ProviderRegistrationAgent(
        store=server.store, endpoint=server.endpoint, events=server.events, resolver=None,
        contact_host="127.0.0.1", poll_interval=0.2, refresh_margin=refresh_margin, retry_base=300.0,
    )


async def wait_state(agent: ProviderRegistrationAgent, predicate: Callable[[ProviderRegistrationState], bool],
                     seconds: float = 10.0) -> None:
    # The agent's states are polled: they are what the web API reads too.
    with trio.fail_after(seconds):
        while True:
            if any(predicate(s) for s in agent.states()):
                return
            await trio.sleep(0.05)


async def test_registration_reaches_200_and_refreshes(tmp_path: Path) -> None:
    async with kamailio_registrar(tmp_path, user=TRUNK_USER, password=TRUNK_PASSWORD) as kamailio, \
            running_server(tmp_path) as server:
        owner = provision(server, "acme", {"bob": (None, None)})
        await add_provider(server, owner, "kam", kamailio.address, expiry=60)
        assert server.sip_address is not None
        agent = agent_for(server)
        subscription = server.events.subscribe(owner) if hasattr(server.events, "subscribe") else None
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            await wait_state(agent, lambda s: s.status is RegistrationStatus.REGISTERED)
            first = agent.states()[0]
            assert first.aor == f"sip:{TRUNK_USER}@127.0.0.1"
            assert first.contact == f"sip:{TRUNK_USER}@127.0.0.1:{server.sip_address[1]}"
            assert first.expires_at is not None and 50 < first.expires_at - time.time() <= 60
            # Expiry 60 with a 57 s margin: the refresh goes out about 3 s later.
            await wait_state(agent, lambda s: s.registrations >= 2)
            second = agent.states()[0]
            assert second.status is RegistrationStatus.REGISTERED and second.last_error is None
            assert second.expires_at is not None and second.expires_at > first.expires_at
            accepted = kamailio.registrations()
            assert len(accepted) >= 2, accepted
            assert f"sip:{TRUNK_USER}@127.0.0.1:{server.sip_address[1]}" in accepted[0]
            assert "expires=60" in accepted[0]
            nursery.cancel_scope.cancel()
        if subscription is not None:
            events = []
            while (event := subscription.receive_nowait()) is not None:
                events.append(event)
            assert any(e.type == "registrar" and e.data.get("state") == "registered" for e in events)


async def test_wrong_password_fails_with_the_registrars_answer(tmp_path: Path) -> None:
    async with kamailio_registrar(tmp_path, user=TRUNK_USER, password=TRUNK_PASSWORD) as kamailio, \
            running_server(tmp_path) as server:
        owner = provision(server, "acme")
        await add_provider(server, owner, "kam", kamailio.address, password="not-it")
        agent = agent_for(server)
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            await wait_state(agent, lambda s: s.status is RegistrationStatus.FAILED)
            state = agent.states()[0]
            assert state.last_error is not None and state.last_error.startswith("401")
            assert state.next_attempt is not None and state.next_attempt - time.time() > 250
            assert kamailio.registrations() == []
            nursery.cancel_scope.cancel()


async def test_removed_provider_is_unregistered(tmp_path: Path) -> None:
    async with kamailio_registrar(tmp_path, user=TRUNK_USER, password=TRUNK_PASSWORD) as kamailio, \
            running_server(tmp_path) as server:
        owner = provision(server, "acme")
        provider_id = await add_provider(server, owner, "kam", kamailio.address)
        agent = agent_for(server, refresh_margin=30.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            await wait_state(agent, lambda s: s.status is RegistrationStatus.REGISTERED)
            await server.store.write(lambda conn: conn.execute("DELETE FROM providers WHERE id = ?", (provider_id,)))
            with trio.fail_after(10):
                while True:  # Kamailio's log is the registrar's word
                    if any("expires=0" in line for line in kamailio.registrations()):
                        break
                    await trio.sleep(0.05)
            assert agent.states() == []
            nursery.cancel_scope.cancel()


async def test_a_call_to_the_registered_contact_reaches_the_suffix_account(tmp_path: Path) -> None:
    async with kamailio_registrar(tmp_path, user=TRUNK_USER, password=TRUNK_PASSWORD) as kamailio, \
            running_server(tmp_path) as server:
        owner = provision(server, "acme", {"bob": (None, None)})
        await add_provider(server, owner, "kam", kamailio.address)
        agent = server.provider_registrations  # the server's own agent, as wired in production
        async with trio.open_nursery() as nursery, user_agents(server, "bob") as (bob,), \
                user_agents(server, "outsider", register=False) as (outsider,):
            await wait_state(agent, lambda s: s.status is RegistrationStatus.REGISTERED, seconds=15)
            # Someone on the provider's side calls the trunk's number (Kamailio forwards
            # it to the contact we registered).
            answers: list[int] = []

            async def call() -> None:
                _, final = await outsider.invite_uri(f"sip:{TRUNK_USER}@127.0.0.1", sdp(42000), from_user="15550001",
                                                     from_domain="pstn.example", to=kamailio.address)
                answers.append(final.status)
                assert b"m=audio 41000" in final.body

            async with trio.open_nursery() as calls:
                calls.start_soon(call)
                invite, source = await bob.request("INVITE")
                assert invite.from_.uri.user == "15550001"
                assert b"m=audio 42000" in invite.body
                await bob.answer_request(invite, source, sdp(41000))
            assert answers == [200]
            nursery.cancel_scope.cancel()
