"""The door of the server.  Challenges keep no state (RFC 3261 8.2.7): a 401/407 leaves
no transaction behind, is never retransmitted by the server, and a retransmitted request
is challenged again with the same To tag.  A server that has fallen behind refuses new
INVITEs and MESSAGEs without credentials (503) and carries on with those past their
challenge."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path

import trio

from engine.server import Server
from sip.message import Request, Response, make_ack_for_error
from tests.calls.helpers import Phone, phones, provision, raw_socket, running_server, sdp
from tests.integration.sipclient import TCPClient


def _server_transactions(server: Server) -> int:
    assert server.endpoint is not None
    return server.endpoint.statistics()["server_transactions"]


async def _no_response(phone: Phone, call_id: str, method: str, seconds: float) -> None:
    with trio.move_on_after(seconds):
        got = await phone.next_response(call_id=call_id, method=method, within=seconds + 1)
        raise AssertionError(f"unexpected response: {got.to_bytes()!r}")


def _invite_to_bob(alice: Phone, server: Server, call_id: str, tag: str, *, cseq: int = 1,
                   extra: Iterable[tuple[str, str]] = ()) -> Request:
    """alice's INVITE to bob through the server, exactly as given (no challenge answered)."""
    assert server.sip_address is not None
    return alice.build("INVITE", f"sip:bob@127.0.0.1:{server.sip_address[1]}",
                       from_=f"<sip:alice@127.0.0.1>;tag={tag}", to="<sip:bob@127.0.0.1>",
                       call_id=call_id, cseq=cseq, body=sdp("127.0.0.1", 40000), extra=extra)


def _send_and_stall(phone: Phone, *requests: Request) -> None:
    """Send from the phone's socket without yielding to trio, then stall the one trio
    loop the server runs in too: the datagrams wait in its socket as they would behind
    a backlog."""
    with raw_socket(phone) as raw:
        for request in requests:
            raw.sendto(request.to_bytes(), phone.server)
    time.sleep(0.35)


async def test_an_unauthenticated_invite_is_challenged_without_a_transaction(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, "out"), "bob": (None, None)},
                  dialplans={"out": 'sys.Dial("bob@local")\n'})
        async with phones(server, "alice") as (alice,):
            before = _server_transactions(server)
            invite = _invite_to_bob(alice, server, "stateless-1@uac", "a1")
            await alice.send(invite)
            first = await alice.next_response(call_id="stateless-1@uac")
            assert first.status == 407  # no 100 before it
            assert first.headers.get("Proxy-Authenticate")
            assert _server_transactions(server) == before

            # No Timer G: the server does not retransmit its 407 (T1 is 0.5 s) ...
            await _no_response(alice, "stateless-1@uac", "INVITE", 0.8)
            # ... the caller's retransmission is what gets it again, with the same tag.
            await alice.send(invite)
            second = await alice.next_response(call_id="stateless-1@uac")
            assert second.status == 407
            assert second.to.tag == first.to.tag
            # The ACK is dropped unparsed, known by its To tag: no answer, no state.
            await alice.send(make_ack_for_error(invite, second))
            await _no_response(alice, "stateless-1@uac", "ACK", 0.3)
            assert _server_transactions(server) == before
            assert server.endpoint is not None
            assert server.endpoint.statistics()["stateless_acks"] == 1


async def test_an_unauthenticated_register_is_challenged_without_a_transaction(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, None)})
        async with phones(server, "alice", register=False) as (alice,):
            register = alice.build("REGISTER", "sip:127.0.0.1", from_="<sip:alice@127.0.0.1>;tag=r1",
                                   to="<sip:alice@127.0.0.1>", call_id="stateless-2@reg", cseq=1,
                                   extra=[("Expires", "600")])
            await alice.send(register)
            first = await alice.next_response(call_id="stateless-2@reg", method="REGISTER")
            assert first.status == 401
            assert first.headers.get("Server")
            assert _server_transactions(server) == 0

            await _no_response(alice, "stateless-2@reg", "REGISTER", 0.8)
            await alice.send(register)
            second = await alice.next_response(call_id="stateless-2@reg", method="REGISTER")
            assert (second.status, second.to.tag) == (401, first.to.tag)
            assert _server_transactions(server) == 0
            # The challenge is answerable as before.
            assert (await alice.register()).status == 200


async def test_a_server_behind_sheds_new_invites_without_credentials(tmp_path: Path) -> None:
    async with running_server(tmp_path, overload_delay=0.2) as server:
        assert server.endpoint is not None and server.sip_address is not None
        provision(server, accounts={"alice": (None, "out"), "bob": (None, None)},
                  dialplans={"out": 'sys.Dial("bob@local")\n'})
        async with phones(server, "alice", "bob") as (alice, bob):
            invite = _invite_to_bob(alice, server, "behind-1@uac", "b1")
            register = alice.build("REGISTER", "sip:127.0.0.1", from_="<sip:alice@127.0.0.1>;tag=b2",
                                   to="<sip:alice@127.0.0.1>", call_id="behind-2@reg", cseq=1)
            _send_and_stall(alice, invite, register)
            shed = await alice.next_response(call_id="behind-1@uac")
            assert (shed.status, shed.reason) == (503, "Service Unavailable (overloaded)")
            assert shed.headers.get("Retry-After") == "5"
            # A REGISTER is challenged all the same: a registration is little work.
            register_challenge = await alice.next_response(call_id="behind-2@reg", method="REGISTER")
            assert register_challenge.status == 401
            assert server.endpoint.statistics()["shed"] == 1

            # On time, the same INVITE is challenged as usual ...
            await alice.send(invite)
            challenge = await alice.next_response(call_id="behind-1@uac")
            assert challenge.status == 407
            await alice.send(make_ack_for_error(invite, challenge))
            # ... and its answer to the challenge is carried on with even when it waited.
            answered = _invite_to_bob(
                alice, server, "behind-1@uac", "b1", cseq=2,
                extra=[("Proxy-Authorization", alice._authorization(challenge, "INVITE", str(invite.uri)))])
            _send_and_stall(alice, answered)
            incoming = await bob.next_request("INVITE")
            await bob.send(bob.reply(incoming, 486), incoming.source)
            final = await alice.next_response(call_id="behind-1@uac", final=True)
            assert (final.status, final.cseq.number) == (486, 2)
            assert server.endpoint.statistics()["shed"] == 1


async def test_a_server_behind_sheds_new_messages_without_credentials_too(tmp_path: Path) -> None:
    async with running_server(tmp_path, overload_delay=0.2) as server:
        assert server.endpoint is not None and server.sip_address is not None
        provision(server, accounts={"alice": (None, None), "bob": (None, None)})
        async with phones(server, "alice", "bob") as (alice, bob):
            uri = f"sip:bob@127.0.0.1:{server.sip_address[1]}"
            message = alice.build("MESSAGE", uri, from_="<sip:alice@127.0.0.1>;tag=m1", to="<sip:bob@127.0.0.1>",
                                  call_id="behind-3@msg", cseq=1, body=b"hi", content_type="text/plain")
            _send_and_stall(alice, message)
            shed = await alice.next_response(call_id="behind-3@msg", method="MESSAGE")
            assert (shed.status, shed.reason) == (503, "Service Unavailable (overloaded)")
            # Past its challenge, a message that waited is delivered.
            await alice.send(message)
            challenge = await alice.next_response(call_id="behind-3@msg", method="MESSAGE")
            assert challenge.status == 407
            answered = alice.build(
                "MESSAGE", uri, from_="<sip:alice@127.0.0.1>;tag=m1", to="<sip:bob@127.0.0.1>",
                call_id="behind-3@msg", cseq=2, body=b"hi", content_type="text/plain",
                extra=[("Proxy-Authorization", alice._authorization(challenge, "MESSAGE", uri))])
            _send_and_stall(alice, answered)
            incoming = await bob.next_request("MESSAGE")
            await bob.send(bob.reply(incoming, 200), incoming.source)
            final = await alice.next_response(call_id="behind-3@msg", method="MESSAGE")
            assert (final.status, final.cseq.number) == (200, 2)
            assert server.endpoint.statistics()["shed"] == 1


async def test_a_server_behind_sheds_new_invites_over_tcp_too(tmp_path: Path) -> None:
    # The kernel stamps TCP segments as it does datagrams: an INVITE that waited in a
    # connection's buffer past overload_delay is refused the same way.
    async with running_server(tmp_path, overload_delay=0.2) as server:
        assert server.endpoint is not None and server.sip_address is not None
        provision(server, accounts={"alice": (None, "out")}, dialplans={"out": 'sys.Dial("bob@local")\n'})
        async with TCPClient(server.sip_address) as tcp:
            assert tcp.stream is not None
            invite = tcp.request("INVITE", f"sip:bob@127.0.0.1:{server.sip_address[1]}",
                                 contact=f"<sip:alice@127.0.0.1:{tcp.local[1]};transport=tcp>")
            with socket.socket(fileno=os.dup(tcp.stream.socket.fileno())) as raw:
                raw.send(invite.to_bytes())
            time.sleep(0.35)  # noqa: ASYNC251 - the server's loop is this one: it stalls too
            shed = await tcp.receive()
            assert isinstance(shed, Response)
            assert (shed.status, shed.reason) == (503, "Service Unavailable (overloaded)")
            assert server.endpoint.statistics()["shed"] == 1
            # On time, a new INVITE over the same connection is challenged as usual.
            again = tcp.request("INVITE", f"sip:bob@127.0.0.1:{server.sip_address[1]}",
                                contact=f"<sip:alice@127.0.0.1:{tcp.local[1]};transport=tcp>")
            assert (await tcp.final_response(again)).status == 407
            assert server.endpoint.statistics()["shed"] == 1


async def test_shedding_is_off_with_overload_delay_0(tmp_path: Path) -> None:
    async with running_server(tmp_path, overload_delay=0) as server:
        assert server.endpoint is not None and server.sip_address is not None
        provision(server, accounts={"alice": (None, "out")}, dialplans={"out": 'sys.Dial("bob@local")\n'})
        async with phones(server, "alice", register=False) as (alice,):
            invite = _invite_to_bob(alice, server, "behind-3@uac", "c1")
            _send_and_stall(alice, invite)
            assert (await alice.next_response(call_id="behind-3@uac")).status == 407
            assert server.endpoint.statistics()["shed"] == 0
