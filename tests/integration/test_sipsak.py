"""sipsak, a SIP client nobody on this team wrote: OPTIONS and digest REGISTER."""

from __future__ import annotations

import subprocess
import time

import trio

from engine.server import Server
from tests.conftest import require_tool


async def sipsak(*argv: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(20):
        return await trio.run_process([require_tool("sipsak"), *argv], capture_stdout=True,
                                      capture_stderr=True, check=False)


async def test_options_ping_is_answered(server: Server) -> None:
    host, port = server.sip_address or ("", 0)
    probe = await sipsak("--nagios-code", "-s", f"sip:{host}:{port}")
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert probe.stdout.startswith(b"SIP ok")
    verbose = await sipsak("-vv", "-s", f"sip:{host}:{port}")
    assert verbose.returncode == 0
    assert b"SIP/2.0 200 OK" in verbose.stdout
    assert b"Allow: " in verbose.stdout and b"REGISTER" in verbose.stdout


async def test_digest_register_right_and_wrong_password(server: Server) -> None:
    now = time.time()
    server.store.add_customer("acme", "console-pw", now=now)
    server.store.add_account("alice", "local", customer="acme", password="alice-pw", now=now)
    host, port = server.sip_address or ("", 0)

    def register(password: str) -> list[str]:
        return ["-U", "-C", "sip:alice@127.0.0.1:5999", "-x", "600", "-u", "alice", "-a", password,
                "-s", f"sip:alice@{host}:{port}", "-i"]

    right = await sipsak(*register("alice-pw"))
    assert right.returncode == 0, right.stdout + right.stderr
    (binding,) = server.registrar.lookup("alice@127.0.0.1", time.time())
    assert str(binding.contact) == "sip:alice@127.0.0.1:5999"
    assert 590 <= binding.remaining(time.time()) <= 600

    wrong = await sipsak(*register("not-alice-pw"))
    # sipsak: 2 = a final error answer (here 401 again after the digest answer).
    assert wrong.returncode == 2, wrong.stdout + wrong.stderr
    assert b"401 Unauthorized" in wrong.stdout + wrong.stderr
