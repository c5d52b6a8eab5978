from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from engine import storage
from engine.schema import MIGRATIONS
from engine.storage import (
    DIRECTORY_RECHECK,
    LOCAL_DOMAIN,
    Binding,
    ConflictError,
    DataDirError,
    NotFoundError,
    StorageError,
    Store,
    check_password,
)
from sip.digest import DigestAlgorithm, compute_ha1
from sip.uri import URI


def binding(account_id: int, n: int, *, aor: str = "alice@local") -> Binding:
    return Binding(
        id=f"b{n}", account_id=account_id, aor=aor,
        contact=URI.parse(f"sip:alice@192.0.2.{n % 250};transport=udp?X=%3Cy%3E"),
        contact_params=(("q", "0.5"), ("+sip.instance", '"<urn:uuid:1>"')),
        received=("203.0.113.5", 40000 + n), transport="UDP", local=("127.0.0.1", 5060),
        expires_at=1000.0 + n, call_id=f"call-{n}", cseq=n, user_agent="phone/1",
        registered_at=float(n),
    )


def insert_kv(key: str) -> Callable[[sqlite3.Connection], sqlite3.Cursor]:
    """A write that adds ``key`` to customer 1's key-value store."""

    def op(conn: sqlite3.Connection) -> sqlite3.Cursor:
        return conn.execute("INSERT INTO kv (customer_id, key, value, updated) VALUES (1, ?, 'v', 0)", (key,))

    return op


def seeded(tmp_path: Path) -> tuple[Store, int]:
    store = Store.open(tmp_path / "data")
    store.add_customer("acme", "pw", now=1.0)
    account = store.add_account("alice", LOCAL_DOMAIN, customer="acme", password="pw", now=1.0)
    return store, account.id


def test_open_creates_the_directory_and_applies_each_migration_once(tmp_path: Path) -> None:
    data = tmp_path / "nested" / "data"
    store = Store.open(data)
    assert (data / "dialspell.db").exists()
    assert store.applied_migrations() == [number for number, _, _ in MIGRATIONS]
    store.close()
    again = Store.open(data)
    rows = again._db.execute("SELECT count(*) FROM migrations").fetchone()
    assert rows[0] == len(MIGRATIONS)
    mode = again._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    tables = set(again._db.table_names())
    assert {"customers", "sip_domains", "sip_accounts", "bindings", "dialplans", "migrations",
            "providers", "kv", "traces", "cdrs"} <= tables


def test_unusable_data_directory_gives_advice(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DataDirError, match="--data-dir"):
        Store.open(blocker / "data")


def test_customers_have_unique_names_and_emails_and_hashed_passwords(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.add_customer("acme", "hunter2", email="ops@acme.test", admin=True, now=1.0)
    store.add_customer("beta", "pw", now=2.0)
    store.add_customer("gamma", "pw", now=3.0)  # two customers without e-mail are fine
    with pytest.raises(ConflictError, match="name"):
        store.add_customer("acme", "x", now=4.0)
    with pytest.raises(ConflictError, match="e-mail"):
        store.add_customer("delta", "x", email="OPS@acme.test", now=4.0)
    stored = store._db.execute("SELECT password_hash FROM customers WHERE name='acme'").fetchone()[0]
    assert "hunter2" not in stored and check_password("hunter2", stored)
    assert store.check_customer_password("acme", "hunter2") is not None
    assert store.check_customer_password("acme", "wrong") is None
    assert [c.name for c in store.customers()] == ["acme", "beta", "gamma"]


def test_accounts_keep_only_ha1_and_need_customer_and_domain(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.add_customer("acme", "pw", now=1.0)
    with pytest.raises(NotFoundError):
        store.add_account("alice", "example.com", customer="acme", password="pw", now=1.0)
    with pytest.raises(NotFoundError):
        store.add_account("alice", LOCAL_DOMAIN, customer="nobody", password="pw", now=1.0)
    store.add_domain("Example.COM", ["sip.example.com"], now=1.0)
    account = store.add_account("alice", "example.com", customer="acme", password="s3cret",
                                keepalive=True, now=1.0)
    assert account.ha1_md5 == compute_ha1("alice", "example.com", "s3cret", DigestAlgorithm.MD5)
    assert account.ha1_sha256 == compute_ha1("alice", "example.com", "s3cret", DigestAlgorithm.SHA256)
    with pytest.raises(ConflictError):
        store.add_account("alice", "example.com", customer="acme", password="pw", now=1.0)
    dump = b"".join(line.encode() for line in store._write.iterdump())
    assert b"s3cret" not in dump


def test_domain_aliases_cannot_be_claimed_twice(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.add_domain("example.com", ["sip.example.com"], now=1.0)
    with pytest.raises(ConflictError):
        store.add_domain("other.org", ["sip.example.com"], now=1.0)
    merged = store.add_domain("example.com", ["10.0.0.1"], now=2.0)
    assert merged.aliases == ("sip.example.com", "10.0.0.1")
    assert [d.domain for d in store.domains()] == ["example.com", LOCAL_DOMAIN]


def test_directory_notices_another_process_adding_an_account(tmp_path: Path) -> None:
    server_side, _ = seeded(tmp_path)
    assert server_side.directory().account("bob", LOCAL_DOMAIN) is None
    cli_side = Store.open(tmp_path / "data")  # e.g. `dialspell account add` meanwhile
    cli_side.add_account("bob", LOCAL_DOMAIN, customer="acme", password="pw", now=2.0)
    assert server_side.directory(force=True).account("bob", LOCAL_DOMAIN) is not None
    cli_side.add_domain("example.com", ["sip.example.com"], now=2.0)
    assert server_side.directory(force=True).hosts["sip.example.com"] == "example.com"
    assert server_side.is_served_domain("SIP.example.com")


def test_cached_reads_see_own_writes_at_once_and_another_process_within_the_recheck(tmp_path: Path) -> None:
    server_side, _ = seeded(tmp_path)
    customer = server_side.customer_by_name("acme")
    assert customer is not None
    loads: list[str] = []

    def source() -> str | None:
        loads.append("read")
        return server_side.dialplan_source(customer.id, "out")

    assert server_side.cached_read("dialplans", (customer.id, "out"), source) is None
    assert server_side.cached_read("dialplans", (customer.id, "out"), source) is None
    assert loads == ["read"]
    # This process's own write (the web API's upload) is seen by the very next read.
    server_side.put_dialplan(customer.id, "out", "sys.Log('v1')", now=2.0)
    assert server_side.cached_read("dialplans", (customer.id, "out"), source) == "sys.Log('v1')"
    assert loads == ["read", "read"]
    # Another process's write (`dialspell dialplan put` meanwhile) within the recheck.
    cli_side = Store.open(tmp_path / "data")
    cli_side.put_dialplan(customer.id, "out", "sys.Log('v2')", now=3.0)
    time.sleep(DIRECTORY_RECHECK * 1.5)
    assert server_side.cached_read("dialplans", (customer.id, "out"), source) == "sys.Log('v2')"
    # Writes to other tables (a domain, and call records all the time) leave the
    # cached value in place, from this process or another.
    cli_side.add_domain("example.com", [], now=4.0)
    server_side.add_domain("example.net", [], now=4.0)
    time.sleep(DIRECTORY_RECHECK * 1.5)
    assert server_side.cached_read("dialplans", (customer.id, "out"), source) == "sys.Log('v2')"
    assert loads == ["read", "read", "read"]


def test_binding_writes_do_not_reload_the_directory(tmp_path: Path) -> None:
    store, account_id = seeded(tmp_path)
    before = store.directory()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run_writer)
            await store.save_bindings([binding(account_id, 1)])
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert store.directory(force=True) is before


async def test_bindings_round_trip_with_uri_params_and_escaped_headers(tmp_path: Path) -> None:
    store, account_id = seeded(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        await store.save_bindings([binding(account_id, 1), binding(account_id, 2)])
        await store.save_bindings([], ["b1"])
        nursery.cancel_scope.cancel()
    reopened = Store.open(tmp_path / "data")
    (only,) = reopened.load_bindings()
    assert only == binding(account_id, 2)
    assert str(only.contact) == "sip:alice@192.0.2.2;transport=udp?X=%3Cy%3E"


async def test_concurrent_writes_are_group_committed(tmp_path: Path) -> None:
    store, account_id = seeded(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        async with trio.open_nursery() as writers:
            for n in range(500):
                writers.start_soon(store.save_bindings, [binding(account_id, n)])
        nursery.cancel_scope.cancel()
    stats = store.statistics()
    assert stats["jobs"] == 500
    assert stats["batches"] < 250  # several writes share each commit
    assert len(Store.open(tmp_path / "data").load_bindings()) == 500


async def test_a_failing_write_fails_alone(tmp_path: Path) -> None:
    store, account_id = seeded(tmp_path)
    results: dict[str, object] = {}

    async def good(n: int) -> None:
        await store.save_bindings([binding(account_id, n)])
        results[f"good{n}"] = True

    async def bad() -> None:
        try:
            await store.save_bindings([binding(9999, 50)])  # no such account: FK violation
        except sqlite3.IntegrityError as exc:
            results["bad"] = exc

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        async with trio.open_nursery() as writers:
            writers.start_soon(good, 1)
            writers.start_soon(bad)
            writers.start_soon(good, 2)
        nursery.cancel_scope.cancel()
    assert isinstance(results["bad"], sqlite3.IntegrityError)
    assert results["good1"] is True and results["good2"] is True
    assert {b.id for b in store.load_bindings()} == {"b1", "b2"}


async def test_writes_queued_when_the_writer_stops_fail_instead_of_waiting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, account_id = seeded(tmp_path)
    started, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def slow(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(5)

    async def shielded_write() -> None:
        # Shielded like a trace write that must not be lost to a CANCEL.
        with trio.CancelScope(shield=True), trio.fail_after(5):
            try:
                await store.save_bindings([binding(account_id, 7)])
                outcome["result"] = "committed"
            except StorageError as exc:
                outcome["result"] = exc

    with trio.fail_after(5):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run_writer)
                # Keep the writer busy in its thread, queue a write behind it, then stop
                # the writer: the queued write must be failed, not left waiting.
                outer.start_soon(store.write, slow)
                await trio.to_thread.run_sync(started.wait, 5)
                outer.start_soon(shielded_write)
                store.write_soon(lambda conn: None, what="the late record")  # nobody waits: logged
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
                release.set()
    assert isinstance(outcome["result"], StorageError)
    assert "could not store the late record: the store's writer stopped" in caplog.text


async def test_write_soon_commits_without_a_waiter_and_logs_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, account_id = seeded(tmp_path)
    with pytest.raises(StorageError, match="run_writer"):
        store.write_soon(lambda conn: None, what="nothing")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        for n in range(20):
            # Several queued at once go in one batch, with awaited writes beside them.
            store.write_soon(insert_kv(f"k{n}"), what=f"key {n}")
        store.write_soon(lambda conn: conn.execute("INSERT INTO no_such_table VALUES (1)"), what="the bad one")
        await store.save_bindings([binding(account_id, 1)])
        nursery.cancel_scope.cancel()
    assert store.query_one("SELECT COUNT(*) FROM kv") == (20,)
    assert store.statistics()["batches"] <= 2
    assert "could not store the bad one" in caplog.text
    assert {b.id for b in store.load_bindings()} == {"b1"}


_KV = storage.Insert("INSERT INTO kv (customer_id, key, value, updated)", 4)


async def test_inserted_rows_go_in_a_few_statements_in_order_and_a_bad_one_alone_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "GATHER_SECONDS", 30.0)  # all of them in one batch
    store, account_id = seeded(tmp_path)
    statements: list[str] = []
    with pytest.raises(StorageError, match="run_writer"):
        store.insert_soon(_KV, (1, "k", "v", 0), what="nothing")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        store._write.set_trace_callback(statements.append)
        for n in range(100):
            store.insert_soon(_KV, (1, f"k{n:03}", f"v{n}", n), what=f"key {n}")
        # A write queued after them sees them all (and a later row for the same key
        # would replace it: order is kept).
        store.write_soon(lambda conn: conn.execute(
            "INSERT INTO kv (customer_id, key, value, updated) SELECT 1, 'count', COUNT(*), 0 FROM kv"), what="count")
        await store.save_bindings([binding(account_id, 1)])
        # 100 rows: 64 + 36, two statements.
        inserts = [s for s in statements if s.startswith("INSERT INTO kv (customer_id, key, value, updated) VALUES")]
        assert len(inserts) == 2
        assert store.query_one("SELECT value FROM kv WHERE key = 'count'") == ("100",)
        assert store.query_all("SELECT key FROM kv WHERE key != 'count' ORDER BY rowid") == [
            (f"k{n:03}",) for n in range(100)]
        # A row that breaks a constraint fails the batch, which is replayed job by job:
        # only that row is lost, and said in the log.
        store.insert_soon(_KV, (1, "good1", "v", 0), what="good 1")
        store.insert_soon(_KV, (1, "bad", None, 0), what="the bad row")  # value is NOT NULL
        store.insert_soon(_KV, (1, "good2", "v", 0), what="good 2")
        await store.save_bindings([binding(account_id, 2)])
        nursery.cancel_scope.cancel()
    assert store.query_all("SELECT key FROM kv WHERE key LIKE 'good%' OR key = 'bad' ORDER BY key") == [
        ("good1",), ("good2",)]
    assert "could not store the bad row" in caplog.text


async def test_a_batch_of_uncounted_rows_does_not_read_the_change_counters(tmp_path: Path) -> None:
    store, _ = seeded(tmp_path)
    statements: list[str] = []
    uncounted = storage.Insert("INSERT INTO kv (customer_id, key, value, updated)", 4, counted=False)

    async def committed(key: str) -> None:
        with trio.fail_after(5):
            while store.query_one("SELECT 1 FROM kv WHERE key = ?", (key,)) is None:  # noqa: ASYNC110 - another thread commits
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        store._write.set_trace_callback(statements.append)
        store.insert_soon(uncounted, (1, "a", "v", 0), what="a")
        await committed("a")
        assert not any("FROM versions" in s for s in statements)
        store.insert_soon(_KV, (1, "b", "v", 0), what="b")  # counted (the default)
        await committed("b")
        assert any("FROM versions" in s for s in statements)
        nursery.cancel_scope.cancel()


async def test_records_nobody_waits_for_gather_until_a_waited_write_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "GATHER_SECONDS", 30.0)
    store, account_id = seeded(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        store.write_soon(lambda conn: conn.execute(
            "INSERT INTO kv (customer_id, key, value, updated) VALUES (1, 'k', 'v', 0)"), what="a record")
        await trio.sleep(0.3)
        assert store.query_one("SELECT COUNT(*) FROM kv") == (0,)  # held for company
        with trio.fail_after(2):  # a waited write is not held: it takes the record along
            await store.save_bindings([binding(account_id, 1)])
        nursery.cancel_scope.cancel()
    assert store.query_one("SELECT COUNT(*) FROM kv") == (1,)
    assert store.statistics() == {"batches": 1, "jobs": 2}


async def test_write_without_a_running_writer_says_how_to_start_it(tmp_path: Path) -> None:
    store, account_id = seeded(tmp_path)
    with pytest.raises(Exception, match="run_writer"):
        await store.save_bindings([binding(account_id, 1)])


def test_secret_is_created_once_and_kept(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    key = store.server_secret()
    assert len(key) == 32
    assert Store.open(tmp_path).server_secret() == key


_WRITER_SCRIPT = textwrap.dedent("""
    import sys, trio
    from engine.storage import Binding, Store
    from sip.uri import URI

    store = Store.open(sys.argv[1])
    account_id = int(sys.argv[2])

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run_writer)
            n = 0
            while True:
                n += 1
                await store.save_bindings([Binding(
                    id=f"k{n}", account_id=account_id, aor="alice@local",
                    contact=URI.parse(f"sip:alice@192.0.2.1:{n % 60000 + 1}"),
                    contact_params=(), received=("192.0.2.1", 5060), transport="UDP",
                    local=("127.0.0.1", 5060), expires_at=9e9, call_id="c", cseq=n,
                    user_agent=None, registered_at=float(n))])
                print(n, flush=True)   # only after the commit returned

    trio.run(main)
""")


def test_committed_bindings_survive_kill_9(tmp_path: Path) -> None:
    store, account_id = seeded(tmp_path)
    store.close()
    script = tmp_path / "writer.py"
    script.write_text(_WRITER_SCRIPT)
    acknowledged = 0
    with subprocess.Popen([sys.executable, str(script), str(tmp_path / "data"), str(account_id)],
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                acknowledged = int(line)
                if acknowledged >= 300:
                    break
            os.kill(proc.pid, signal.SIGKILL)  # mid-stream: more writes were in flight
        finally:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert acknowledged >= 300
    ids = {b.id for b in Store.open(tmp_path / "data").load_bindings()}
    assert all(f"k{n}" in ids for n in range(1, acknowledged + 1))


async def test_the_key_value_store_refuses_what_no_dialplan_may_write(tmp_path: Path) -> None:
    # The worker's own argument checks are not trusted: the server refuses CR, LF and
    # NUL in a key or value again before the store sees them.
    from engine.records import CallRecords

    store, _ = seeded(tmp_path)
    alice = store.directory().account("alice", "local")
    assert alice is not None
    customer_id = alice.customer_id
    records = CallRecords(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        for key, value in (("a\x00b", "1"), ("k", "line\r\nbreak"), ("k\n", "v")):
            assert await records.kv_write(customer_id, key, value) == (
                "sys.DBWrite(): key and value must not contain CR, LF or NUL")
        assert await records.kv_write(customer_id, "k", "v") is None
        assert await records.kv_keys(customer_id) == ["k"]
        nursery.cancel_scope.cancel()


async def test_a_finished_writer_commits_what_is_queued_then_returns(tmp_path: Path) -> None:
    store, _ = seeded(tmp_path)
    # (The nursery is never cancelled: it exits because the writer returned by itself.)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run_writer)
            for n in range(3):
                store.write_soon(insert_kv(f"k{n}"), what=f"k{n}")
            store.finish_writer()
    assert [r[0] for r in store.query_all("SELECT key FROM kv ORDER BY key")] == ["k0", "k1", "k2"]
    store.close()
