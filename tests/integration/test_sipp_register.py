"""SIPp registers 1,000 accounts with digest authentication, none failing."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import trio

from engine.server import Server
from tests.conftest import SHARED, free_port, require_tool

ACCOUNTS = 1000


def sipp_errors(directory: Path) -> str:
    """The tail of SIPp's -trace_err logs, for the failure message."""
    return "".join(p.read_text(errors="replace")[-2000:] for p in directory.glob("*_errors.log"))


async def test_sipp_registers_1000_accounts(server: Server, tmp_path: Path) -> None:
    sipp = require_tool("sipp")
    now = time.time()
    server.store.add_customer("load", "console-pw", now=now)
    for i in range(ACCOUNTS):
        server.store.add_account(f"u{i}", "local", customer="load", password="load-pw", now=now)
    users = tmp_path / "users.csv"
    with trio.fail_after(30):
        made = await trio.run_process(
            [sys.executable, str(SHARED / "sipp" / "make_users.py"), "u", str(ACCOUNTS), "load-pw"],
            capture_stdout=True)
    users.write_bytes(made.stdout)
    host, port = server.sip_address or ("", 0)
    argv = [sipp, "-sf", str(SHARED / "sipp" / "reg_auth.xml"), "-inf", str(users),
            f"{host}:{port}", "-i", "127.0.0.1", "-p", str(free_port()),
            "-m", str(ACCOUNTS), "-r", "200", "-nostdin", "-trace_err"]
    with trio.fail_after(90):
        result = await trio.run_process(argv, cwd=tmp_path, capture_stdout=True,
                                        capture_stderr=True, check=False)
    assert result.returncode == 0, (result.stdout[-3000:] + result.stderr[-2000:]).decode() + sipp_errors(tmp_path)

    now = time.time()
    registered = [i for i in range(ACCOUNTS) if server.registrar.lookup(f"u{i}@127.0.0.1", now)]
    assert len(registered) == ACCOUNTS
    assert server.registrar.binding_count() == ACCOUNTS
    # And they are in SQLite, not only in memory.
    (stored,) = server.store.query_one("SELECT COUNT(*) FROM bindings") or (0,)
    assert stored == ACCOUNTS
