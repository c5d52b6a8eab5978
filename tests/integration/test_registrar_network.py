"""The registrar seen from the network: source addresses, keep-alives, TCP, lock-out."""

from __future__ import annotations

import time

import trio

from engine.events import Event
from engine.server import Server
from sip.headers import Via
from sip.message import Response
from tests.integration.sipclient import TCPClient, UDPClient


def sip_address(server: Server) -> tuple[str, int]:
    """Where the running server's SIP listens."""
    assert server.sip_address is not None
    return server.sip_address


def add_account(server: Server, user: str, password: str, *, keepalive: bool = False) -> None:
    store = server.store
    if store.customer_by_name("acme") is None:
        store.add_customer("acme", "console-pw", now=time.time())
    store.add_account(user, "local", customer="acme", password=password, keepalive=keepalive,
                      now=time.time())


async def test_binding_records_the_real_source_not_the_contact(server: Server) -> None:
    add_account(server, "alice", "alice-pw")
    async with UDPClient(sip_address(server)) as phone:
        ok = await phone.register("alice", "alice-pw", contact="<sip:alice@10.0.0.99:5060>")
        assert ok.status == 200
        assert "sip:alice@10.0.0.99:5060" in (ok.headers.get("Contact") or "")
        (binding,) = server.registrar.lookup("alice@127.0.0.1", time.time())
        assert binding.received == phone.local
        assert binding.transport == "UDP"
        assert str(binding.contact) == "sip:alice@10.0.0.99:5060"


async def test_response_via_carries_received_and_rport(server: Server) -> None:
    async with UDPClient(sip_address(server)) as phone:
        # The Via claims an address the request did not come from.
        request = phone.request("OPTIONS", "sip:127.0.0.1")
        lying = request.headers.with_first_value_removed("Via").with_added(
            "Via", "SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKlying1;rport", first=True)
        response = await phone.final_response(request.replace(headers=lying))
    assert response.status == 200
    via = Via.parse(response.headers.get("Via") or "")
    assert via.param("received") == "127.0.0.1"
    assert via.param("rport") == str(phone.local[1])


async def test_keepalives_go_to_flagged_accounts_only(server: Server) -> None:
    # The fixture sends keep-alives every second.
    add_account(server, "natted", "pw1", keepalive=True)
    add_account(server, "direct", "pw2")
    async with UDPClient(sip_address(server)) as natted, UDPClient(sip_address(server)) as direct:
        assert (await natted.register("natted", "pw1")).status == 200
        assert (await direct.register("direct", "pw2")).status == 200
        started = trio.current_time()
        pings = [await natted.receive_raw(limit=3.0), await natted.receive_raw(limit=3.0)]
        assert pings == [b"\r\n\r\n", b"\r\n\r\n"]
        assert trio.current_time() - started < 3.0
        with trio.move_on_after(2.5) as quiet:
            unexpected = await direct.receive_raw(limit=10)
        assert quiet.cancelled_caught, f"a keep-alive went to an account without the flag: {unexpected!r}"


async def test_register_over_tcp_answers_on_the_same_connection(server: Server) -> None:
    add_account(server, "alice", "alice-pw")
    async with TCPClient(sip_address(server)) as phone:
        # Both the challenge and the 200 come back over this connection (register()
        # reads nowhere else).
        ok = await phone.register("alice", "alice-pw")
        assert ok.status == 200
        via = Via.parse(ok.headers.get("Via") or "")
        assert via.transport.upper() == "TCP"
        assert via.param("rport") == str(phone.local[1])
        (binding,) = server.registrar.lookup("alice@127.0.0.1", time.time())
        assert binding.transport == "TCP"
        assert binding.received == phone.local
        # The connection stays usable for the next request.
        options = await phone.final_response(phone.request("OPTIONS", "sip:127.0.0.1"))
        assert options.status == 200


async def test_five_wrong_passwords_lock_the_account_out(server: Server) -> None:
    add_account(server, "alice", "alice-pw")
    with server.events.subscribe(None, types=["auth"]) as events:
        async with UDPClient(sip_address(server)) as phone:
            for _ in range(5):
                wrong = await phone.register("alice", "guess")
                assert wrong.status == 401
            locked = await phone.register("alice", "alice-pw")
        assert locked.status == 403
        assert "locked out" in locked.reason
        assert server.registrar.lookup("alice@127.0.0.1", time.time()) == []
        seen: list[Event] = []
        with trio.fail_after(2):
            while not any(e.data.get("kind") == "lockout" for e in seen):
                seen.append(await events.receive())
    failures = [e for e in seen if e.data.get("kind") == "failure"]
    assert len(failures) == 5
    assert all(e.data["aor"] == "alice@local" and e.data["source"] == "127.0.0.1" for e in failures)


async def test_unknown_and_known_users_get_alike_answers(server: Server) -> None:
    """What an enumerator sees: the same status, reason, headers and realm."""
    add_account(server, "1000", "pw")

    def shape(response: Response) -> tuple[object, ...]:
        names = tuple(sorted({name for name, _ in response.headers}))
        challenge = [v.split("nonce=")[0] for v in response.headers.get_all("WWW-Authenticate")]
        return response.status, response.reason, names, challenge

    async with UDPClient(sip_address(server)) as scanner:
        known = await scanner.register("1000", None)
        unknown = await scanner.register("1001", None)
        assert known.status == 401
        assert shape(known) == shape(unknown)
        known_wrong = await scanner.register("1000", "guess")
        unknown_wrong = await scanner.register("1001", "guess")
        assert known_wrong.status == 401
        assert shape(known_wrong) == shape(unknown_wrong)
