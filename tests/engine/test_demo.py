"""``dialspell demo`` runs a real call through a dialplan and shows what was stored."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path


def test_demo_places_a_call_through_the_dialplan_and_prints_trace_and_cdrs() -> None:
    started = time.monotonic()
    demo = subprocess.run(["dialspell", "demo", "--hold", "0.5"], capture_output=True, text=True,
                          timeout=60)
    elapsed = time.monotonic() - started
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    steps = [line for line in out.splitlines() if line.startswith("[")]
    assert [s.split("]")[0] for s in steps] == [f"[{n}/8" for n in range(1, 9)]
    # Both phones registered with digest, the call was challenged, rang and was answered.
    assert "alice: registered sip:alice@127.0.0.1" in out
    assert "bob: registered sip:bob@127.0.0.1" in out
    assert "alice: 407 Proxy Authentication Required: answering the digest challenge" in out
    assert "alice: 180 Ringing" in out
    assert "bob: ACK received: call established" in out
    assert "bob: BYE received: 200 OK, call ended" in out
    assert "alice: BYE answered 200 OK" in out
    # The text went to bob's phone through the server, once alice had answered the challenge.
    assert "bob: message from sip:alice@127.0.0.1: 'Can you hear me?'" in out
    assert "alice: MESSAGE answered 200 OK" in out
    # The stored trace holds the dialplan's own log line between its bracketing lines.
    trace = out[out.index("[7/8]"):out.index("[8/8]")]
    assert "Dialplan trace commenced at" in trace
    assert "DialPlan=> alice is calling bob" in trace
    assert "Dialplan trace completed at" in trace
    # One CDR per leg, both answered and hung up by alice's BYE.
    cdrs = [line.split() for line in out[out.index("[8/8]"):].splitlines()[2:4]]
    assert [row[0] for row in cdrs] == ["caller", "callee"]
    assert all(row[4] == "200" for row in cdrs)
    assert "demo finished: the call went through the dialplan" in out
    assert elapsed < 30


def test_demo_keep_leaves_the_data_directory_for_the_admin_commands() -> None:
    demo = subprocess.run(["dialspell", "demo", "--hold", "0", "--keep"], capture_output=True,
                          text=True, timeout=60)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    kept = Path(demo.stdout.strip().splitlines()[-1].removeprefix("data directory kept: "))
    try:
        listed = subprocess.run(["dialspell", "dialplan", "list", "--data-dir", str(kept)],
                                capture_output=True, text=True, timeout=60)
        assert "alice-out" in listed.stdout and "alice@local:out" in listed.stdout
    finally:
        shutil.rmtree(kept)
