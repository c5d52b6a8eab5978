"""Shared helpers for the sandbox tests: a recording host and the leak checks."""

from __future__ import annotations

import re
from pathlib import Path

import trio

from sandbox import ExecutionResult, HostReply, PlainValue

HOSTILE_DIR = Path(__file__).parent / "hostile"
SHARED_DIR = Path(__file__).resolve().parents[2].parent / "shared"
REQUEST: dict[str, object] = {
    "Method": "INVITE",
    "URI": {"User": "1234", "Host": "example.com"},
    "Header": {
        "From": {"Name": "Alice", "URI": {"User": "alice", "Host": "example.org"}, "Tag": "t1"},
        "CallId": "abc@host",
        "All": [["From", "<sip:alice@example.org>;tag=t1"], ["X-Account", "77"]],
        "UnknownHeaders": ["X-Account: 77"],
    },
}
CONTEXT: dict[str, object] = {"Username": "joe", "DialPlanName": "default", "Direction": "In"}

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
_HOST_PATHS = ("/work/", "site-packages", "/root/", "sandbox/", ".py\"", "/usr/lib")


class RecordingHost:
    """A Host that records calls; Dial fails with 480 unless told to answer."""

    def __init__(self, *, block: bool = False, answer: bool = False, expected: int = 0) -> None:
        self.calls: list[tuple[str, tuple[PlainValue, ...]]] = []
        self.lines: list[str] = []
        self.block = block
        self.answer = answer
        self.parked = 0
        self.release = trio.Event()
        self.expected = expected
        self.all_parked = trio.Event()

    async def call(self, name: str, args: tuple[PlainValue, ...]) -> HostReply:
        self.calls.append((name, args))
        if self.block:
            self.parked += 1
            if self.parked >= self.expected:
                self.all_parked.set()
            await self.release.wait()
        if name == "Dial":
            if self.answer:
                return HostReply(end=True)
            return HostReply(
                value="Failed", failure_status=480, failure_reason="Temporarily Unavailable"
            )
        if name == "Respond":
            status = args[0]
            assert type(status) is int
            if 200 <= status < 300:
                return HostReply(error="sys.Respond(): 2xx is not allowed")
            return HostReply(end=status >= 300)
        return HostReply()

    def log(self, line: str) -> None:
        self.lines.append(line)


def expectation(path: Path) -> str:
    first = path.read_text(encoding="utf-8", errors="replace").splitlines()[0]
    assert first.startswith("# expect: "), path
    return first.removeprefix("# expect: ").strip()


def leaks(texts: list[str]) -> list[str]:
    """Everything in what the author sees that must never be there."""
    found = []
    for text in texts:
        if "PWNED" in text or "LEAKED" in text:
            found.append(f"attack marker: {text[:120]!r}")
        if _ADDRESS.search(text):
            found.append(f"address: {text[:120]!r}")
        for path in _HOST_PATHS:
            if path in text:
                found.append(f"host path {path!r}: {text[:120]!r}")
    return found


def visible_text(result: ExecutionResult) -> list[str]:
    texts = list(result.log)
    if result.error is not None:
        texts.append(result.error.message)
    return texts
