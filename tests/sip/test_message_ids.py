"""Tags, branches and Call-IDs: random, never handed out twice, not shared with a fork."""

from __future__ import annotations

import os
import re

from sip.message import MAGIC_COOKIE, new_branch, new_call_id, new_tag, random_hex


def test_ids_have_their_shape() -> None:
    assert re.fullmatch(r"[0-9a-f]{12}", new_tag())
    assert re.fullmatch(re.escape(MAGIC_COOKIE) + r"[0-9a-f]{24}", new_branch())
    assert re.fullmatch(r"[0-9a-f]{24}@example\.com", new_call_id("example.com"))
    assert len(random_hex(5000)) == 10000  # more than one buffer's worth at once


def test_no_token_repeats_across_buffer_refills() -> None:
    # 6-byte tags: 20,000 of them span about thirty 4 KiB reads of os.urandom.  A slice
    # handed out twice (a refill that reused the old buffer or position) would repeat.
    tags = [new_tag() for _ in range(20_000)]
    assert len(set(tags)) == len(tags)


def test_a_forked_child_does_not_repeat_its_parents_next_tokens() -> None:
    random_hex(1)  # the buffer is full of bytes not yet handed out
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, "".join(new_tag() for _ in range(4)).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 1024):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    parent = "".join(new_tag() for _ in range(4))
    assert len(child) == len(parent) == 48
    assert child.decode() != parent
