"""``dialspell serve`` end to end: a real subprocess, real clients, signals, restarts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import trio

from engine.storage import Store
from tests.conftest import require_tool
from tests.integration.serveproc import ServeProcess, console_script
from tests.integration.sipclient import UDPClient


async def dialspell(*argv: str) -> subprocess.CompletedProcess[bytes]:
    """The admin console script, as an operator runs it next to the server."""
    with trio.fail_after(30):
        return await trio.run_process([console_script(), *argv], capture_stdout=True,
                                      capture_stderr=True, check=False)


async def add_account(data: Path, aor: str, password: str) -> None:
    customers = await dialspell("customer", "list", "--json", "--data-dir", str(data))
    if b'"acme"' not in customers.stdout:
        made = await dialspell("customer", "add", "acme", "--password", "console-pw",
                               "--data-dir", str(data))
        assert made.returncode == 0, made.stderr
    added = await dialspell("account", "add", aor, "--password", password, "--customer", "acme",
                            "--data-dir", str(data))
    assert added.returncode == 0, added.stderr


async def test_serve_answers_sipsak_http_and_new_accounts_then_stops_on_sigterm(tmp_path: Path) -> None:
    sipsak = require_tool("sipsak")
    serve = ServeProcess(tmp_path / "data")
    try:
        ready = await serve.start()
        assert ready.startswith("dialspell ready:")
        assert f"127.0.0.1:{serve.sip_port}" in ready

        with trio.fail_after(10):
            probe = await trio.run_process(
                [sipsak, "--nagios-code", "-s", f"sip:127.0.0.1:{serve.sip_port}"],
                capture_stdout=True, capture_stderr=True, check=False)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert probe.stdout.startswith(b"SIP ok")

        async with httpx.AsyncClient(timeout=5) as http:
            health = await http.get(f"http://127.0.0.1:{serve.http_port}/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"

        # An account added by the CLI while the server runs registers at once.
        await add_account(serve.data_dir, "alice@local", "alice-pw")
        async with UDPClient(serve.sip) as phone:
            ok = await phone.register("alice", "alice-pw")
            assert ok.status == 200
            assert f"{phone.local[1]}" in (ok.headers.get("Contact") or "")
            wrong = await phone.register("alice", "not-her-password")
            assert wrong.status == 401

        code = await serve.terminate(limit=5)
        assert code == 0
        await serve.rest_of_stdout()
        # Exactly one line on stdout: the ready line.
        assert serve.stdout.decode().splitlines() == [ready]
    finally:
        await serve.stop()


async def test_bindings_and_accounts_survive_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = Store.open(data)
    store.add_customer("acme", "console-pw", now=time.time())
    for user in ("alice", "bob"):
        store.add_account(user, "local", customer="acme", password=f"{user}-pw", now=time.time())
    store.close()
    first = ServeProcess(data)
    try:
        await first.start()
        async with UDPClient(first.sip) as phone:
            contact = "<sip:alice@10.0.0.99:5060;ob>"
            ok = await phone.register("alice", "alice-pw", contact=contact, expires=600)
            assert ok.status == 200
            assert await first.kill() == -9
    finally:
        await first.stop()

    second = ServeProcess(data, sip_port=first.sip_port)
    try:
        await second.start()
        async with UDPClient(second.sip) as phone:
            # RFC 3261 10.2.3: a REGISTER without Contact lists the current bindings.
            listed = await phone.register("alice", "alice-pw", contact="", expires=None)
        assert listed.status == 200
        (binding,) = listed.headers.get_all("Contact")
        assert "sip:alice@10.0.0.99:5060;ob" in binding
        expires = int(binding.rsplit("expires=", 1)[1].split(";")[0])
        assert 590 <= expires <= 600
        listing = await dialspell("account", "list", "--json", "--data-dir", str(data))
        assert listing.returncode == 0
        assert sorted(row["address"] for row in json.loads(listing.stdout)) == [
            "alice@local", "bob@local"]
        assert await second.terminate() == 0
    finally:
        await second.stop()


async def test_serve_says_why_it_cannot_start_without_a_traceback(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as taken:
        await taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        busy = await dialspell("serve", "--sip-host", "127.0.0.1", "--sip-port", str(port),
                               "--http-port", "0", "--data-dir", data)
    assert busy.returncode == 1
    assert busy.stderr.decode() == (
        f"dialspell serve: cannot listen on SIP 127.0.0.1:{port} and HTTP 127.0.0.1:0: Address already in "
        "use. Is another server using a port? Choose others with --sip-port/--http-port.\n")
    wrong = await dialspell("serve", "--sip-port", "99999", "--data-dir", data)
    assert wrong.returncode == 2
    assert wrong.stderr.decode() == (
        "dialspell serve: sip_port 99999 is not a port number: use 1-65535 (0 picks a free one)\n")


async def test_version_is_printed_on_standard_output() -> None:
    shown = await dialspell("--version")
    assert shown.returncode == 0 and shown.stderr == b""
    assert shown.stdout.decode().startswith("dialspell 0.")


def test_the_command_line_starts_without_the_server() -> None:
    # Help, version and usage errors answer at once: building the parser leaves storage,
    # trio, httpx, the SIP stack and the sandbox to the commands that use them.
    heavy = ("trio", "httpx", "sqlite_utils", "sip.transaction", "sandbox.pool", "engine.storage")
    probe = ("import sys; from engine.cli import build_parser; build_parser(); "
             f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == ""
