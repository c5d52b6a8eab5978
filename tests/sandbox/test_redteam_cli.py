"""Every shared/redteam dialplan through the real CLI: ``dialspell dialplan run --json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio

from tests.sandbox.conftest import SHARED_DIR, expectation, leaks

REDTEAM = sorted((SHARED_DIR / "redteam").glob("*.py"))

ALLOWED = {
    "blocked-at-compile": {"compile_error"},
    # A CPU or memory limit that stops the script before its dangerous step contains it
    # too (41's million-deep tuple takes about a second of CPU to build; on a loaded
    # machine the CPU budget can end it before the memory cap does).
    "blocked-at-runtime": {"completed", "runtime_error", "compile_error", "limit_exceeded"},
    "bounded-cpu": {"limit_exceeded", "compile_error"},
    "bounded-memory": {"limit_exceeded", "compile_error"},
    "bounded-output": {"limit_exceeded", "completed"},
}


@pytest.mark.skipif(not REDTEAM, reason="shared/redteam is not beside the checkout")
async def test_every_redteam_dialplan_meets_its_expectation() -> None:
    failures: list[str] = []
    limiter = trio.CapacityLimiter(3)

    async def attack(path: Path) -> None:
        async with limiter:
            done = await trio.run_process(
                [sys.executable, "-m", "engine.cli", "dialplan", "run", "--json",
                 "--repeat", "2", str(path)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        expect = expectation(path)
        if done.returncode != 0:
            failures.append(f"{path.name}: exit {done.returncode}: {done.stderr[-300:]!r}")
            return
        calls = [json.loads(line) for line in done.stdout.decode().splitlines()]
        if len(calls) != 2:
            failures.append(f"{path.name}: {len(calls)} JSON lines")
            return
        for call in calls:
            texts = list(call["log"]) + [call["reason"]]
            if call["error"]:
                texts.append(call["error"]["message"])
            failures.extend(f"{path.name}: {leak}" for leak in leaks(texts))
            if call["outcome"] not in ALLOWED[expect] or (
                expect == "blocked-at-runtime"
                and call["outcome"] == "limit_exceeded"
                and call["limit"] not in ("cpu", "memory")
            ):
                failures.append(f"{path.name}: {expect} but {call['outcome']} {call['limit']}")
            if expect == "bounded-output":
                assert sum(len(line) for line in call["log"]) <= 16384 + 1024
            for key in ("outcome", "status", "reason", "log", "error", "limit"):
                assert key in call

    with trio.fail_after(170):
        async with trio.open_nursery() as nursery:
            for path in REDTEAM:
                nursery.start_soon(attack, path)
    assert not failures, "\n".join(failures)
