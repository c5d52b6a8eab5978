"""Every hostile dialplan under tests/sandbox/hostile runs through the real worker pool.

Each file's first line says what a correct sandbox does with it (same convention as
shared/redteam).  Each file runs twice, so state carried from one call to the next
would show.  A category runs concurrently in one pool, as a busy server would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from sandbox import ExecutionResult, LimitKind, Limits, Outcome, SandboxPool
from tests.sandbox.conftest import (
    CONTEXT,
    HOSTILE_DIR,
    REQUEST,
    RecordingHost,
    expectation,
    leaks,
    visible_text,
)

CATEGORIES = (
    "blocked-at-compile",
    "blocked-at-runtime",
    "bounded-cpu",
    "bounded-memory",
    "bounded-output",
)
FILES = sorted(HOSTILE_DIR.glob("*.py"))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def problems(expect: str, result: ExecutionResult, limits: Limits) -> list[str]:
    found = leaks(visible_text(result))
    outcome = result.outcome
    if outcome is Outcome.CRASHED:
        found.append("crashed a worker")
    if expect == "blocked-at-compile":
        if outcome is not Outcome.COMPILE_ERROR or result.log:
            found.append(f"expected a compile error, got {outcome}")
        elif not result.error or not result.error.line:
            found.append("compile error without a line")
    elif expect == "blocked-at-runtime":
        # A CPU/memory limit reached before the dangerous step contains the script too.
        contained = outcome is Outcome.LIMIT_EXCEEDED and result.limit in (LimitKind.CPU, LimitKind.MEMORY)
        if outcome not in (Outcome.COMPLETED, Outcome.RUNTIME_ERROR, Outcome.COMPILE_ERROR) and not contained:
            found.append(f"expected contained run, got {outcome} {result.limit}")
    elif expect == "bounded-cpu":
        if outcome is not Outcome.COMPILE_ERROR and (
            outcome is not Outcome.LIMIT_EXCEEDED
            or result.limit not in (LimitKind.CPU, LimitKind.MEMORY, LimitKind.WALL)
        ):
            found.append(f"expected a cpu/time limit, got {outcome} {result.limit}")
        if result.cpu_seconds > limits.cpu_seconds + 0.5:
            found.append(f"used {result.cpu_seconds:.2f} s of CPU")
    elif expect == "bounded-memory":
        if outcome is not Outcome.COMPILE_ERROR and (
            outcome is not Outcome.LIMIT_EXCEEDED
            or result.limit not in (LimitKind.MEMORY, LimitKind.CPU)
        ):
            found.append(f"expected a memory limit, got {outcome} {result.limit}")
    elif expect == "bounded-output":
        total = sum(len(line.encode()) + 1 for line in result.log)
        if total > limits.output_bytes + 1024:
            found.append(f"{total} bytes of output")
        if any(len(line.encode()) > limits.line_bytes + 64 for line in result.log):
            found.append("a line longer than the line limit")
        if outcome not in (Outcome.LIMIT_EXCEEDED, Outcome.COMPLETED):
            found.append(f"unexpected outcome {outcome}")
    else:
        found.append(f"unknown expectation {expect!r}")
    return found


def test_hostile_suite_is_large_and_covers_every_category() -> None:
    seen = {expectation(path) for path in FILES}
    assert len(FILES) >= 80
    assert seen == set(CATEGORIES)


@pytest.mark.parametrize("category", CATEGORIES)
async def test_hostile_dialplans_are_contained(category: str) -> None:
    limits = Limits()
    paths = [path for path in FILES if expectation(path) == category]
    sources = {path: path.read_text(encoding="utf-8") for path in paths}
    failures: list[str] = []
    peak_rss = 0
    limiter = trio.CapacityLimiter(12)
    with trio.fail_after(120):
        async with SandboxPool(workers=2, limits=limits) as pool:

            async def attack(path: Path) -> None:
                nonlocal peak_rss
                source = sources[path]
                for attempt in (1, 2):
                    async with limiter:
                        host = RecordingHost()
                        result = await pool.run(
                            source, request=REQUEST, context=CONTEXT, host=host
                        )
                    for problem in problems(category, result, limits):
                        failures.append(f"{path.name} (run {attempt}): {problem}")
                    for pid in pool.worker_pids():
                        peak_rss = max(peak_rss, rss_bytes(pid))

            async with trio.open_nursery() as nursery:
                for path in paths:
                    nursery.start_soon(attack, path)
            # The pool still serves an ordinary dialplan after all that.
            host = RecordingHost()
            after = await pool.run(
                'sys.Log("still here")', request=REQUEST, context=CONTEXT, host=host
            )
            assert after.outcome is Outcome.COMPLETED and after.log == ("still here",)
            assert pool.crashes == 0
    assert not failures, "\n".join(failures)
    assert peak_rss < 600 * 2**20, f"a worker reached {peak_rss / 2**20:.0f} MiB"
