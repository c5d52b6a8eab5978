"""Shared fixtures: a real server on loopback, free ports, and external-tool checks."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

# Where the shared test material (RFC 4475 messages, SIPp scenarios, red-team dialplans)
# lives: beside the repository checkout, locally and in CI alike.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"

TOOLS = {
    "sipp": "apt-get install -y sip-tester",
    "sipsak": "apt-get install -y sipsak",
    "baresip": "apt-get install -y baresip-core",
    "kamailio": "apt-get install -y kamailio",
    "sipvicious_svwar": "pip install sipvicious",
    "sox": "apt-get install -y sox",
}


def require_tool(name: str) -> str:
    """Path of an external program a test drives.

    Missing locally: the test is skipped with the command that installs it.  Missing in
    CI (``CI`` set): the test fails, because CI must run everything."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed: {TOOLS.get(name, 'install it')}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (SIP uses the same number for both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port: int = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


@pytest.fixture
def shared_dir() -> Path:
    assert SHARED.is_dir(), f"shared test material not found at {SHARED}"
    return SHARED


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[object]:
    """A real dialspell server on 127.0.0.1 (SIP and HTTP on free ports, data in tmp)."""
    from engine.config import ServerConfig
    from engine.server import Server

    config = ServerConfig(
        data_dir=tmp_path / "data",
        sip_host="127.0.0.1",
        sip_port=free_port(),
        http_port=free_port(socket.SOCK_STREAM),
        domain="127.0.0.1",
        keepalive_interval=1.0,
        sweep_interval=1.0,
    )
    srv = Server(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.run)
        yield srv
        nursery.cancel_scope.cancel()
    srv.store.close()
