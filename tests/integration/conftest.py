"""Fixtures of the integration suite: in-process servers with chosen settings."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from engine.config import ServerConfig
from engine.server import Server
from tests.conftest import free_port


@asynccontextmanager
async def running_server(data_dir: Path, **settings: Any) -> AsyncIterator[Server]:
    """A real server on 127.0.0.1 (free SIP and HTTP ports), stopped on exit.

    ``settings`` override :class:`ServerConfig` fields (expiries, keep-alive interval...)."""
    defaults: dict[str, Any] = {"keepalive_interval": 1.0, "sweep_interval": 1.0, "sandbox_workers": 1}
    config = ServerConfig(
        data_dir=data_dir,
        sip_host="127.0.0.1",
        sip_port=free_port(),
        http_port=free_port(socket.SOCK_STREAM),
        domain="127.0.0.1",
        **{**defaults, **settings},
    )
    srv = Server(config)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(srv.run)
            yield srv
            nursery.cancel_scope.cancel()
    finally:
        srv.store.close()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """A real dialspell server on 127.0.0.1 (keep-alives and sweeps every second)."""
    async with running_server(tmp_path / "data") as srv:
        yield srv
