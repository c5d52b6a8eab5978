"""The ``dialspell`` client commands, run as the console script against a real server."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import trio

from engine.cli_client import format_event, use_colour
from engine.events import Event
from tests.web.conftest import PASSWORD, WebServer

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "XDG_CONFIG_HOME")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["PYTHONPATH"] = str(ROOT)
    return env


async def dialspell(tmp_path: Path, *argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    return await trio.run_process([sys.executable, "-m", "engine.cli", *argv], stdin=stdin,
                                  capture_stdout=True, capture_stderr=True, check=False,
                                  env=_env(tmp_path), cwd=work)


async def test_login_push_pull_trace_cdr_logout(web: WebServer, tmp_path: Path) -> None:
    alice = web.add_customer("alice")
    not_yet = await dialspell(tmp_path, "dialplan", "pull", "default")
    assert not_yet.returncode == 1 and b"dialspell login" in not_yet.stderr

    # Nothing to ask on (standard input closed): a message, not a traceback.
    unasked = await dialspell(tmp_path, "login", "--server", web.url)
    assert unasked.returncode == 1
    assert unasked.stderr.endswith(b"give --username, and the password on standard input with --password-stdin\n")
    bad = await dialspell(tmp_path, "login", "--server", web.url, "--username", "alice", "--password-stdin",
                          stdin=b"wrong\n")
    assert bad.returncode == 1 and b"check the user name and password" in bad.stderr
    login = await dialspell(tmp_path, "login", "--server", web.url, "--username", "alice", "--password-stdin",
                            stdin=PASSWORD.encode() + b"\n")
    assert login.returncode == 0, login.stderr
    session_file = tmp_path / "config" / "dialspell" / "session.json"
    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
    assert json.loads(session_file.read_text())["server"] == web.url

    source = tmp_path / "plan.py"
    source.write_text("x = 1\nimport os\n")
    refused = await dialspell(tmp_path, "dialplan", "push", "main", str(source))
    assert refused.returncode == 1
    assert f"{source}:2:".encode() in refused.stderr
    source.write_text('sys.Log("hello")\n')
    pushed = await dialspell(tmp_path, "dialplan", "push", "main", str(source))
    assert pushed.returncode == 0 and b"created" in pushed.stdout
    pulled = await dialspell(tmp_path, "dialplan", "pull", "main")
    assert pulled.stdout == b'sys.Log("hello")\n'
    missing = await dialspell(tmp_path, "dialplan", "pull", "nothing")
    assert missing.returncode == 1 and b"no such dialplan" in missing.stderr

    await web.store.write(lambda conn: conn.execute(
        "INSERT INTO traces (id, customer_id, call_id, dialplan, created, text) "
        "VALUES ('trace1', ?, 'call1', 'main', ?, 'DialPlan=> hello')", (alice.id, time.time())))
    await web.store.write(lambda conn: conn.execute(
        "INSERT INTO cdrs (id, customer_id, call_id, direction, leg, from_uri, to_uri, created, status, reason) "
        "VALUES ('cdr1', ?, 'call1', 'out', 'caller', 'sip:alice@local', 'sip:555@local', ?, 486, 'Busy Here')",
        (alice.id, time.time())))
    traces = await dialspell(tmp_path, "trace", "list", "--json")
    assert [t["id"] for t in json.loads(traces.stdout)] == ["trace1"]
    shown = await dialspell(tmp_path, "trace", "show", "trace1")
    assert b"DialPlan=> hello" in shown.stdout
    cdrs = await dialspell(tmp_path, "cdr", "list")
    assert b"sip:alice@local -> sip:555@local  486 Busy Here" in cdrs.stdout

    logout = await dialspell(tmp_path, "logout")
    assert logout.returncode == 0 and not session_file.exists()
    assert web.store.query_all("SELECT COUNT(*) FROM web_sessions")[0][0] == 0


async def test_trace_and_cdr_commands_read_a_data_dir_without_a_server(web: WebServer, tmp_path: Path) -> None:
    alice = web.add_customer("alice")
    await web.store.write(lambda conn: conn.execute(
        "INSERT INTO traces (id, customer_id, call_id, dialplan, created, text) "
        "VALUES ('local1', ?, 'c', 'default', 1, 'from the data dir')", (alice.id,)))
    data_dir = str(web.store.data_dir)
    listed = await dialspell(tmp_path, "trace", "list", "--data-dir", data_dir)
    assert listed.returncode == 0 and b"local1" in listed.stdout
    shown = await dialspell(tmp_path, "trace", "show", "local1", "--data-dir", data_dir, "--json")
    assert json.loads(shown.stdout)["text"] == "from the data dir"
    assert (await dialspell(tmp_path, "cdr", "list", "--data-dir", data_dir)).returncode == 0
    # Neither --data-dir, nor a login, nor ./dialspell-data: say what to do.
    nowhere = await dialspell(tmp_path, "trace", "list")
    assert nowhere.returncode == 1
    assert b"--data-dir" in nowhere.stderr and b"dialspell login" in nowhere.stderr


async def test_usage_errors_exit_2_and_every_command_has_help(tmp_path: Path) -> None:
    assert (await dialspell(tmp_path, "trace")).returncode == 2
    assert (await dialspell(tmp_path, "dialplan", "push", "only-a-name")).returncode == 2
    for argv in (("login",), ("logout",), ("trace", "list"), ("trace", "show"), ("cdr", "list"),
                 ("console",), ("dialplan", "push"), ("dialplan", "pull")):
        result = await dialspell(tmp_path, *argv, "--help")
        assert result.returncode == 0 and b"usage: dialspell" in result.stdout, argv


async def test_console_follows_events_without_colour_when_not_a_terminal(web: WebServer, tmp_path: Path) -> None:
    alice = web.add_customer("alice")
    login = await dialspell(tmp_path, "login", "--server", web.url, "--username", "alice", "--password-stdin",
                            stdin=PASSWORD.encode() + b"\n")
    assert login.returncode == 0
    work = tmp_path / "cwd"
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "engine.cli", "console", "--types", "dialplan"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env(tmp_path), cwd=work)
    assert process.stdout is not None
    output = b""
    try:
        with trio.fail_after(20):
            # The subscriber is another process: nothing to wait on but the bus's state.
            while not web.events.has_subscribers(alice.id):  # noqa: ASYNC110
                await trio.sleep(0.05)
            web.events.publish(Event(owner=alice.id, type="call", time=time.time(), data={"state": "x"}))
            web.events.publish(Event(owner=alice.id, type="dialplan", time=time.time(),
                                     data={"dialplan": "main", "line": "hello console"}))
            while b"hello console" not in output:
                output += await process.stdout.receive_some(4096)
    finally:
        process.kill()
        await process.wait()
    assert b"dialplan  main: hello console" in output
    assert b"\x1b[" not in output and b"state" not in output


def test_colours_only_on_a_terminal_without_no_color() -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    assert use_colour(Tty(), {}) is True
    assert use_colour(Tty(), {"NO_COLOR": "1"}) is False
    assert use_colour(sys.stderr if not sys.stderr.isatty() else object(), {}) is False
    line = format_event({"type": "registrar", "time": 0, "kind": "registered", "aor": "a@local"}, colour=True)
    assert "\x1b[32m" in line and "kind=registered aor=a@local" in line
