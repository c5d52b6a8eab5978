"""Sandbox benchmark: round trip, throughput, and RSS with 1,000 parked executions.

Run ``bench/sandbox`` (or ``python bench/sandbox_bench.py``).  Prints the machine and
the figures; targets: p50 <= 0.2 ms, p99 <= 1 ms, >= 5,000 executions/s on 2 workers,
<= 1 GiB (pool + workers) with 1,000 executions blocked in a host call.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox import HostReply, SandboxPool  # noqa: E402
from sandbox.results import PlainValue  # noqa: E402

TRIVIAL = 'sys.Log("call to %s" % req.URI.User)\n'
BLOCKING = 'sys.Log("ringing")\nsys.Dial("${dst}@provider")\nsys.Log("never")\n'
REQUEST = {"Method": "INVITE", "URI": {"User": "1234", "Host": "example.com"}}
CONTEXT = {"Username": "joe", "DialPlanName": "default", "Direction": "In"}


class QuietHost:
    async def call(self, name: str, args: tuple[PlainValue, ...]) -> HostReply:
        return HostReply()

    def log(self, line: str) -> None:
        pass


class RingingHost:
    """Every Dial rings until released."""

    def __init__(self, expected: int) -> None:
        self.release = trio.Event()
        self.all_ringing = trio.Event()
        self.ringing = 0
        self.expected = expected

    async def call(self, name: str, args: tuple[PlainValue, ...]) -> HostReply:
        self.ringing += 1
        if self.ringing >= self.expected:
            self.all_ringing.set()
        await self.release.wait()
        return HostReply(end=True)

    def log(self, line: str) -> None:
        pass


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.python_implementation()} {platform.python_version()} on "
        f"{platform.system()} {platform.release()}, {os.cpu_count()} cpus ({cpu}), "
        f"trio {trio.__version__}"
    )


async def main() -> None:
    print(f"machine: {machine()}")
    host = QuietHost()
    async with SandboxPool(workers=2) as pool:
        for _ in range(500):
            await pool.run(TRIVIAL, request=REQUEST, context=CONTEXT, host=host)
        samples = []
        for _ in range(5000):
            start = time.perf_counter()
            await pool.run(TRIVIAL, request=REQUEST, context=CONTEXT, host=host)
            samples.append(time.perf_counter() - start)
        samples.sort()
        p50 = statistics.median(samples) * 1000
        p99 = samples[int(len(samples) * 0.99)] * 1000
        print(f"round trip (cached trivial dialplan, sequential): p50 {p50:.3f} ms, p99 {p99:.3f} ms")

        total = 20000
        concurrency = 64
        done = 0

        async def client(count: int) -> None:
            nonlocal done
            for _ in range(count):
                await pool.run(TRIVIAL, request=REQUEST, context=CONTEXT, host=host)
                done += 1

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(client, total // concurrency)
        elapsed = time.perf_counter() - start
        print(f"throughput (2 workers, {concurrency} concurrent callers): {done / elapsed:,.0f} executions/s")

        parked = 1000
        ringing = RingingHost(parked)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(parked):
                nursery.start_soon(
                    lambda: pool.run(BLOCKING, request=REQUEST, context=CONTEXT, host=ringing)
                )
            await ringing.all_ringing.wait()
            park_time = time.perf_counter() - start
            pids = [os.getpid(), *pool.worker_pids()]
            rss = sum(rss_bytes(pid) for pid in pids)
            print(
                f"{parked} executions parked in sys.Dial in {park_time:.2f} s: "
                f"{len(pids)} processes, RSS {rss / 2**20:.1f} MiB "
                f"(parent {rss_bytes(os.getpid()) / 2**20:.1f} MiB)"
            )
            ringing.release.set()


if __name__ == "__main__":
    trio.run(main)
