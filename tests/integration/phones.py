"""Real phones for tests: baresip driven over its ctrl_tcp interface (netstring JSON)."""

from __future__ import annotations

import json
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import trio

from tests.conftest import free_port, require_tool


def _netstring(payload: bytes) -> bytes:
    return str(len(payload)).encode() + b":" + payload + b","


class Baresip:
    """One baresip process with one account, auto-answering, media from a WAV file."""

    def __init__(
        self,
        workdir: Path,
        *,
        user: str,
        password: str,
        server: tuple[str, int],
        regint: int = 60,
        domain: str = "127.0.0.1",
        extra_account_params: str = "",
        transport: str = "udp",
    ) -> None:
        self.binary = require_tool("baresip")
        self.dir = workdir / f"baresip-{user}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sip_port = free_port()
        self.ctrl_port = free_port()
        self.user = user
        self.events: list[dict[str, Any]] = []
        self.process: trio.Process | None = None
        self._stream: trio.SocketStream | None = None
        self._buffer = b""
        self._responses: dict[str, dict[str, Any]] = {}
        self._new_event = trio.Event()
        wav = self.dir / "tone.wav"
        if not wav.exists():
            sox = require_tool("sox")
            subprocess.run([sox, "-n", "-r", "8000", "-c", "1", "-b", "16", str(wav), "synth", "120", "sine", "440"], check=True)
        port = server[1]
        (self.dir / "config").write_text(
            "\n".join(
                [
                    f"sip_listen 127.0.0.1:{self.sip_port}",
                    "net_interface 127.0.0.1",
                    f"audio_source aufile,{wav}",
                    "audio_player aubridge,nil",
                    "audio_alert aubridge,nil",
                    "module_path /usr/lib/baresip/modules",
                    "module g711.so",
                    "module aufile.so",
                    "module aubridge.so",
                    "module_app account.so",
                    "module_app menu.so",
                    "module_app ctrl_tcp.so",
                    f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
                    "",
                ]
            )
        )
        (self.dir / "accounts").write_text(
            f"<sip:{user}@{domain}:{port};transport={transport}>;auth_pass={password};"
            f"answermode=auto;regint={regint};audio_codecs=pcmu{extra_account_params}\n"
        )
        self.log_path = self.dir / "baresip.log"

    async def start(self, nursery: trio.Nursery) -> None:
        with self.log_path.open("wb") as log:  # the child keeps its own copy
            self.process = await nursery.start(
                partial(
                    trio.run_process,
                    [self.binary, "-f", str(self.dir)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
            )
        with trio.fail_after(10):
            while True:
                try:
                    self._stream = await trio.open_tcp_stream("127.0.0.1", self.ctrl_port)
                    break
                except OSError:
                    await trio.sleep(0.05)
        nursery.start_soon(self._read_loop)

    async def _read_loop(self) -> None:
        assert self._stream is not None
        while True:
            try:
                chunk = await self._stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not chunk:
                return
            self._buffer += chunk
            while True:
                colon = self._buffer.find(b":")
                if colon == -1:
                    break
                length = int(self._buffer[:colon])
                if len(self._buffer) < colon + 1 + length + 1:
                    break
                payload = self._buffer[colon + 1 : colon + 1 + length]
                self._buffer = self._buffer[colon + 1 + length + 1 :]
                message = json.loads(payload)
                if message.get("response"):
                    self._responses[str(message.get("token"))] = message
                else:
                    self.events.append(message)
                self._new_event.set()
                self._new_event = trio.Event()

    async def command(self, command: str, params: str = "", limit: float = 5.0) -> dict[str, Any]:
        assert self._stream is not None
        token = f"t{len(self._responses)}-{command}"
        await self._stream.send_all(_netstring(json.dumps({"command": command, "params": params, "token": token}).encode()))
        with trio.fail_after(limit):
            while token not in self._responses:
                await self._new_event.wait()
        return self._responses[token]

    async def wait_event(self, type_: str, count: int = 1, limit: float = 10.0) -> list[dict[str, Any]]:
        """Wait until ``count`` events of that type have arrived; return them."""
        with trio.fail_after(limit):
            while True:
                found = [e for e in self.events if e.get("type") == type_]
                if len(found) >= count:
                    return found
                await self._new_event.wait()

    async def stop(self) -> None:
        if self.process is None:
            return
        if self._stream is not None:
            try:
                await self.command("quit", limit=2)
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        with trio.move_on_after(3):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._stream is not None:
            await self._stream.aclose()
