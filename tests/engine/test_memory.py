"""The server hands memory it has freed back to the OS."""

from __future__ import annotations

import os

import pytest
import trio

from engine.server import malloc_trim, release_free_memory


def resident_bytes() -> int:
    with open(f"/proc/{os.getpid()}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


@pytest.mark.skipif(malloc_trim() is None, reason="the C library has no malloc_trim")
async def test_freed_memory_between_live_blocks_goes_back_to_the_os() -> None:
    # 64 MiB in blocks too big for Python's own allocator, then every block freed but
    # one in 32: what is freed lies between live blocks, where the C allocator keeps it.
    blocks = [bytes(1024) + bytes([i % 256]) for i in range(64 * 1024)]
    kept = blocks[::32]
    del blocks
    held = resident_bytes()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_free_memory, 0.05)
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    released = held - resident_bytes()
    assert released > 32 * 1024 * 1024, f"only {released / 2**20:.1f} MiB given back"
    assert len(kept) == 2048
