"""A real call between two real phones (baresip) through an In dialplan: both phones see
the call established, the audio goes from phone to phone and never through us, and a
hang-up ends both sides and both bridges with their CDRs; hold and resume (re-INVITEs)
cross the bridge."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.calls.helpers import PASSWORD, provision, registered, rows, running_server, wait_rows
from tests.integration.phones import Baresip

IN_DIALPLAN = 'sys.Log("to bob")\nsys.Dial("bob@local")\n'


def _udp_ports(pid: int) -> set[int]:
    """The local ports of the UDP sockets process ``pid`` holds (Linux /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", str(target))
        if match:
            inodes.add(match.group(1))
    ports = set()
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes:
            ports.add(int(fields[1].split(":")[1], 16))
    return ports


def _audio(sdp_text: str) -> tuple[str, int]:
    """The connection address and audio port of an SDP body."""
    address = re.search(r"^c=IN IP4 (\S+)", sdp_text, re.M)
    port = re.search(r"^m=audio (\d+) ", sdp_text, re.M)
    assert address and port, sdp_text
    return address.group(1), int(port.group(1))


def _bodies(trace: str) -> list[str]:
    """The SDP bodies of the SIP messages in a trace, in order."""
    return re.findall(r"\r\n\r\n(v=0\r\n.*?)(?=\n[A-Z][a-z]|\Z)", trace, re.S)


async def _received_rtp(phone: Baresip, limit: float) -> int:
    """Wait for an RTCP report from the peer that counts RTP packets received from it;
    return that count."""
    with trio.fail_after(limit):
        while True:
            reports = [e for e in phone.events if e.get("type") == "CALL_RTCP"]
            counts = [int(e.get("rtcp_stats", {}).get("rx", {}).get("sent", 0)) for e in reports]
            received = max(counts, default=0)
            if received > 0:
                return received
            await phone.wait_event("CALL_RTCP", count=len(reports) + 1, limit=limit)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_baresip_calls_baresip_through_an_in_dialplan(tmp_path: Path, transport: str) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path) as server:
            provision(server, accounts={"alice": (None, None), "bob": ("in", None)},
                      dialplans={"in": IN_DIALPLAN})
            assert server.sip_address is not None
            alice = Baresip(tmp_path, user="alice", password=PASSWORD, server=server.sip_address, transport=transport)
            bob = Baresip(tmp_path, user="bob", password=PASSWORD, server=server.sip_address, transport=transport)
            async with trio.open_nursery() as nursery:
                try:
                    await alice.start(nursery)
                    await bob.start(nursery)
                    await registered(server, "alice@127.0.0.1", "bob@127.0.0.1")
                    # Both registered over the transport under test: bob's phone is rung,
                    # and alice's calls arrive, over that.
                    for aor in ("alice@127.0.0.1", "bob@127.0.0.1"):
                        (binding,) = server.registrar.lookup(aor, time.time())
                        assert binding.transport.lower() == transport

                    target = f"sip:bob@127.0.0.1:{server.sip_address[1]};transport={transport}"
                    dialled = await alice.command("dial", target)
                    assert dialled["ok"], dialled
                    await alice.wait_event("CALL_ESTABLISHED", limit=10)
                    (answered,) = await bob.wait_event("CALL_ESTABLISHED", limit=10)
                    assert answered["direction"] == "incoming"
                    assert answered["peeruri"].startswith("sip:alice@127.0.0.1")
                    for phone in (alice, bob):
                        listed = await phone.command("listcalls")
                        assert "ESTABLISHED" in listed["data"], listed

                    # bob's In dialplan ran (its log line is in its trace) and placed the call.
                    query = "SELECT text FROM traces WHERE text LIKE ?"
                    (trace,) = await wait_rows(server, query, 1, ("%DialPlan=> to bob%",))
                    offer, answer = _bodies(trace[0])
                    # Each side's SDP carries the other phone's own RTP socket, not ours.
                    assert alice.process is not None and bob.process is not None
                    offer_host, offer_port = _audio(offer)
                    answer_host, answer_port = _audio(answer)
                    assert offer_host == answer_host == "127.0.0.1"
                    alice_ports = _udp_ports(alice.process.pid)
                    bob_ports = _udp_ports(bob.process.pid)
                    assert offer_port in alice_ports, (offer_port, alice_ports)
                    assert answer_port in bob_ports, (answer_port, bob_ports)
                    assert {offer_port, answer_port}.isdisjoint({server.sip_address[1]})

                    # Audio arrives on both phones: each one's RTCP stats count the packets
                    # received from the other.
                    assert await _received_rtp(alice, limit=12) > 0
                    assert await _received_rtp(bob, limit=12) > 0

                    hung = await alice.command("hangup")
                    assert hung["ok"], hung
                    (closed,) = await bob.wait_event("CALL_CLOSED", limit=5)
                    assert closed["peeruri"].startswith("sip:alice@127.0.0.1")
                    await alice.wait_event("CALL_CLOSED", limit=5)
                finally:
                    await alice.stop()
                    await bob.stop()
                    nursery.cancel_scope.cancel()

            # Two bridges (alice's Out leg into bob's In dialplan, and that dialplan's leg to
            # bob's phone), each with a caller and a callee row, all hung up by alice's BYE.
            cdrs = await wait_rows(
                server,
                "SELECT bridge_id, leg, direction, to_uri, hungup_at, hangup_reason "
                "FROM cdrs WHERE hungup_at IS NOT NULL",
                4,
            )
            assert len(rows(server, "SELECT id FROM cdrs")) == 4
            by_bridge: dict[str, list[Any]] = {}
            for row in cdrs:
                assert row[0], row
                by_bridge.setdefault(row[0], []).append(row)
            assert len(by_bridge) == 2, cdrs
            for legs in by_bridge.values():
                assert sorted(r[1] for r in legs) == ["callee", "caller"], legs
                assert all("BYE from caller" in (r[5] or "") for r in legs), legs
            assert any(r[1] == "callee" and f":{bob.sip_port}" in r[3] for r in cdrs), cdrs
            # Nothing of the call is live any more (dialogs stay remembered, ended, for
            # late retransmissions).
            assert not server.calls.bridges and not server.calls.calls
            assert all(bridge.ended.is_set() for bridge, _side in server.calls.dialogs.values())


async def test_baresip_holds_and_resumes_across_the_bridge(tmp_path: Path) -> None:
    # Hold and resume are re-INVITEs in the dialog (a=sendonly, then a=sendrecv): each
    # crosses the bridge to the other phone as an offer, and its answer comes back.
    with trio.fail_after(30):
        async with running_server(tmp_path) as server:
            provision(server, accounts={"alice": (None, None), "bob": ("in", None)},
                      dialplans={"in": IN_DIALPLAN})
            assert server.sip_address is not None
            alice = Baresip(tmp_path, user="alice", password=PASSWORD, server=server.sip_address, transport="udp")
            bob = Baresip(tmp_path, user="bob", password=PASSWORD, server=server.sip_address, transport="udp")
            async with trio.open_nursery() as nursery:
                try:
                    await alice.start(nursery)
                    await bob.start(nursery)
                    await registered(server, "alice@127.0.0.1", "bob@127.0.0.1")
                    await alice.command("dial", f"sip:bob@127.0.0.1:{server.sip_address[1]}")
                    await alice.wait_event("CALL_ESTABLISHED", limit=10)
                    await bob.wait_event("CALL_ESTABLISHED", limit=10)

                    def sdp_events(phone: Baresip, param: str) -> int:
                        return sum(1 for e in phone.events if e.get("type") == "CALL_REMOTE_SDP" and e.get("param") == param)

                    offers, answers = sdp_events(bob, "offer"), sdp_events(alice, "answer")
                    for step in ("hold", "resume"):
                        assert (await alice.command(step))["ok"]
                        with trio.fail_after(5):
                            while sdp_events(bob, "offer") == offers or sdp_events(alice, "answer") == answers:  # noqa: ASYNC110
                                await trio.sleep(0.05)
                        offers, answers = offers + 1, answers + 1
                    # Still one established call on each phone, and the bridge holds it.
                    for phone in (alice, bob):
                        assert "ESTABLISHED" in (await phone.command("listcalls"))["data"]
                    assert len(server.calls.bridges) == 2
                    assert (await alice.command("hangup"))["ok"]
                    await bob.wait_event("CALL_CLOSED", limit=5)
                finally:
                    await alice.stop()
                    await bob.stop()
                    nursery.cancel_scope.cancel()
