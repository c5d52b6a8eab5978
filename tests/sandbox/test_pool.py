"""The pool's guarantees: isolation, fairness, parked executions, crashes, deadlines."""

from __future__ import annotations

import os
import signal
import statistics
import sys
from functools import partial
from pathlib import Path

import trio

from sandbox import HostReply, LimitKind, Limits, Outcome, SandboxPool
from sandbox.results import PlainValue
from tests.sandbox.conftest import CONTEXT, REQUEST, RecordingHost

TRIVIAL = 'sys.Log("to %s" % req.URI.User)\n'
NESTED_TUPLE = "t = ()\nfor i in range(400000):\n    t = (t,)\nd = {t: 1}\nsys.Log('survived')\n"


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def test_a_trivial_dialplan_runs_and_logs() -> None:
    async with SandboxPool(workers=1) as pool:
        host = RecordingHost()
        result = await pool.run(TRIVIAL, request=REQUEST, context=CONTEXT, host=host)
    assert result.outcome is Outcome.COMPLETED
    assert result.log == ("to 1234",)
    assert host.lines == ["to 1234"]


async def test_globals_are_fresh_for_every_execution() -> None:
    source = "try:\n    seen\n    sys.Log('LEAKED')\nexcept NameError:\n    seen = 1\n    sys.Log('fresh')\n"
    async with SandboxPool(workers=1) as pool:
        logs = [
            (await pool.run(source, request=REQUEST, context=CONTEXT, host=RecordingHost())).log
            for _ in range(3)
        ]
    assert logs == [("fresh",)] * 3


async def test_trivial_dialplans_stay_fast_next_to_twenty_hostile_ones() -> None:
    hostile_sources = [
        "while True:\n    pass\n",
        "x = 'a' * 10 ** 10\n",
        "l = [0]\nwhile True:\n    l.extend(l)\n",
        NESTED_TUPLE,
        "def f(n):\n    return f(n + 1)\nwhile True:\n    try:\n        f(0)\n    except RecursionError:\n        pass\n",
    ]
    latencies: list[float] = []
    async with SandboxPool(workers=2) as pool:
        for _ in range(50):  # warm the code cache
            await pool.run(TRIVIAL, request=REQUEST, context=CONTEXT, host=RecordingHost())
        hostile_done = trio.Event()

        async def hostile() -> None:
            async with trio.open_nursery() as nursery:
                for index in range(20):
                    source = hostile_sources[index % len(hostile_sources)]
                    nursery.start_soon(
                        partial(pool.run, source, request=REQUEST, context=CONTEXT, host=RecordingHost())
                    )
            hostile_done.set()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hostile)
                await trio.sleep(0.2)  # let the spinners get going
                while not hostile_done.is_set() and len(latencies) < 400:
                    start = trio.current_time()
                    result = await pool.run(TRIVIAL, request=REQUEST, context=CONTEXT, host=RecordingHost())
                    latencies.append(trio.current_time() - start)
                    assert result.outcome is Outcome.COMPLETED
        assert pool.crashes == 0
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert len(latencies) >= 50
    median = statistics.median(latencies)
    # Without fair scheduling a trivial run waits behind a spinner until its whole CPU
    # budget (1 s) is spent.  On this 2-core box the figures are p99 1-9 ms, median
    # ~0.5 ms, alone or late in a full suite run; with other processes loading the
    # machine p99 reached 72 ms (docs/sandbox.md).
    assert p99 < 0.25 and median < 0.05, f"p99 {p99 * 1000:.1f} ms, median {median * 1000:.2f} ms"


async def test_a_thousand_parked_executions_need_few_processes_and_little_memory() -> None:
    host = RecordingHost(block=True, expected=1000)
    source = 'sys.Log("ringing")\nsys.Dial("${dst}@provider")\nsys.Log("after")\n'
    async with SandboxPool(workers=2) as pool:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(1000):
                    nursery.start_soon(
                        lambda: pool.run(source, request=REQUEST, context=CONTEXT, host=host)
                    )
                await host.all_parked.wait()
                pids = [os.getpid(), *pool.worker_pids()]
                total = sum(rss(pid) for pid in pids)
                host.release.set()
    assert len(pids) == 3
    assert total < 2**30, f"{total / 2**20:.0f} MiB"
    workers_only = total - rss(os.getpid())
    assert workers_only < 400 * 2**20


async def test_a_segfaulting_worker_crashes_only_its_executions_and_is_replaced() -> None:
    # With an ordinary 8 MiB stack the nested-tuple hash (gh-154318) does segfault;
    # the default Limits give workers a stack big enough that it cannot.
    limits = Limits(stack_bytes=8 * 2**20)
    async with SandboxPool(workers=1, limits=limits) as pool:
        before = pool.worker_pids()
        result = await pool.run(NESTED_TUPLE, request=REQUEST, context=CONTEXT, host=RecordingHost())
        assert result.outcome is Outcome.CRASHED
        assert result.log == ()
        with trio.fail_after(20):
            after = await pool.run(TRIVIAL, request=REQUEST, context=CONTEXT, host=RecordingHost())
        assert after.outcome is Outcome.COMPLETED
        assert pool.worker_pids() != before
        assert pool.crashes == 1


async def test_a_frozen_worker_is_killed_once_silent_for_the_stall_time() -> None:
    limits = Limits(stall_seconds=1.0, cpu_seconds=30.0, wall_seconds=30.0)
    async with SandboxPool(workers=1, limits=limits) as pool:
        (pid,) = pool.worker_pids()
        outcome: list[Outcome] = []

        async def spin() -> None:
            result = await pool.run("while True:\n    pass\n", request=REQUEST, context=CONTEXT, host=RecordingHost())
            outcome.append(result.outcome)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                started = trio.current_time()
                nursery.start_soon(spin)
                await trio.sleep(0.3)
                os.kill(pid, signal.SIGSTOP)  # runnable work, and not a word from it
        assert outcome == [Outcome.CRASHED]
        # (Silent since the run was sent, before its first heartbeat was due.)
        assert 1.0 <= trio.current_time() - started < 3.0
        assert pool.crashes == 1
        with trio.fail_after(20):
            after = await pool.run(TRIVIAL, request=REQUEST, context=CONTEXT, host=RecordingHost())
        assert after.outcome is Outcome.COMPLETED and pid not in pool.worker_pids()


async def test_a_worker_that_keeps_reporting_outlives_the_stall_time() -> None:
    # The worker ticks every 0.5 s while it runs a script: three seconds of CPU at a
    # stall time of 1.2 s end at the CPU limit, not with the watchdog's kill.
    limits = Limits(stall_seconds=1.2, cpu_seconds=3.0, wall_seconds=30.0)
    async with SandboxPool(workers=1, limits=limits) as pool:
        with trio.fail_after(20):
            result = await pool.run("while True:\n    pass\n", request=REQUEST, context=CONTEXT, host=RecordingHost())
        assert result.outcome is Outcome.LIMIT_EXCEEDED and result.limit is LimitKind.CPU
        assert pool.crashes == 0


async def test_the_default_stack_prevents_the_nested_tuple_segfault() -> None:
    async with SandboxPool(workers=1) as pool:
        result = await pool.run(NESTED_TUPLE, request=REQUEST, context=CONTEXT, host=RecordingHost())
        assert result.outcome is Outcome.COMPLETED
        assert result.log == ("survived",)
        assert pool.crashes == 0


async def test_cancelling_the_caller_ends_a_parked_execution_promptly() -> None:
    host = RecordingHost(block=True)
    async with SandboxPool(workers=1) as pool:
        with trio.move_on_after(0.5) as scope:
            await pool.run('sys.Dial("1@x")\nsys.Log("after")', request=REQUEST, context=CONTEXT, host=host)
        assert scope.cancelled_caught
        assert host.parked == 1
        with trio.fail_after(2):
            result = await pool.run(TRIVIAL, request=REQUEST, context=CONTEXT, host=RecordingHost())
        assert result.outcome is Outcome.COMPLETED


async def test_the_wall_limit_ends_a_script_stuck_in_a_host_call() -> None:
    host = RecordingHost(block=True)
    limits = Limits(wall_seconds=0.3)
    async with SandboxPool(workers=1, limits=limits) as pool:
        with trio.fail_after(5):
            result = await pool.run('sys.DBRead("k")\nsys.Log("late")', request=REQUEST, context=CONTEXT, host=host)
    assert result.outcome is Outcome.LIMIT_EXCEEDED
    assert result.limit is LimitKind.WALL


async def test_dial_extends_the_wall_deadline() -> None:
    class SlowRing(RecordingHost):
        async def call(self, name: str, args: tuple[PlainValue, ...]) -> HostReply:
            await trio.sleep(0.6)
            return HostReply(value="NoAnswer", failure_status=408, failure_reason="Request Timeout")

    async with SandboxPool(workers=1, limits=Limits(wall_seconds=0.3)) as pool:
        result = await pool.run(
            'r = sys.Dial("1@x", 5)\nsys.Log("%s %s" % (r, sys.LastFailureStatus))',
            request=REQUEST, context=CONTEXT, host=SlowRing(),
        )
    assert result.outcome is Outcome.COMPLETED
    assert result.log == ("NoAnswer 408",)


async def test_extend_script_timeout_moves_the_wall_deadline_both_ways() -> None:
    class SlowRead(RecordingHost):
        async def call(self, name: str, args: tuple[PlainValue, ...]) -> HostReply:
            if name == "DBRead":
                await trio.sleep(0.6)
            return await super().call(name, args)

    async with SandboxPool(workers=1, limits=Limits(wall_seconds=0.3)) as pool:
        # Later: a 0.6 s host call fits in the 0.3 s limit once extended to 5 s.
        longer = await pool.run('sys.ExtendScriptTimeout(5)\nsys.DBRead("k")\nsys.Log("done")',
                                request=REQUEST, context=CONTEXT, host=SlowRead())
        # Sooner: "now + seconds" also shortens it, so the same call no longer fits.
        with trio.fail_after(5):
            shorter = await pool.run('sys.ExtendScriptTimeout(0.1)\nsys.Log("x")\nsys.DBRead("k")',
                                     request=REQUEST, context=CONTEXT, host=SlowRead())
        plain = await pool.run('sys.DBRead("k")\nsys.Log("done")',
                               request=REQUEST, context=CONTEXT, host=SlowRead())
    assert longer.outcome is Outcome.COMPLETED and longer.log == ("done",)
    assert shorter.outcome is Outcome.LIMIT_EXCEEDED and shorter.limit is LimitKind.WALL
    assert plain.outcome is Outcome.LIMIT_EXCEEDED and plain.limit is LimitKind.WALL


async def test_a_host_end_reply_stops_the_script_at_the_call() -> None:
    async with SandboxPool(workers=1) as pool:
        result = await pool.run(
            'sys.Log("before")\nsys.Dial("1@x")\nsys.Log("PWNED after an answered dial")',
            request=REQUEST, context=CONTEXT, host=RecordingHost(answer=True),
        )
    assert result.outcome is Outcome.ENDED_BY_HOST
    assert result.log == ("before",)


async def test_a_worker_sending_garbage_is_killed_and_replaced() -> None:
    fake = Path(__file__).parent / "fake_worker.py"

    class GarbagePool(SandboxPool):
        def _command(self) -> list[str]:
            return [sys.executable, str(fake)]

    async with GarbagePool(workers=1, limits=Limits(spawn_timeout_seconds=10)) as pool:
        with trio.fail_after(20):
            result = await pool.run(TRIVIAL, request=REQUEST, context=CONTEXT, host=RecordingHost())
            assert result.outcome is Outcome.CRASHED
            assert pool.crashes == 1
            # run() waits for the replacement, which is just as broken.
            again = await pool.run(TRIVIAL, request=REQUEST, context=CONTEXT, host=RecordingHost())
        assert again.outcome is Outcome.CRASHED
        assert pool.crashes == 2 and pool.spawned >= 2


async def test_compile_errors_have_lines_and_columns() -> None:
    async with SandboxPool(workers=1) as pool:
        assert await pool.compile_errors("x = 1\nsys.Log('ok')\n") == []
        errors = await pool.compile_errors("x = 1\nimport os\ntry:\n    pass\nexcept:\n    pass\n")
        big = await pool.compile_errors("#" * 70000)
        syntax = await pool.compile_errors("x = (\n")
    assert [(e.line, e.column) for e in errors] == [(2, 1), (5, 1)]
    assert "import" in errors[0].message and "except" in errors[1].message
    assert big[0].message.startswith("the dialplan is 70000 bytes")
    assert syntax[0].line == 1 and "SyntaxError" in syntax[0].message


async def test_a_worker_past_the_retirement_size_is_replaced() -> None:
    limits = Limits().replace(worker_retire_rss_bytes=1024 * 1024)  # any worker is past it
    async with SandboxPool(workers=1, limits=limits) as pool:
        for _ in range(3):
            result = await pool.run(TRIVIAL, request=REQUEST, context=CONTEXT, host=RecordingHost())
            assert result.outcome is Outcome.COMPLETED
        assert pool.spawned >= 3 and pool.crashes == 0


async def test_workers_started_by_a_large_process_do_not_retire_at_once() -> None:
    # Linux carries a process's peak resident size over fork and exec, so a worker
    # started by a server already past the retirement size must not read that peak as
    # its own (it would retire after every run and the pool would spawn without end).
    retire_at = 160 * 1024 * 1024
    ballast = bytearray(max(0, retire_at + 64 * 1024 * 1024 - rss(os.getpid())))
    ballast[:: 4096] = b"\x01" * len(range(0, len(ballast), 4096))  # make it resident
    assert rss(os.getpid()) > retire_at
    limits = Limits().replace(worker_retire_rss_bytes=retire_at)
    async with SandboxPool(workers=2, limits=limits) as pool:
        for _ in range(20):
            result = await pool.run(TRIVIAL, request=REQUEST, context=CONTEXT, host=RecordingHost())
            assert result.outcome is Outcome.COMPLETED
        assert pool.spawned == 2
    del ballast
