from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from engine.cli import main
from engine.storage import Store


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, as an operator runs it."""
    return subprocess.run(["dialspell", *argv], capture_output=True, text=True, timeout=60)


def test_customer_account_domain_workflow_through_the_console_script(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    added = run("customer", "add", "acme", "--password", "pw", "--email", "ops@acme.test",
                "--data-dir", data)
    assert added.returncode == 0, added.stderr
    assert "acme" in added.stdout
    assert run("domain", "add", "example.com", "--alias", "sip.example.com",
               "--data-dir", data).returncode == 0
    created = run("account", "add", "alice@example.com", "--password", "s3cret",
                  "--customer", "acme", "--keepalive", "--in-dialplan", "main", "--data-dir", data)
    assert created.returncode == 0, created.stderr
    listed = run("account", "list", "--json", "--data-dir", data)
    assert listed.returncode == 0
    (row,) = json.loads(listed.stdout)
    assert row["address"] == "alice@example.com" and row["customer"] == "acme"
    assert row["keepalive"] is True and row["in_dialplan"] == "main" and row["disabled"] is False
    domains = run("domain", "list", "--data-dir", data)
    assert "sip.example.com" in domains.stdout and "local" in domains.stdout
    customers = run("customer", "list", "--data-dir", data)
    assert "ops@acme.test" in customers.stdout


def test_missing_customer_says_how_to_create_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["account", "add", "alice@local", "--password", "pw", "--customer", "bob",
                 "--data-dir", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "customer 'bob' does not exist" in err
    assert "dialspell customer add bob --password" in err


def test_unserved_domain_is_not_added_implicitly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["customer", "add", "acme", "--password", "pw", "--data-dir", str(tmp_path)]) == 0
    code = main(["account", "add", "alice@exmaple.com", "--password", "pw", "--customer", "acme",
                 "--data-dir", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "dialspell domain add exmaple.com" in err and "alice@local" in err
    assert [d.domain for d in Store.open(tmp_path).domains()] == ["local"]


def test_duplicates_are_refused_with_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["customer", "add", "acme", "--password", "pw", "--data-dir", str(tmp_path)]
    assert main(args) == 0
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["account", "add", "alice@local", "--password", "pw", "--customer", "acme",
                 "--data-dir", str(tmp_path)]) == 0
    assert main(["account", "add", "alice@local", "--password", "pw", "--customer", "acme",
                 "--data-dir", str(tmp_path)]) == 1


def test_commands_work_while_a_server_holds_the_database_open(tmp_path: Path) -> None:
    server = Store.open(tmp_path)  # the running server's connections
    assert server.directory().account("alice", "local") is None
    assert run("customer", "add", "acme", "--password", "pw", "--data-dir", str(tmp_path)).returncode == 0
    assert run("account", "add", "alice@local", "--password", "pw", "--customer", "acme",
               "--disabled", "--data-dir", str(tmp_path)).returncode == 0
    account = server.directory(force=True).account("alice", "local")
    assert account is not None and account.disabled


def test_bad_address_and_bad_data_dir_are_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["account", "add", "alice", "--password", "pw", "--customer", "acme",
                 "--data-dir", str(tmp_path)]) == 1
    assert "USER@DOMAIN" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["customer", "list", "--data-dir", str(blocker / "data")]) == 1
    assert "--data-dir" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cdr", "list", "--limit", "-5"], "argument --limit: -5 is too small: give 1 or more"),
        (["trace", "list", "--limit", "ten"], "argument --limit: 'ten' is not a whole number"),
        (["demo", "--hold", "-1"], "argument --hold: -1 is not a duration: give 0 or more seconds"),
        (["demo", "--hold", "nan"], "argument --hold: nan is not a duration: give 0 or more seconds"),
        (["dialplan", "run", "plan.py", "--repeat", "0"], "argument --repeat: 0 is too small: give 1 or more"),
    ],
)
def test_counts_and_durations_out_of_range_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.rstrip().endswith(message)
