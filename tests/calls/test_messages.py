"""Instant messages (pager-mode MESSAGE, RFC 3428): delivered to every device of the
account named, the sender told the first acceptance or the best refusal; our accounts
authenticate first and may also write to addresses elsewhere (located by RFC 3263),
outside senders reach our accounts only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TypedDict

import pytest
import trio

from engine.locate import Resolver
from engine.server import Server
from sip.message import Request, Response
from tests.calls.helpers import (
    PASSWORD,
    Incoming,
    Phone,
    phones,
    provision,
    registered,
    running_server,
)
from tests.calls.test_dns_failover import start_dnsmasq
from tests.engine.test_locate import require_dnsmasq
from tests.integration.phones import Baresip


class MessageOptions(TypedDict, total=False):
    """Phone.message()'s options."""

    max_forwards: int
    authenticate: bool


def _uri(server: Server, user: str, host: str = "127.0.0.1") -> str:
    assert server.sip_address is not None
    return f"sip:{user}@{host}:{server.sip_address[1]}"


async def _answer(phone: Phone, status: int) -> Incoming:
    """``phone`` gets the relayed MESSAGE and answers it ``status``."""
    incoming = await phone.next_request("MESSAGE")
    await phone.send(phone.reply(incoming, status, to_tag="dev"), incoming.source)
    return incoming


async def test_a_message_reaches_every_device_and_the_sender_hears_the_acceptance(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, None), "bob": (None, None)})
        async with phones(server, "alice", "bob", "bob") as (alice, bob1, bob2), trio.open_nursery() as nursery:
            sent: list[tuple[Request, Response]] = []

            async def send() -> None:
                sent.append(await alice.message(_uri(server, "bob"), "Lunch at one?",
                                                to="<sip:bob@127.0.0.1>;x=1"))

            nursery.start_soon(send)
            first = await _answer(bob1, 480)  # one device refuses...
            copy = first.request
            assert copy.body == b"Lunch at one?"
            assert copy.headers.get("Content-Type") == "text/plain"
            assert str(copy.uri) == bob1.contact.strip("<>")
            assert copy.from_.uri.user == "alice" and copy.from_.tag
            assert str(copy.to.uri) == "sip:bob@127.0.0.1" and copy.to.tag is None
            assert copy.max_forwards == 69
            # A request of ours: the sender's credentials, Call-ID and Via stay behind.
            assert copy.headers.get("Proxy-Authorization") is None
            assert len(copy.headers.get_all("Via")) == 1
            second = await _answer(bob2, 200)  # ...the other accepts
            assert second.request.body == copy.body
            assert second.request.call_id != copy.call_id
        request, final = sent[0]
        assert (final.status, final.reason) == (200, "OK")
        assert copy.call_id != request.call_id


async def test_the_sender_hears_the_best_refusal_or_why_nothing_was_sent(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, None), "bob": (None, None), "dora": (None, None)})
        async with phones(server, "alice", "bob", "bob") as (alice, bob1, bob2), trio.open_nursery() as nursery:
            results, outcomes = trio.open_memory_channel[tuple[int, str]](2)

            async def send(phone: Phone, uri: str) -> None:
                _, final = await phone.message(uri, "hi")
                await results.send((final.status, final.reason))

            nursery.start_soon(send, alice, _uri(server, "bob"))
            await _answer(bob1, 486)
            await _answer(bob2, 480)
            with trio.fail_after(5):
                assert await outcomes.receive() == (480, "Temporarily Unavailable")  # the lowest of the two

            nursery.start_soon(send, alice, _uri(server, "bob"))
            await _answer(bob1, 603)  # a 6xx ends it at once, whatever the other does
            with trio.fail_after(5):
                assert (await outcomes.receive())[0] == 603
            await _answer(bob2, 200)  # too late: the sender has its answer

        async with phones(server, "alice", "carol@example.com") as (alice, carol):
            cases: list[tuple[Phone, str, MessageOptions, tuple[int, str]]] = [
                (alice, _uri(server, "nobody"), {}, (404, "Not Found (no such account)")),
                (carol, "sip:bob@elsewhere.example", {"authenticate": False},
                 (404, "Not Found (messages go to this server's accounts only)")),
                (alice, _uri(server, "dora"), {}, (480, "Temporarily Unavailable (no device registered)")),
                (alice, _uri(server, "dora"), {"max_forwards": 0}, (483, "Too Many Hops")),
                (carol, _uri(server, "dora"), {"authenticate": False},
                 (480, "Temporarily Unavailable (no device registered)")),
            ]
            for phone, uri, options, expected in cases:
                _, final = await phone.message(uri, "hi", **options)
                assert (final.status, final.reason) == expected, uri


async def test_our_accounts_authenticate_and_outside_senders_need_not(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, None), "bob": (None, None)})
        async with phones(server, "alice", "bob", "carol@example.com") as (alice, bob, carol), \
                trio.open_nursery() as nursery:
            _, final = await alice.message(_uri(server, "bob"), "hi", authenticate=False)
            assert final.status == 407 and final.headers.get("Proxy-Authenticate")
            await bob.no_request("MESSAGE", 0.3)

            nursery.start_soon(carol.message, _uri(server, "bob"), "from outside")
            incoming = await _answer(bob, 200)
            assert incoming.request.from_.uri.host == "example.com"

            account = server.store.directory(force=True).account("alice", "local")
            assert account is not None
            server.store.set_account_flags(account.id, incoming_only=True)
            server.store.directory(force=True)
            _, final = await alice.message(_uri(server, "bob"), "hi")
            assert (final.status, final.reason) == (403, "Forbidden (this account may not send messages)")


async def test_a_message_too_large_for_udp_is_not_sent(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"bob": (None, None)})
        async with phones(server, "bob", "carol@example.com") as (bob, carol):
            _, final = await carol.message(_uri(server, "bob"), "x" * 1400)
            assert (final.status, final.reason) == (513, "Message Too Large (over 1300 bytes on UDP)")
            await bob.no_request("MESSAGE", 0.3)


async def test_past_the_cap_a_message_waits_for_nobody(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_pending_messages=1) as server:
        provision(server, accounts={"bob": (None, None)})
        async with phones(server, "bob", "carol@example.com") as (bob, carol), trio.open_nursery() as nursery:
            nursery.start_soon(carol.message, _uri(server, "bob"), "first")
            waiting = await bob.next_request("MESSAGE")  # not answered yet
            _, final = await carol.message(_uri(server, "bob"), "second")
            assert final.status == 503 and final.headers.get("Retry-After") == "5"
            await bob.send(bob.reply(waiting, 200, to_tag="dev"), waiting.source)
            await trio.sleep(0.2)
            nursery.start_soon(carol.message, _uri(server, "bob"), "third")
            await _answer(bob, 200)


async def test_one_address_cannot_hold_every_waiting_place(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_pending_messages_per_source=1) as server:
        provision(server, accounts={"bob": (None, None)})
        assert server.sip_address is not None
        async with phones(server, "bob", "carol@example.com") as (bob, carol), trio.open_nursery() as nursery:
            erin = await Phone(server.sip_address, "erin", from_host="example.net").start(nursery, host="127.0.0.2")
            nursery.start_soon(carol.message, _uri(server, "bob"), "first")
            waiting = await bob.next_request("MESSAGE")  # carol's, not answered yet
            _, final = await carol.message(_uri(server, "bob"), "second")
            assert (final.status, final.reason) == (
                503, "Service Unavailable (too many of your messages waiting for delivery)")
            assert final.headers.get("Retry-After") == "5"
            # Another address is not held up by carol's.
            nursery.start_soon(erin.message, _uri(server, "bob"), "from erin")
            assert (await _answer(bob, 200)).request.from_.uri.user == "erin"
            await bob.send(bob.reply(waiting, 200, to_tag="dev"), waiting.source)
            await trio.sleep(0.2)
            results, outcomes = trio.open_memory_channel[int](1)

            async def third() -> None:
                _, final = await carol.message(_uri(server, "bob"), "third")
                await results.send(final.status)

            nursery.start_soon(third)
            assert (await _answer(bob, 200)).request.body == b"third"
            with trio.fail_after(5):
                assert await outcomes.receive() == 200
            assert server.calls.messages is not None and server.calls.messages.pending_from == {}
            erin.close()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_real_phones_send_and_receive_messages(tmp_path: Path, transport: str) -> None:
    # baresip sends with its contact module (and answers our challenge), and answers what
    # it receives with 200 once its menu has shown the text.  Over TCP, the message
    # reaches bob over the connection he registered on.
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, None), "bob": (None, None), "dora": (None, None)})
        assert server.sip_address is not None
        alice = Baresip(tmp_path, user="alice", password=PASSWORD, server=server.sip_address, transport=transport)
        bob = Baresip(tmp_path, user="bob", password=PASSWORD, server=server.sip_address, transport=transport)
        config = alice.dir / "config"
        config.write_text(config.read_text() + "module_app contact.so\n")
        (alice.dir / "contacts").write_text(f'"Dora" <{_uri(server, "dora")}>\n')
        async with trio.open_nursery() as nursery, phones(server, "dora", "carol@example.com") as (dora, carol):
            try:
                await alice.start(nursery)
                await bob.start(nursery)
                await registered(server, "alice@127.0.0.1", "bob@127.0.0.1")
                await alice.command("message", "Lunch at one?")
                incoming = await _answer(dora, 200)
                assert incoming.request.body == b"Lunch at one?"
                assert incoming.request.from_.uri.user == "alice"

                _, final = await carol.message(_uri(server, "bob"), "On my way")
                assert final.status == 200
                (binding,) = server.registrar.lookup("bob@127.0.0.1", time.time())
                assert binding.transport == transport.upper()
            finally:
                await alice.stop()
                await bob.stop()
                nursery.cancel_scope.cancel()


async def test_our_accounts_write_to_addresses_elsewhere(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, None)})
        async with phones(server, "alice") as (alice,), trio.open_nursery() as nursery:
            assert server.sip_address is not None
            friend = await Phone(server.sip_address, "friend").start(nursery, host="127.0.0.2")
            results, outcomes = trio.open_memory_channel[tuple[int, str]](1)

            async def send() -> None:
                _, final = await alice.message(f"sip:friend@127.0.0.2:{friend.local[1]}", "Hello from here")
                await results.send((final.status, final.reason))

            nursery.start_soon(send)
            incoming = await _answer(friend, 202)
            assert str(incoming.request.uri) == f"sip:friend@127.0.0.2:{friend.local[1]}"
            assert incoming.request.body == b"Hello from here"
            assert incoming.request.from_.uri.user == "alice"
            with trio.fail_after(5):
                assert await outcomes.receive() == (202, "Accepted")
            friend.close()
            nursery.cancel_scope.cancel()


async def test_a_message_elsewhere_goes_on_to_the_next_srv_target_after_a_503(tmp_path: Path) -> None:
    require_dnsmasq()
    async with running_server(tmp_path) as server:
        provision(server, accounts={"alice": (None, None)})
        async with phones(server, "alice", "first", "second", register=False) as (alice, first, second), \
                trio.open_nursery() as nursery:
            await alice.register()
            dnsmasq, dns_port = start_dnsmasq(tmp_path, (
                "local=/test/\nlocal-ttl=60\nhost-record=one.test,127.0.0.1\nhost-record=two.test,127.0.0.1\n"
                f"srv-host=_sip._udp.chat.test,one.test,{first.local[1]},10,0\n"
                f"srv-host=_sip._udp.chat.test,two.test,{second.local[1]},20,0\n"))
            try:
                server.runner.resolver = Resolver(("127.0.0.1", dns_port), timeout=3.0)
                results, outcomes = trio.open_memory_channel[tuple[int, str]](1)

                async def send() -> None:
                    _, final = await alice.message("sip:friend@chat.test", "anyone there?")
                    await results.send((final.status, final.reason))

                nursery.start_soon(send)
                refused = await _answer(first, 503)
                taken = await _answer(second, 200)
                with trio.fail_after(5):
                    assert await outcomes.receive() == (200, "OK")
                # The same request, in a new transaction.
                assert taken.request.call_id == refused.request.call_id
                assert taken.request.top_via.branch != refused.request.top_via.branch
                assert taken.request.body == b"anyone there?"
            finally:
                dnsmasq.terminate()
                dnsmasq.wait(timeout=10)
