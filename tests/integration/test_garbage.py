"""Hostile bytes from the network never stop the server from serving others."""

from __future__ import annotations

import random
import socket
import time

import trio

from engine.server import Server
from sip.message import Response
from tests.conftest import require_tool
from tests.integration.sipclient import TCPClient, UDPClient

TEMPLATES = [
    b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKg%d;rport\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:x@127.0.0.1>;tag=%d\r\nTo: <sip:y@127.0.0.1>\r\n"
    b"Call-ID: g%d@x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
    b"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKr%d\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:%d@127.0.0.1>;tag=1\r\nTo: <sip:u@127.0.0.1>\r\n"
    b"Call-ID: r%d@x\r\nCSeq: 1 REGISTER\r\nContact: <sip:u@127.0.0.1:5999>\r\n"
    b"Expires: 60\r\nContent-Length: 0\r\n\r\n",
    b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKi%d\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=%d\r\nTo: <sip:bob@127.0.0.1>\r\n"
    b"Call-ID: i%d@x\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n"
    b"Content-Length: 9\r\n\r\nv=0\r\no=x\r\n",
]


def garbage(rng: random.Random, n: int) -> bytes:
    """Random bytes, or a real request with bytes flipped, cut or repeated."""
    kind = rng.random()
    if kind < 0.3:
        return rng.randbytes(rng.randint(1, 1500))
    data = bytearray(rng.choice(TEMPLATES) % (n, n, n))
    for _ in range(rng.randint(1, 12)):
        at = rng.randrange(len(data))
        move = rng.random()
        if move < 0.5:
            data[at] = rng.choice(b"\x00\r\n :;<>@\"\\,=%\xff" + bytes([rng.randrange(256)]))
        elif move < 0.75:
            del data[at : at + rng.randint(1, 40)]
        else:
            data[at:at] = data[at : at + rng.randint(1, 200)] * rng.randint(1, 5)
    return bytes(data)


async def serves_normally(server: Server) -> None:
    """OPTIONS over UDP and TCP each answered within 1 s, and a digest REGISTER works."""
    address = server.sip_address or ("", 0)
    async with UDPClient(address) as udp:
        options = await udp.final_response(udp.request("OPTIONS", "sip:127.0.0.1"), limit=1.0)
        assert options.status == 200
    async with TCPClient(address) as tcp:
        options = await tcp.final_response(tcp.request("OPTIONS", "sip:127.0.0.1"), limit=1.0)
        assert options.status == 200
    async with UDPClient(address) as phone:
        registered = await phone.register("alice", "alice-pw", limit=2.0)
        assert registered.status == 200


async def test_garbage_from_sipsak_datagrams_and_broken_tcp(server: Server) -> None:
    now = time.time()
    server.store.add_customer("acme", "console-pw", now=now)
    server.store.add_account("alice", "local", customer="acme", password="alice-pw", now=now)
    host, port = server.sip_address or ("", 0)

    # 1. sipsak's random-garbage mode for about 5 s (each run gives up after its own
    # retransmissions, so it is restarted until the time is up).
    sipsak = require_tool("sipsak")
    runs = 0
    with trio.move_on_after(5):
        while True:
            runs += 1
            await trio.run_process([sipsak, "-R", "-s", f"sip:{host}:{port}"],
                                   capture_stdout=True, capture_stderr=True, check=False)
    assert runs >= 1
    bad_after_sipsak = server.endpoint.statistics()["bad"]
    assert bad_after_sipsak > 0, "sipsak -R sent nothing the server noticed"

    # 2. 10,000 datagrams: random bytes and mangled requests.
    rng = random.Random(4475)
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
        await flood.bind(("127.0.0.1", 0))
        with trio.fail_after(30):
            for n in range(10_000):
                await flood.sendto(garbage(rng, n), (host, port))
    assert server.endpoint.statistics()["bad"] > bad_after_sipsak

    # 3. Truncated TCP streams (closed mid-message) and half-open ones (left open).
    message = TEMPLATES[0] % (1, 1, 1)
    with trio.fail_after(10):
        for cut in (1, 17, len(message) // 2, len(message) - 3):
            stream = await trio.open_tcp_stream(host, port)
            await stream.send_all(message[:cut])
            await stream.aclose()
        half_open = []
        for cut in (5, len(message) // 2, len(message) - 1):
            stream = await trio.open_tcp_stream(host, port)
            await stream.send_all(message[:cut])
            half_open.append(stream)
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 99999999\r\n\r\n")
        half_open.append(stream)

    # Let the server drain its receive queue, then it must serve normally.
    with trio.fail_after(20):
        while True:
            before = server.endpoint.statistics()["udp_in"]
            await trio.sleep(0.3)
            if server.endpoint.statistics()["udp_in"] == before:
                break
    try:
        await serves_normally(server)
    finally:
        for stream in half_open:
            await stream.aclose()


async def test_a_half_sent_message_does_not_block_its_connection_peers(server: Server) -> None:
    host, port = server.sip_address or ("", 0)
    async with TCPClient((host, port)) as stuck:
        await stuck.send(TEMPLATES[0][:60])
        async with TCPClient((host, port)) as other:
            answer = await other.final_response(other.request("OPTIONS", "sip:127.0.0.1"), limit=1.0)
            assert isinstance(answer, Response) and answer.status == 200
