"""The trio shell around the transaction layer: its timer wake-ups, over real sockets."""

from __future__ import annotations

import socket
import time

import trio

from sip.headers import Headers
from sip.message import Request, make_response, new_branch
from sip.transaction import Action, RequestReceived, TransportFailed
from sip.transport import SIPEndpoint
from sip.uri import URI


def _options_from_peer(port: int) -> bytes:
    return (
        "OPTIONS sip:server@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={new_branch()}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:peer@127.0.0.1>;tag=p1\r\n"
        "To: <sip:server@127.0.0.1>\r\n"
        "Call-ID: timers-1@127.0.0.1\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _options_to(local: tuple[str, int], port: int) -> Request:
    return Request(
        method="OPTIONS",
        uri=URI.parse(f"sip:silent@127.0.0.1:{port}"),
        headers=Headers([
            ("Via", f"SIP/2.0/UDP {local[0]}:{local[1]};branch={new_branch()}"),
            ("Max-Forwards", "70"),
            ("From", "<sip:server@127.0.0.1>;tag=s1"),
            ("To", f"<sip:silent@127.0.0.1:{port}>"),
            ("Call-ID", "timers-2@127.0.0.1"),
            ("CSeq", "1 OPTIONS"),
        ]),
    )


async def test_a_timer_started_after_a_later_one_was_armed_still_fires_on_time() -> None:
    # Answering the peer's OPTIONS arms Timer J (32 s); the request we send next to a
    # peer that never answers starts Timer E (0.5 s), which must wake the endpoint
    # ahead of the armed deadline: the request goes out again about T1 later.
    received: list[Action] = []
    heard = trio.Event()

    def handler(action: Action) -> None:
        received.append(action)
        heard.set()

    endpoint = SIPEndpoint(host="127.0.0.1", port=0, handler=handler)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as talker, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        talker.bind(("127.0.0.1", 0))
        silent.bind(("127.0.0.1", 0))
        silent.setblocking(False)
        async with trio.open_nursery() as nursery:
            local = await nursery.start(endpoint.serve)
            talker.sendto(_options_from_peer(talker.getsockname()[1]), local)
            with trio.fail_after(5):
                await heard.wait()
            (action,) = received
            assert isinstance(action, RequestReceived)
            endpoint.respond(action.transaction, make_response(action.request, 200, to_tag="t1"))

            endpoint.request(_options_to(local, silent.getsockname()[1]), silent.getsockname())
            sent_at = trio.current_time()
            copies: list[float] = []
            with trio.move_on_after(1.5):
                while len(copies) < 2:
                    await trio.lowlevel.wait_readable(silent)
                    silent.recv(65535)
                    copies.append(trio.current_time() - sent_at)
            nursery.cancel_scope.cancel()
    assert len(copies) == 2, copies
    assert 0.4 < copies[1] < 1.0


def _closed_port(kind: int) -> int:
    """A port on 127.0.0.1 nothing listens on (bound, read, released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _request_to_a_closed_port(transport: str) -> tuple[object, list[TransportFailed], SIPEndpoint]:
    """Send an OPTIONS over ``transport`` to a port nothing listens on; the transaction,
    the TransportFailed events the handler got (within 3 s), and the endpoint."""
    failed: list[TransportFailed] = []
    done = trio.Event()

    def handler(action: Action) -> None:
        if isinstance(action, TransportFailed):
            failed.append(action)
            done.set()

    endpoint = SIPEndpoint(host="127.0.0.1", port=0, handler=handler)
    async with trio.open_nursery() as nursery:
        local = await nursery.start(endpoint.serve)
        port = _closed_port(socket.SOCK_DGRAM if transport == "UDP" else socket.SOCK_STREAM)
        request = _options_to(local, port)
        if transport != "UDP":
            request = request.replace(headers=request.headers.with_replaced(
                "Via", f"SIP/2.0/{transport} {local[0]}:{local[1]};branch={new_branch()}"))
        tx = endpoint.request(request, ("127.0.0.1", port), transport)
        with trio.fail_after(3):
            await done.wait()
        nursery.cancel_scope.cancel()
    return tx, failed, endpoint


async def test_an_icmp_unreachable_ends_the_transaction_at_once() -> None:
    # RFC 3261 18.4/17.1.2.2: a port unreachable for our request is a transport error,
    # reported to the TU now rather than by Timer F 32 s later.
    tx, failed, endpoint = await _request_to_a_closed_port("UDP")
    assert [f.transaction for f in failed] == [tx]
    assert "ECONNREFUSED" in failed[0].reason
    assert endpoint.layer.statistics()["client_transactions"] == 0
    assert endpoint.counters["icmp_errors"] == 1


async def test_a_send_right_after_an_icmp_error_still_goes_out() -> None:
    # With IP_RECVERR the kernel reports a pending ICMP error on the socket's next call:
    # a sendto to someone else fails once with ECONNREFUSED, and must be sent again.
    failed = trio.Event()

    def handler(action: Action) -> None:
        if isinstance(action, TransportFailed):
            failed.set()

    endpoint = SIPEndpoint(host="127.0.0.1", port=0, handler=handler)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(2)
        async with trio.open_nursery() as nursery:
            local = await nursery.start(endpoint.serve)
            port = _closed_port(socket.SOCK_DGRAM)
            endpoint.request(_options_to(local, port), ("127.0.0.1", port))
            time.sleep(0.2)  # noqa: ASYNC251 - blocking on purpose: the ICMP error arrives before the loop can read it
            endpoint.send_bytes(b"hello", peer.getsockname(), "UDP")
            assert peer.recv(100) == b"hello"
            with trio.fail_after(3):
                await failed.wait()  # and the error was still reported, from a task
            nursery.cancel_scope.cancel()


async def test_a_refused_tcp_connection_ends_the_transaction_at_once() -> None:
    tx, failed, _ = await _request_to_a_closed_port("TCP")
    assert [f.transaction for f in failed] == [tx]
    assert failed[0].reason.startswith("TCP connect failed")
