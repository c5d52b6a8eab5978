"""The waiter registry: owner isolation, RE2 patterns, windows and claiming."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.callbacks import CallbackAffinity, CallbackWaiters, placeholder_offer, with_origin


async def test_a_waiter_takes_only_its_owners_calls() -> None:
    waiters = CallbackWaiters()
    mine = waiters.add(1, "^1555", 30)
    theirs = waiters.add(2, ".*", 30)
    # A call to customer 2's account never reaches customer 1's waiter, and vice versa.
    assert waiters.match(2, "15550001") is theirs
    assert waiters.match(2, "15550001") is None
    assert waiters.match(3, "15550001") is None
    assert waiters.match(1, "4420") is None
    assert waiters.match(1, "15550001") is mine
    assert waiters.pending() == []


async def test_patterns_are_searched_and_unsafe_ones_refused() -> None:
    waiters = CallbackWaiters()
    waiters.add(1, "555", 30)
    assert waiters.match(1, "+15550001") is not None
    with pytest.raises(ValueError, match="RE2"):
        waiters.add(1, r"(a)\1", 30)  # a backreference: not linear-time, RE2 refuses it
    # A pattern that would backtrack for ages elsewhere runs in linear time here.
    waiters.add(1, "(a+)+$", 30)
    started = time.monotonic()
    assert waiters.match(1, "a" * 50_000 + "!") is None
    assert time.monotonic() - started < 1.0


async def test_window_expires_and_out_of_range_means_30_seconds() -> None:
    now = [100.0]
    waiters = CallbackWaiters(clock=lambda: now[0])
    short = waiters.add(1, ".*", 3)
    assert short.deadline == 103.0
    assert waiters.add(1, ".*", 600).deadline == 130.0
    assert waiters.add(1, ".*", 1).deadline == 130.0
    now[0] = 104.0
    assert [w.deadline for w in waiters.pending()] == [130.0, 130.0]
    assert waiters.match(1, "x") is not None


def test_affinity_file_lists_live_accounts_only(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / "callback_affinity.txt"
    affinity = CallbackAffinity(server_uri="sip:10.0.0.2:5060", path=path, wall_clock=lambda: now[0])
    affinity.claim(["Alice@example.com", "gvline@example.com"])
    assert path.read_text().splitlines() == [
        "alice@example.com\tsip:10.0.0.2:5060\t1030",
        "gvline@example.com\tsip:10.0.0.2:5060\t1030",
    ]
    assert affinity.server_for("alice@EXAMPLE.com") == "sip:10.0.0.2:5060"
    now[0] = 1031.0
    affinity.claim(["bob@example.com"])
    assert path.read_text().splitlines() == ["bob@example.com\tsip:10.0.0.2:5060\t1061"]
    assert affinity.server_for("alice@example.com") is None


def test_reoffer_keeps_our_origin_with_a_new_version() -> None:
    offer = placeholder_offer("127.0.0.1")
    assert b"m=audio 9 RTP/AVP 0 8 101" in offer and b"a=sendrecv" in offer
    answer = b"v=0\r\no=bob 77 3 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    ours = next(line for line in offer.split(b"\r\n") if line.startswith(b"o="))
    rewritten = with_origin(answer, offer)
    origin = next(line for line in rewritten.split(b"\r\n") if line.startswith(b"o="))
    assert origin.split(b" ")[:2] == ours.split(b" ")[:2] and origin.split(b" ")[2] == b"2"
    assert b"m=audio 4000" in rewritten
