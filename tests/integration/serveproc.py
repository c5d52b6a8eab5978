"""``dialspell serve`` as an operator runs it: a real subprocess of the console script."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import trio

from tests.conftest import free_port


def console_script() -> str:
    """The installed ``dialspell`` script of this interpreter's environment (a PATH
    lookup may find a version manager's shim first, or another installation)."""
    beside = Path(sys.executable).parent / "dialspell"
    if beside.exists():
        return str(beside)
    found = shutil.which("dialspell")
    assert found is not None, "the dialspell console script is not installed (pip install -e .)"
    return found


class ServeProcess:
    """One ``dialspell serve`` on 127.0.0.1 with free ports and its own data directory.

    ``start`` waits for the ready line; ``stop`` (SIGTERM, then SIGKILL) always runs."""

    def __init__(self, data_dir: Path, *, sip_port: int | None = None, http_port: int | None = None) -> None:
        self.data_dir = data_dir
        self.sip_port = sip_port or free_port()
        self.http_port = http_port or free_port(socket.SOCK_STREAM)
        self.process: trio.Process | None = None
        self.ready_line = ""
        self.stdout = b""
        self.log_path = data_dir.parent / f"serve-{self.sip_port}.log"

    @property
    def sip(self) -> tuple[str, int]:
        return ("127.0.0.1", self.sip_port)

    @property
    def argv(self) -> list[str]:
        return [
            console_script(), "serve", "--data-dir", str(self.data_dir), "--sip-host", "127.0.0.1",
            "--sip-port", str(self.sip_port), "--http-port", str(self.http_port),
            "--domain", "127.0.0.1",
        ]

    async def start(self, limit: float = 15.0) -> str:
        """Start the server and return its ready line (the first line on stdout)."""
        log = self.log_path.open("ab")
        self.process = await trio.lowlevel.open_process(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log
        )
        log.close()
        assert self.process.stdout is not None
        with trio.fail_after(limit):
            while b"\n" not in self.stdout:
                chunk = await self.process.stdout.receive_some(4096)
                if not chunk:
                    code = await self.process.wait()
                    raise RuntimeError(
                        f"dialspell serve exited ({code}) before it was ready: {self.stdout!r}\n"
                        f"{self.log_path.read_text(errors='replace')}"
                    )
                self.stdout += chunk
        self.ready_line = self.stdout.split(b"\n", 1)[0].decode()
        return self.ready_line

    async def rest_of_stdout(self, limit: float = 5.0) -> bytes:
        """Everything the process writes to stdout until it closes it."""
        assert self.process is not None and self.process.stdout is not None
        with trio.fail_after(limit):
            while chunk := await self.process.stdout.receive_some(4096):
                self.stdout += chunk
        return self.stdout

    async def terminate(self, limit: float = 5.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(limit):
            return await self.process.wait()

    async def kill(self) -> int:
        assert self.process is not None
        self.process.kill()
        with trio.fail_after(5):
            return await self.process.wait()

    async def stop(self) -> None:
        """Make sure the process is gone (for ``finally`` blocks)."""
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(5):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            with trio.fail_after(5):
                await self.process.wait()
