"""``dialspell dialplan add|list``, ``account set`` and ``provider add|list``: what an
operator types and sees, and what a running server then does with it."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from engine.cli import main
from engine.config import ServerConfig
from engine.server import Server
from engine.softphone import PhoneError, SoftPhone
from engine.storage import DIRECTORY_RECHECK, Store
from tests.conftest import free_port


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, as an operator runs it."""
    return subprocess.run(["dialspell", *argv], capture_output=True, text=True, timeout=60)


def setup_customer(data: Path) -> None:
    assert main(["customer", "add", "acme", "--password", "pw", "--data-dir", str(data)]) == 0
    assert main(["account", "add", "alice@local", "--password", "a", "--customer", "acme",
                 "--data-dir", str(data)]) == 0


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_dialplan_add_stores_the_source_and_list_shows_who_uses_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    setup_customer(data)
    source = "# demo\nsys.Log('hi')\nsys.Dial('${dst}@primary')\n"
    plan = write(tmp_path / "main.py", source)
    added = run("dialplan", "add", "acme", "main", plan, "--trace-email", "ops@acme.test",
                "--data-dir", str(data))
    assert added.returncode == 0, added.stderr
    assert "dialplan 'main' added for customer 'acme'" in added.stdout
    assert "dialspell account set USER@DOMAIN --in-dialplan main" in added.stdout
    assert run("account", "set", "alice@local", "--out-dialplan", "main",
               "--data-dir", str(data)).returncode == 0

    listed = run("dialplan", "list", "--json", "--data-dir", str(data))
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["customer"] == "acme" and row["name"] == "main"
    assert row["trace_email"] == "ops@acme.test" and row["size"] == len(source)
    assert row["used_by"] == ["alice@local:out"]
    table = run("dialplan", "list", "acme", "--data-dir", str(data))
    assert "main" in table.stdout and "alice@local:out" in table.stdout

    store = Store.open(data)
    customer = store.customer_by_name("acme")
    assert customer is not None
    assert store.dialplan_source(customer.id, "main") == source
    store.close()

    replaced = run("dialplan", "add", "acme", "main", write(tmp_path / "v2.py", "sys.Log('v2')\n"),
                   "--data-dir", str(data))
    assert replaced.returncode == 0 and "replaced" in replaced.stdout


def test_dialplan_add_refuses_a_script_that_does_not_compile(tmp_path: Path) -> None:
    data = tmp_path / "data"
    setup_customer(data)
    bad = write(tmp_path / "bad.py", "sys.Log('ok')\nimport os\n")
    refused = run("dialplan", "add", "acme", "main", bad, "--data-dir", str(data))
    assert refused.returncode == 1
    first = refused.stdout.splitlines()[0]
    assert first.startswith(f"{bad}:2:1: "), refused.stdout
    assert "not stored" in refused.stderr
    assert json.loads(run("dialplan", "list", "--json", "--data-dir", str(data)).stdout) == []


def test_dialplan_add_explains_unknown_customer_and_bad_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write(tmp_path / "p.py", "sys.Log('x')\n")
    assert main(["dialplan", "add", "nobody", "main", plan, "--data-dir", str(tmp_path)]) == 1
    assert "dialspell customer add nobody" in capsys.readouterr().err
    assert main(["dialplan", "add", "nobody", "bad name", plan, "--data-dir", str(tmp_path)]) == 1
    assert "not a dialplan name" in capsys.readouterr().err
    assert main(["dialplan", "add", "nobody", "x", str(tmp_path / "missing.py"),
                 "--data-dir", str(tmp_path)]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_account_set_changes_clears_and_warns_about_missing_dialplans(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    setup_customer(data)
    assert main(["dialplan", "add", "acme", "in1", write(tmp_path / "in.py", "sys.Log('x')\n"),
                 "--data-dir", str(data)]) == 0
    capsys.readouterr()
    code = main(["account", "set", "alice@local", "--in-dialplan", "in1", "--out-dialplan", "nope",
                 "--data-dir", str(data)])
    assert code == 0
    out, err = capsys.readouterr()
    assert "alice@local: in dialplan 'in1'" in out
    assert "no dialplan 'nope'" in err and "warning" in err and "in1" not in err
    (account,) = Store.open(data).accounts()
    assert (account.in_dialplan, account.out_dialplan) == ("in1", "nope")

    assert main(["account", "set", "alice@local", "--out-dialplan", "", "--data-dir", str(data)]) == 0
    assert "out dialplan cleared" in capsys.readouterr().out
    (account,) = Store.open(data).accounts()
    assert (account.in_dialplan, account.out_dialplan) == ("in1", None)

    assert main(["account", "set", "carol@local", "--in-dialplan", "in1", "--data-dir", str(data)]) == 1
    assert "no account carol@local" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["account", "set", "alice@local", "--data-dir", str(data)])
    assert usage.value.code == 2


def test_provider_add_and_list(tmp_path: Path) -> None:
    data = tmp_path / "data"
    setup_customer(data)
    added = run("provider", "add", "acme", "primary", "--server", "sip.example.net:5070",
                "--username", "u1", "--password", "p1", "--from-user", "4420", "--from-host",
                "example.net", "--outbound-proxy", "127.0.0.1:5999", "--header", "X-Account: 17",
                "--header", "P-Preferred-Identity: <sip:4420@example.net>", "--data-dir", str(data))
    assert added.returncode == 0, added.stderr
    assert '${dst}@primary' in added.stdout
    assert run("provider", "add", "acme", "backup", "--server", "[::1]",
               "--data-dir", str(data)).returncode == 0
    listed = run("provider", "list", "--json", "--data-dir", str(data))
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {"primary", "backup"}
    primary = rows["primary"]
    assert primary["server"] == "sip.example.net:5070" and primary["username"] == "u1"
    assert primary["has_password"] is True and "password" not in primary
    assert primary["headers"] == ["X-Account: 17", "P-Preferred-Identity: <sip:4420@example.net>"]
    assert primary["outbound_proxy"] == "127.0.0.1:5999" and primary["from_user"] == "4420"
    assert rows["backup"]["has_password"] is False
    table = run("provider", "list", "acme", "--data-dir", str(data)).stdout
    assert "p1" not in table and "u1 (password set)" in table

    # What the call engine reads (engine/records.py) is what was typed.
    store = Store.open(data)
    stored = store.query_one("SELECT headers, password FROM providers WHERE name = 'primary'")
    store.close()
    assert stored is not None
    assert json.loads(stored[0]) == [["X-Account", "17"], ["P-Preferred-Identity", "<sip:4420@example.net>"]]
    assert stored[1] == "p1"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--header", "Via: SIP/2.0/UDP evil"], "--header Via: the server sets this header itself"),
        (["--header", "call-id: x"], "the server sets this header itself"),
        (["--header", "X-A: 1\r\nVia: x"], "CR and LF are not allowed"),
        (["--header", "no colon"], "is not 'Name: value'"),
        (["--username", "u\r\nX: y"], "no CR, LF or NUL"),
        (["--password", "p"], "--password needs --username"),
    ],
)
def test_provider_add_refuses_unsafe_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    setup_customer(tmp_path)
    code = main(["provider", "add", "acme", "p", "--server", "127.0.0.1", *extra,
                 "--data-dir", str(tmp_path)])
    assert code == 1
    assert message in capsys.readouterr().err
    assert Store.open(tmp_path).query_all("SELECT * FROM providers") == []


def test_provider_add_refuses_bad_servers_names_and_duplicates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_customer(tmp_path)
    base = ["--data-dir", str(tmp_path)]
    assert main(["provider", "add", "acme", "p", "--server", "host:99999", *base]) == 1
    assert "port must be 1-65535" in capsys.readouterr().err
    assert main(["provider", "add", "acme", "p", "--server", "a b", *base]) == 1
    assert "is not HOST[:PORT]" in capsys.readouterr().err
    assert main(["provider", "add", "acme", "local", "--server", "h", *base]) == 1
    assert "cannot name a provider" in capsys.readouterr().err
    assert main(["provider", "add", "nobody", "p", "--server", "h", *base]) == 1
    assert "customer 'nobody' does not exist" in capsys.readouterr().err
    assert main(["provider", "add", "acme", "p", "--server", "h", *base]) == 0
    assert main(["provider", "add", "acme", "P", "--server", "h2", *base]) == 1
    assert "already has a provider named 'P'" in capsys.readouterr().err


async def test_commands_take_effect_on_a_running_server(tmp_path: Path) -> None:
    """The operator changes a running server's data dir; the next call follows it."""
    data = tmp_path / "data"
    config = ServerConfig(data_dir=data, sip_host="127.0.0.1", sip_port=free_port(),
                          http_port=free_port(socket.SOCK_STREAM), domain="127.0.0.1",
                          sandbox_workers=1)
    async with running(config) as (server, nursery):
        assert server.sip_address is not None

        async def cli(*argv: str) -> int:
            return await trio.to_thread.run_sync(main, list(argv))

        base = ("--data-dir", str(data))
        assert await cli("customer", "add", "acme", "--password", "pw", *base) == 0
        for user in ("alice", "bob"):
            assert await cli("account", "add", f"{user}@local", "--password", user,
                             "--customer", "acme", *base) == 0
        reject = write(tmp_path / "closed.py", "# closed\nsys.Respond(486, 'Closed by CLI')\n")
        assert await cli("dialplan", "add", "acme", "closed", reject, *base) == 0
        assert await cli("account", "set", "bob@local", "--in-dialplan", "closed", *base) == 0

        alice = SoftPhone(user="alice", password="alice", domain="127.0.0.1", server=server.sip_address)
        await nursery.start(alice.run)
        with trio.fail_after(10), pytest.raises(PhoneError) as rejected:
            await alice.call("bob")
        assert (rejected.value.status, rejected.value.reason) == (486, "Closed by CLI")

        # Clearing the In dialplan: bob's bindings ring again (he has none: 480).  The
        # server re-reads account flags at most DIRECTORY_RECHECK seconds late.
        assert await cli("account", "set", "bob@local", "--in-dialplan", "", *base) == 0
        await trio.sleep(2 * DIRECTORY_RECHECK)
        with trio.fail_after(10), pytest.raises(PhoneError) as unavailable:
            await alice.call("bob")
        assert unavailable.value.status == 480


@asynccontextmanager
async def running(config: ServerConfig) -> AsyncIterator[tuple[Server, trio.Nursery]]:
    server = Server(config)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            yield server, nursery
            nursery.cancel_scope.cancel()
    finally:
        server.store.close()
