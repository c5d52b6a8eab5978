"""sipvicious svwar, the extension enumerator attackers run, learns nothing.

svwar first sends a REGISTER for a random (unknown) extension and keeps that answer's
first line as the "bad user" fingerprint; then it reports every extension whose answer
differs.  Without ``--force`` it gives up as soon as an unknown extension is challenged
(401), because then it cannot tell; with ``--force`` every answer equals the fingerprint,
so it lists nothing.  Either way the two real accounts in the range stay hidden."""

from __future__ import annotations

import subprocess
import time

import pytest
import trio

from engine.server import Server
from tests.conftest import free_port, require_tool

REAL = ("1000", "1005")


async def svwar(server: Server, *extra: str) -> subprocess.CompletedProcess[bytes]:
    host, port = server.sip_address or ("", 0)
    # Bound to loopback; never -R (report back) or -A (fetch our address from outside).
    argv = [require_tool("sipvicious_svwar"), "-e1000-1010", "-b", "127.0.0.1", "-x", "127.0.0.1",
            "-P", str(free_port()), "-t", "0.05", "--maximumtime", "3", *extra,
            f"udp://{host}:{port}"]
    with trio.fail_after(60):
        return await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)


def add_accounts(server: Server) -> None:
    now = time.time()
    server.store.add_customer("acme", "console-pw", now=now)
    for user in REAL:
        server.store.add_account(user, "local", customer="acme", password="pw-" + user, now=now)


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
async def test_svwar_cannot_tell_real_extensions(server: Server, force: bool) -> None:
    add_accounts(server)
    before = server.endpoint.statistics()["udp_in"]
    result = await svwar(server, *(["--force"] if force else []))
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert server.endpoint.statistics()["udp_in"] > before, "svwar sent nothing: " + output
    for user in REAL:
        assert f"'{user}' exists" not in output
        assert f"| {user} " not in output  # the results table
    assert "found nothing" in output, output
    if not force:
        assert "authentication request for an unknown extension" in output
    # Nothing was registered and nobody was locked out by the scan.
    assert server.registrar.binding_count() == 0
    assert server.authenticator.lockouts(time.time()) == {}
