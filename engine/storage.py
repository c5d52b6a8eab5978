"""Persistent state in one SQLite file, and the in-memory views the hot path reads.

Layout: ``<data_dir>/dialspell.db`` (WAL mode, so also ``-wal`` and ``-shm`` files).  The
schema is built by numbered migrations recorded in the ``migrations`` table; see
docs/operations.md for the tables and the durability guarantees.

Two connections per :class:`Store`:

- the *write* connection: every write goes through it, serialised by a lock.  From trio,
  writes are queued to :meth:`Store.run_writer`, which commits whatever is queued in one
  transaction (group commit) in a worker thread and then wakes every waiter, so a caller
  that awaited :meth:`Store.write` knows its rows are committed;
- the *read* connection, used from the owning thread only (the trio thread, or the CLI's
  main thread) for the :class:`Directory` cache and for loading bindings at start.

Start the writer inside the server's nursery before handling requests::

    store = Store.open(data_dir)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        ...

The :class:`Directory` (accounts by user@domain, served domains) is read from memory.
It notices changes made by any process (the ``dialspell`` CLI adding an account while a
server runs) by checking ``PRAGMA data_version`` and a version counter kept by triggers,
at most every :data:`DIRECTORY_RECHECK` seconds, or at once when the caller had a miss.

Exceptions::

    StorageError          base of this module's errors
    ├── DataDirError      the data directory cannot be created or written
    ├── ConflictError     a unique name (customer, email, domain, account) is taken
    └── NotFoundError     a referenced row (customer, domain) does not exist
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils
import trio

from engine.config import DEFAULT_DATA_DIR as DEFAULT_DATA_DIR
from engine.schema import LOCAL_DOMAIN as LOCAL_DOMAIN
from engine.schema import MIGRATIONS
from sip.digest import DigestAlgorithm, compute_ha1
from sip.errors import SIPParseError
from sip.uri import URI

logger = logging.getLogger(__name__)

T = TypeVar("T")

DB_FILENAME = "dialspell.db"
#: How often (seconds) the directory cache asks SQLite whether anything changed.
DIRECTORY_RECHECK = 0.2
#: How long the writer holds a batch of records nobody waits for (call records, traces)
#: for more to join it: under load, one commit (and one thread hand-off) for many calls.
GATHER_SECONDS = 0.02
_BUSY_TIMEOUT_MS = 10_000
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class StorageError(Exception):
    """Base of the storage errors (see the tree in the module docstring)."""


class DataDirError(StorageError):
    """The data directory cannot be created, opened or written."""


class ConflictError(StorageError):
    """A row with that unique name already exists."""


class NotFoundError(StorageError):
    """A row the operation refers to does not exist."""


# -- data ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Customer:
    """A customer: owns accounts and dialplans, logs into the web console."""

    id: int
    name: str
    email: str | None
    admin: bool
    created: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Domain:
    """A served SIP domain and its aliases (lower case).  ``local`` is the server's
    default domain, whatever its ``--domain`` is."""

    id: int
    domain: str
    aliases: tuple[str, ...]
    created: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """A SIP account ``user@domain``.  The digest realm is the domain name; only HA1
    values are kept, one per algorithm."""

    id: int
    user: str
    domain: str
    customer_id: int
    ha1_md5: str
    ha1_sha256: str
    incoming_only: bool
    in_dialplan: str | None
    out_dialplan: str | None
    keepalive: bool
    disabled: bool
    created: float

    @property
    def aor(self) -> str:
        return f"{self.user}@{self.domain}"

    @property
    def realm(self) -> str:
        return self.domain

    def ha1(self, algorithm: DigestAlgorithm) -> str:
        return self.ha1_md5 if algorithm is DigestAlgorithm.MD5 else self.ha1_sha256


@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    """A registered contact of an account (RFC 3261 section 10).

    ``received`` is the address the REGISTER really came from and ``local`` the socket it
    arrived on: requests for this contact are sent from ``local`` to ``received`` over
    ``transport``, which is what works behind NAT.  ``contact`` keeps the URI exactly as
    registered (URI parameters and escaped headers included); ``contact_params`` are the
    Contact header's own parameters (``q``, ``+sip.instance``...) without ``expires``.
    """

    id: str
    account_id: int
    aor: str
    contact: URI
    contact_params: tuple[tuple[str, str | None], ...]
    received: tuple[str, int]
    transport: str
    local: tuple[str, int]
    expires_at: float
    call_id: str
    cseq: int
    user_agent: str | None
    registered_at: float

    def remaining(self, now: float) -> int:
        """Seconds until expiry, rounded, never negative."""
        return max(0, int(self.expires_at - now + 0.5))


@dataclass(frozen=True, slots=True, kw_only=True)
class Directory:
    """A snapshot of accounts and domains (treat the mappings as read-only).

    ``hosts`` maps every domain name and alias to its domain; ``accounts`` is keyed by
    (user, domain) with the user as given (SIP user parts are case-sensitive) and the
    domain in lower case."""

    version: int
    accounts: dict[tuple[str, str], Account]
    accounts_by_id: dict[int, Account]
    domains: dict[str, Domain]
    hosts: dict[str, str]

    def account(self, user: str, domain: str) -> Account | None:
        return self.accounts.get((user, domain))


def hash_password(password: str) -> str:
    """A salted scrypt hash in the form ``scrypt$n$r$p$salt$hash`` (hex)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a :func:`hash_password` value (constant-time)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt),
                                  n=int(n), r=int(r), p=int(p), dklen=len(digest) // 2)
    except ValueError:
        return False
    return hmac.compare_digest(computed.hex(), digest)


class Insert:
    """An INSERT for rows queued with :meth:`Store.insert_soon`: ``head`` is the statement
    up to ``VALUES`` (``"INSERT INTO t (a, b)"``), ``width`` the number of columns.

    The writer puts all the rows a batch has for one Insert into multi-row statements
    of up to 64 rows (mostly one per batch; the sqlite3 module's statement cache keeps
    each size prepared).  Every SQLite call the writer thread makes hands the
    interpreter lock back and forth with the trio thread, so a batch's records cost
    one such call per table rather than one per record."""

    __slots__ = ("head", "width", "counted", "_texts")

    CHUNK = 64

    def __init__(self, head: str, width: int, *, counted: bool = True) -> None:
        self.head = head
        self.width = width
        #: False for a table no change counter follows (no version trigger: records
        #: nothing reads back through cached_read); a batch of only such rows then
        #: skips reading the counters after its commit.
        self.counted = counted
        self._texts: dict[int, str] = {}

    def text(self, rows: int) -> str:
        """The statement for ``rows`` rows."""
        text = self._texts.get(rows)
        if text is None:
            one = "(" + ", ".join("?" * self.width) + ")"
            text = self._texts[rows] = f"{self.head} VALUES " + ", ".join([one] * rows)
        return text

    def run(self, conn: sqlite3.Connection, rows: Sequence[Sequence[object]]) -> None:
        """Insert ``rows`` (in order) through ``conn``."""
        for start in range(0, len(rows), self.CHUNK):
            chunk = rows[start:start + self.CHUNK]
            conn.execute(self.text(len(chunk)), [value for row in chunk for value in row])


class _Job:
    """One queued write.  ``done`` is None for a write nobody waits for (write_soon);
    ``what`` then names it in the log if it fails.  A job of :meth:`Store.insert_soon`
    also carries its ``insert`` and ``row``, so the writer can put it together with
    others; ``op`` inserts it alone (when a batch is replayed job by job)."""

    __slots__ = ("op", "done", "result", "error", "what", "insert", "row")

    def __init__(self, op: Callable[[sqlite3.Connection], Any], done: trio.Event | None, what: str = "",
                 insert: Insert | None = None, row: Sequence[object] = ()) -> None:
        self.op = op
        self.done = done
        self.result: Any = None
        self.error: BaseException | None = None
        self.what = what
        self.insert = insert
        self.row = row

    def finish(self) -> None:
        if self.done is not None:
            self.done.set()
        elif self.error is not None:
            logger.error("could not store %s: %s", self.what, self.error)


#: Wakes the writer for writes queued by write_soon (carries no work itself).
_WAKE = _Job(lambda conn: None, None)


# -- the store ----------------------------------------------------------------------------


class Store:
    """The data directory's database (see the module docstring).  Build with
    :meth:`open`."""

    def __init__(self, data_dir: Path, *, write: sqlite3.Connection, read: sqlite3.Connection,
                 default_domain: str | None = None, max_batch: int = 2000,
                 queue_size: int = 10_000, gather_seconds: float | None = None) -> None:
        self.data_dir = data_dir
        #: the server's ``--domain`` (what ``local`` stands for), if this store serves one
        self.default_domain = default_domain.lower() if default_domain else None
        self.path = data_dir / DB_FILENAME
        self._write = write
        self._db = sqlite_utils.Database(write)
        self._read = read
        self._lock = threading.Lock()
        self._limiter = trio.CapacityLimiter(1)
        self._max_batch = max_batch
        self._gather_seconds = GATHER_SECONDS if gather_seconds is None else gather_seconds
        self._queue_size = queue_size
        self._send: trio.MemorySendChannel[_Job] | None = None
        self._soon: list[_Job] = []  # queued by write_soon, taken by the writer
        self._finishing = False  # finish_writer(): commit what is queued, then return
        self._directory: Directory | None = None
        self._checked_at = float("-inf")
        self._data_version = -1
        # cached_read: the change counters as last read, when SQLite was last asked,
        # the counters this process's last write left, and per counter the values
        # computed while it had that value.
        self._cache_data_version = -1
        self._cache_checked_at = float("-inf")
        self._versions: dict[str, int] = {}
        self._committed_versions: dict[str, int] = {}
        self._adopted_versions: dict[str, int] = self._committed_versions
        self._cached: dict[str, tuple[int, dict[Hashable, Any]]] = {}
        self._batches = 0
        self._jobs = 0

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def open(cls, data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR, *,
             default_domain: str | None = None) -> Store:
        """Open (creating if needed) the data directory and its database, and run any
        migrations not yet applied.  Raises :class:`DataDirError` with advice when the
        directory cannot be used.

        ``default_domain`` is the server's ``--domain``: the name the pseudo-domain
        ``local`` answers to (the CLI leaves it out)."""
        path = Path(data_dir)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataDirError(
                f"cannot create the data directory {str(path)!r}: {exc.strerror or exc}; "
                "choose another with --data-dir"
            ) from exc
        if not path.is_dir():
            raise DataDirError(f"{str(path)!r} is not a directory; choose another with --data-dir")
        if not os.access(path, os.W_OK | os.X_OK):
            raise DataDirError(
                f"the data directory {str(path)!r} is not writable by this user; "
                "fix its permissions or choose another with --data-dir"
            )
        try:
            write = cls._connect(path / DB_FILENAME)
            read = cls._connect(path / DB_FILENAME)
        except sqlite3.Error as exc:
            raise DataDirError(f"cannot open {str(path / DB_FILENAME)!r}: {exc}") from exc
        store = cls(path, write=write, read=read, default_domain=default_domain)
        store._migrate()
        return store

    @staticmethod
    def _connect(file: Path) -> sqlite3.Connection:
        # check_same_thread=False: the writer runs in trio's worker threads; every use
        # is serialised by the store's lock (the stack notes' recipe).  Room for 256
        # prepared statements: each row count of an Insert's statement is one.
        conn = sqlite3.connect(file, check_same_thread=False, timeout=_BUSY_TIMEOUT_MS / 1000,
                               cached_statements=256)
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        # WAL: readers never block the writer and a commit is one append to the log.
        # synchronous=NORMAL: a commit survives the process being killed (the WAL is in
        # the OS's hands); only a power loss or OS crash can lose the newest commits.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def close(self) -> None:
        """Close both connections (the writer must have stopped)."""
        with self._lock:
            self._write.close()
            self._read.close()

    @contextmanager
    def _transaction(self, *, counted: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction.  IMMEDIATE takes the write lock up front, so two
        processes never deadlock upgrading read locks (the busy timeout queues them).
        ``counted=False``: the transaction moves no change counter (only rows of
        uncounted :class:`Insert` s), so they are not read back after it."""
        with self._lock:
            conn = self._write
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                # The change counters as this transaction leaves them: cached_read
                # takes them from here, so this process's own writes are seen at once
                # without the reader asking SQLite.
                versions = _versions(conn) if counted else None
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            if versions is not None:
                # Assigned after the commit, so a reader that sees these counters also
                # sees the rows they count.  (One assignment: safe across threads.)
                self._committed_versions = versions

    def _migrate(self) -> None:
        with self._transaction() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS migrations "
                "(number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)"
            )
        for number, name, statements in MIGRATIONS:
            # Each migration runs in its own transaction and re-checks inside it, so two
            # processes opening a new directory at once apply it exactly once.
            with self._transaction() as conn:
                done = conn.execute("SELECT 1 FROM migrations WHERE number = ?", (number,))
                if done.fetchone() is not None:
                    continue
                logger.info("applying migration %d: %s", number, name)
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO migrations (number, name, applied) VALUES (?, ?, julianday('now'))",
                    (number, name),
                )

    def applied_migrations(self) -> list[int]:
        """Numbers of the migrations applied to this database."""
        return [row["number"] for row in self._db.query("SELECT number FROM migrations ORDER BY number")]

    # -- settings -----------------------------------------------------------------------
    def secret(self, name: str, size: int = 32) -> bytes:
        """A random secret kept in the database (created on first use), e.g. the key of
        digest nonces, so that nonces stay valid across restarts."""
        row = self._read.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return bytes(row[0])
        with self._transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO settings (name, value) VALUES (?, ?)",
                         (name, secrets.token_bytes(size)))
            value = conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return bytes(value[0])

    def server_secret(self) -> bytes:
        """The key of digest nonces (see :meth:`secret`)."""
        return self.secret("digest-nonce-key")

    # -- customers ----------------------------------------------------------------------
    def add_customer(self, name: str, password: str, *, email: str | None = None,
                     admin: bool = False, now: float) -> Customer:
        """Create a customer.  Raises :class:`ConflictError` if the name or e-mail is taken."""
        if not name.strip():
            raise StorageError("a customer name cannot be empty")
        row = {"name": name, "email": email or None, "password_hash": hash_password(password),
               "admin": int(admin), "created": now}
        try:
            with self._transaction():
                table = self._db.table("customers")
                table.insert(row)
                cid = table.last_pk
        except sqlite3.IntegrityError as exc:
            what = "e-mail address" if "email" in str(exc) else "name"
            value = email if what == "e-mail address" else name
            raise ConflictError(f"a customer with the {what} {value!r} already exists") from exc
        return Customer(id=int(str(cid)), name=name, email=email or None, admin=admin, created=now)

    def customers(self) -> list[Customer]:
        return [self._customer(r) for r in self._db.query("SELECT * FROM customers ORDER BY name")]

    def customer_by_name(self, name: str) -> Customer | None:
        rows = list(self._db.query("SELECT * FROM customers WHERE name = ?", (name,)))
        return self._customer(rows[0]) if rows else None

    def check_customer_password(self, name: str, password: str) -> Customer | None:
        """The customer if ``password`` is theirs, else None."""
        rows = list(self._db.query("SELECT * FROM customers WHERE name = ?", (name,)))
        if not rows:
            check_password(password, hash_password("x"))  # same cost for unknown names
            return None
        return self._customer(rows[0]) if check_password(password, rows[0]["password_hash"]) else None

    @staticmethod
    def _customer(row: dict[str, Any]) -> Customer:
        return Customer(id=row["id"], name=row["name"], email=row["email"],
                        admin=bool(row["admin"]), created=row["created"])

    # -- domains ------------------------------------------------------------------------
    def add_domain(self, domain: str, aliases: Sequence[str] = (), *, now: float) -> Domain:
        """Serve ``domain`` (adding ``aliases`` to it if it is already served).  Raises
        :class:`ConflictError` when an alias is another domain's name or alias."""
        domain = domain.strip().lower()
        wanted = [a.strip().lower() for a in aliases if a.strip()]
        if not domain:
            raise StorageError("a domain name cannot be empty")
        with self._transaction() as conn:
            taken: dict[str, str] = {}
            for name, alias_json in conn.execute("SELECT domain, aliases FROM sip_domains"):
                taken[name] = name
                for alias in json.loads(alias_json):
                    taken[alias] = name
            for alias in [domain, *wanted]:
                owner = taken.get(alias)
                if owner is not None and owner != domain:
                    raise ConflictError(f"{alias!r} is already served as part of domain {owner!r}")
            row = conn.execute("SELECT id, aliases, created FROM sip_domains WHERE domain = ?",
                               (domain,)).fetchone()
            if row is None:
                merged = tuple(dict.fromkeys(a for a in wanted if a != domain))
                cur = conn.execute("INSERT INTO sip_domains (domain, aliases, created) VALUES (?, ?, ?)",
                                   (domain, json.dumps(merged), now))
                return Domain(id=int(cur.lastrowid or 0), domain=domain, aliases=merged, created=now)
            merged = tuple(dict.fromkeys([*json.loads(row[1]), *(a for a in wanted if a != domain)]))
            conn.execute("UPDATE sip_domains SET aliases = ? WHERE id = ?", (json.dumps(merged), row[0]))
            return Domain(id=row[0], domain=domain, aliases=merged, created=row[2])

    def domains(self) -> list[Domain]:
        return [self._domain(r) for r in self._db.query("SELECT * FROM sip_domains ORDER BY domain")]

    @staticmethod
    def _domain(row: dict[str, Any]) -> Domain:
        return Domain(id=row["id"], domain=row["domain"], aliases=tuple(json.loads(row["aliases"])),
                      created=row["created"])

    # -- accounts -----------------------------------------------------------------------
    def add_account(self, user: str, domain: str, *, customer: str, password: str,
                    incoming_only: bool = False, keepalive: bool = False, disabled: bool = False,
                    in_dialplan: str | None = None, out_dialplan: str | None = None,
                    now: float) -> Account:
        """Create the account ``user@domain`` for the named customer.  The password is
        turned into HA1 values for the realm (the domain) and then forgotten.

        Raises :class:`NotFoundError` if the customer or domain does not exist and
        :class:`ConflictError` if the account does."""
        domain = domain.strip().lower()
        if not user or not domain:
            raise StorageError("an account needs a user and a domain (user@domain)")
        owner = self.customer_by_name(customer)
        if owner is None:
            raise NotFoundError(f"customer {customer!r} does not exist")
        served = {d.domain for d in self.domains()}
        if domain not in served:
            raise NotFoundError(f"domain {domain!r} is not served")
        row = {
            "user": user, "domain": domain, "customer_id": owner.id,
            "ha1_md5": compute_ha1(user, domain, password, DigestAlgorithm.MD5),
            "ha1_sha256": compute_ha1(user, domain, password, DigestAlgorithm.SHA256),
            "incoming_only": int(incoming_only), "in_dialplan": in_dialplan,
            "out_dialplan": out_dialplan, "keepalive": int(keepalive), "disabled": int(disabled),
            "created": now,
        }
        try:
            with self._transaction():
                table = self._db.table("sip_accounts")
                table.insert(row)
                aid = table.last_pk
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"the account {user}@{domain} already exists") from exc
        return self._account({**row, "id": aid})

    def accounts(self) -> list[Account]:
        return [self._account(r) for r in
                self._db.query("SELECT * FROM sip_accounts ORDER BY domain, user")]

    def set_account_flags(self, account_id: int, **flags: bool | str | None) -> None:
        """Change an account's flags (``disabled``, ``keepalive``, ``incoming_only``,
        ``in_dialplan``, ``out_dialplan``)."""
        allowed = {"disabled", "keepalive", "incoming_only", "in_dialplan", "out_dialplan"}
        unknown = set(flags) - allowed
        if unknown:
            raise StorageError(f"unknown account fields {sorted(unknown)}")
        if not flags:
            return
        with self._transaction() as conn:
            sets = ", ".join(f"{name} = ?" for name in flags)
            cur = conn.execute(f"UPDATE sip_accounts SET {sets} WHERE id = ?",
                               (*flags.values(), account_id))
            if cur.rowcount == 0:
                raise NotFoundError(f"account {account_id} does not exist")

    @staticmethod
    def _account(row: dict[str, Any]) -> Account:
        return Account(
            id=int(row["id"]), user=row["user"], domain=row["domain"],
            customer_id=row["customer_id"], ha1_md5=row["ha1_md5"], ha1_sha256=row["ha1_sha256"],
            incoming_only=bool(row["incoming_only"]), in_dialplan=row["in_dialplan"],
            out_dialplan=row["out_dialplan"], keepalive=bool(row["keepalive"]),
            disabled=bool(row["disabled"]), created=row["created"],
        )

    # -- dialplans (the table; the dialplan service builds on it) -----------------------
    def put_dialplan(self, customer_id: int, name: str, source: str, *,
                     trace_email: str | None = None, now: float) -> None:
        """Create or replace a customer's dialplan source."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO dialplans (customer_id, name, source, trace_email, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (customer_id, name) DO UPDATE SET "
                "source = excluded.source, trace_email = excluded.trace_email, "
                "updated = excluded.updated",
                (customer_id, name, source, trace_email, now),
            )

    def dialplan_source(self, customer_id: int, name: str) -> str | None:
        row = self._read.execute("SELECT source FROM dialplans WHERE customer_id = ? AND name = ?",
                                 (customer_id, name)).fetchone()
        return None if row is None else str(row[0])

    def query_one(self, sql: str, params: Sequence[object] = ()) -> tuple[Any, ...] | None:
        """One row from the read connection (the owning thread only)."""
        row: tuple[Any, ...] | None = self._read.execute(sql, tuple(params)).fetchone()
        return row

    def query_all(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Every row from the read connection (the owning thread only)."""
        return list(self._read.execute(sql, tuple(params)).fetchall())

    def served_domain(self, host: str) -> str | None:
        """The served domain (as stored) that ``host`` names: a domain's name or alias,
        or the default domain (then ``local``); None if not served."""
        host = host.lower()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        name = self.directory().hosts.get(host)
        if name is None and host == self.default_domain:
            return LOCAL_DOMAIN
        return name

    def is_served_domain(self, host: str) -> bool:
        """Whether ``host`` is a served domain, alias or the default domain."""
        return self.served_domain(host) is not None

    def cached_read(self, counter: str, key: Hashable, load: Callable[[], T]) -> T:
        """``load()`` (a read of the tables behind the change counter ``counter``), from
        memory while those tables have not changed.

        A write by this process (any connection of this store) is seen by the next
        read: each write transaction leaves the counters it committed.  A write by
        another process (the ``dialspell`` CLI) is seen within
        :data:`DIRECTORY_RECHECK` seconds, like the directory's: at most that often the
        read asks SQLite whether any connection committed (``PRAGMA data_version``, no
        I/O) and only then re-reads the counters.  Asking on every read cost a query per
        call, since the server's own call records commit all the time.  For the owning
        thread only, like the other reads."""
        committed = self._committed_versions
        if committed is not self._adopted_versions:
            self._adopted_versions = committed
            self._versions = {**self._versions,
                              **{k: max(v, self._versions.get(k, v)) for k, v in committed.items()}}
        now = time.monotonic()
        if not 0 <= now - self._cache_checked_at < DIRECTORY_RECHECK:
            self._cache_checked_at = now
            read = self._read
            data_version = read.execute("PRAGMA data_version").fetchone()[0]
            if data_version != self._cache_data_version:
                self._cache_data_version = data_version
                self._versions = dict(read.execute("SELECT name, value FROM versions").fetchall())
        version = self._versions[counter]
        entry = self._cached.get(counter)
        if entry is None or entry[0] != version:
            entry = self._cached[counter] = (version, {})
        values = entry[1]
        if key in values:
            value: T = values[key]
            return value
        value = values[key] = load()
        return value

    # -- the directory cache ------------------------------------------------------------
    def directory(self, *, force: bool = False) -> Directory:
        """The current accounts and domains, from memory.

        At most every :data:`DIRECTORY_RECHECK` seconds (or at once with ``force``, for a
        caller that just missed) it asks SQLite whether another connection committed
        (``PRAGMA data_version``, no I/O) and, only then, whether the directory tables
        changed (a one-row read); only then does it reload.  (A freshness interval, so
        it runs on the monotonic clock, not on the protocol's ``now``.)"""
        now = time.monotonic()
        cached = self._directory
        if cached is not None and not force and 0 <= now - self._checked_at < DIRECTORY_RECHECK:
            return cached
        self._checked_at = now
        read = self._read
        data_version = read.execute("PRAGMA data_version").fetchone()[0]
        if cached is not None and data_version == self._data_version:
            return cached
        self._data_version = data_version
        version = read.execute("SELECT value FROM versions WHERE name = 'directory'").fetchone()[0]
        if cached is not None and version == cached.version:
            return cached
        self._directory = self._load_directory(version)
        return self._directory

    def _load_directory(self, version: int) -> Directory:
        read = self._read
        read.row_factory = sqlite3.Row
        try:
            # One read transaction so accounts and domains come from the same snapshot.
            read.execute("BEGIN")
            try:
                account_rows = read.execute("SELECT * FROM sip_accounts").fetchall()
                domain_rows = read.execute("SELECT * FROM sip_domains").fetchall()
            finally:
                read.execute("COMMIT")
        finally:
            read.row_factory = None
        accounts: dict[tuple[str, str], Account] = {}
        by_id: dict[int, Account] = {}
        for row in account_rows:
            account = self._account(dict(row))
            accounts[(account.user, account.domain)] = account
            by_id[account.id] = account
        domains: dict[str, Domain] = {}
        hosts: dict[str, str] = {}
        for row in domain_rows:
            domain = self._domain(dict(row))
            domains[domain.domain] = domain
            hosts[domain.domain] = domain.domain
            for alias in domain.aliases:
                hosts.setdefault(alias, domain.domain)
        logger.debug("directory loaded: %d accounts, %d domains", len(accounts), len(domains))
        return Directory(version=version, accounts=accounts, accounts_by_id=by_id,
                         domains=domains, hosts=hosts)

    # -- bindings -----------------------------------------------------------------------
    def load_bindings(self) -> list[Binding]:
        """Every stored binding (expired ones included: the registrar sweeps them)."""
        rows = self._read.execute(
            "SELECT b.id, b.account_id, a.user, a.domain, b.contact, b.contact_params, "
            "b.received_host, b.received_port, b.transport, b.local_host, b.local_port, "
            "b.expires_at, b.call_id, b.cseq, b.user_agent, b.registered_at "
            "FROM bindings b JOIN sip_accounts a ON a.id = b.account_id "
            "ORDER BY b.registered_at"
        ).fetchall()
        out: list[Binding] = []
        for (bid, account_id, user, domain, contact, params_json, rhost, rport, transport,
             lhost, lport, expires_at, call_id, cseq, user_agent, registered_at) in rows:
            try:
                uri = URI.parse(contact)
            except SIPParseError:
                logger.warning("dropping stored binding %s: unparsable contact %r", bid, contact)
                continue
            params = tuple((k, v) for k, v in json.loads(params_json or "[]"))
            out.append(Binding(
                id=bid, account_id=account_id, aor=f"{user}@{domain}", contact=uri,
                contact_params=params, received=(rhost, rport), transport=transport,
                local=(lhost, lport), expires_at=expires_at, call_id=call_id, cseq=cseq,
                user_agent=user_agent, registered_at=registered_at,
            ))
        return out

    async def save_bindings(self, upserts: Sequence[Binding], deletes: Sequence[str] = ()) -> None:
        """Store/replace ``upserts`` and delete the bindings with ids in ``deletes``, in
        one transaction; returns once committed."""
        rows = [_binding_row(b) for b in upserts]
        ids = [(bid,) for bid in deletes]

        def op(conn: sqlite3.Connection) -> None:
            if ids:
                conn.executemany("DELETE FROM bindings WHERE id = ?", ids)
            if rows:
                conn.executemany(_UPSERT_BINDING, rows)

        await self.write(op)

    # -- the group-commit writer ---------------------------------------------------------
    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op(connection)`` inside the writer's next transaction and return its
        result once that transaction is committed.  Raises what ``op`` raised (its
        changes rolled back, other callers' unaffected), or :class:`StorageError` if the
        writer is not running."""
        send = self._send
        if send is None:
            raise StorageError(
                "the store's writer is not running: start it with "
                "`await nursery.start(store.run_writer)`"
            )
        job = _Job(op, trio.Event())
        await send.send(job)
        assert job.done is not None
        await job.done.wait()
        if job.error is not None:
            raise job.error
        result: T = job.result
        return result

    def write_soon(self, op: Callable[[sqlite3.Connection], object], *, what: str) -> None:
        """Queue ``op(connection)`` for the writer's next transaction and return at once
        (for records nobody waits on: call records, traces).  A failure is logged,
        naming ``what``.  These writes queue without bound rather than wait for room,
        as their callers cannot wait; they go in the same batches as the others."""
        self._queue_soon(_Job(op, None, what))

    def insert_soon(self, insert: Insert, row: Sequence[object], *, what: str) -> None:
        """Queue one row for ``insert``, as :meth:`write_soon` queues a write: the
        writer's transaction puts the rows of all such jobs for one Insert together (in
        order among themselves; before any other job queued after them)."""
        self._queue_soon(_Job(lambda conn: insert.run(conn, (row,)), None, what, insert, row))

    def _queue_soon(self, job: _Job) -> None:
        if self._send is None:
            raise StorageError(
                "the store's writer is not running: start it with "
                "`await nursery.start(store.run_writer)`"
            )
        self._soon.append(job)
        if len(self._soon) == 1:
            # The first since the writer last took them: make sure it is awake.  If its
            # queue is full it is busy, and takes these after its current batch.
            with suppress(trio.WouldBlock):
                self._send.send_nowait(_WAKE)

    def finish_writer(self) -> None:
        """Have the writer commit every write queued so far, then return: how a server
        stops once nothing else runs, so that the records its calls wrote on their way
        out are kept (a cancelled writer fails them instead)."""
        if self._send is None:
            return
        self._finishing = True
        with suppress(trio.WouldBlock):
            self._send.send_nowait(_WAKE)  # (a full queue means the writer is busy anyway)

    async def run_writer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: commit queued writes in batches until cancelled, or after
        :meth:`finish_writer` until nothing is left queued.

        Each batch (everything queued, up to ``max_batch`` jobs) is one transaction run in
        a worker thread; then every job's waiter is woken.  If a job raises, the batch is
        rolled back and replayed one job per transaction so only that job fails.  A batch
        of writes nobody waits for (write_soon's) is held up to :data:`GATHER_SECONDS`
        for more to join it, or until a write somebody waits for arrives."""
        if self._send is not None:
            raise StorageError("the store's writer is already running")
        send, receive = trio.open_memory_channel[_Job](self._queue_size)
        self._send = send
        task_status.started()
        taken: list[_Job] = []  # received, not yet finished (failed if the writer stops)
        try:
            async with receive.clone():
                while True:
                    if self._finishing and not self._soon and not receive.statistics().current_buffer_used:
                        return
                    taken = [] if self._soon else [await receive.receive()]
                    self._take_queued(receive, taken, self._max_batch)
                    if self._gather_seconds > 0 and not self._finishing and all(job.done is None for job in taken):
                        with trio.move_on_after(self._gather_seconds):
                            while True:
                                job = await receive.receive()
                                taken.append(job)
                                if job.done is not None:
                                    break
                        self._take_queued(receive, taken, self._max_batch)
                    taken += self._soon
                    self._soon = []
                    batch = [job for job in taken if job is not _WAKE]
                    if not batch:
                        continue
                    # What the jobs report if the thread never runs them (the writer
                    # was cancelled first); _commit_batch clears it.
                    stopped = StorageError("the store's writer stopped before this write")
                    for job in batch:
                        job.error = stopped
                    try:
                        await trio.to_thread.run_sync(self._commit_batch, batch,
                                                      limiter=self._limiter)
                    finally:
                        # Even when cancelled: to_thread waits for the thread, so the
                        # batch did finish (committed or rolled back) before we get here.
                        taken = []
                        for job in batch:
                            job.finish()
        finally:
            self._send = None
            self._finishing = False
            # Writes still queued when the writer stops are failed, not left waiting
            # forever (their callers may be shielded from the cancellation).
            left = taken + self._soon
            self._soon = []
            self._take_queued(receive, left, None)
            for job in left:
                if job is not _WAKE:
                    job.error = StorageError("the store's writer stopped before this write")
                    job.finish()
            receive.close()
            await send.aclose()

    @staticmethod
    def _take_queued(receive: trio.MemoryReceiveChannel[_Job], into: list[_Job], most: int | None) -> None:
        """Move what is queued into ``into`` until it holds ``most`` jobs (None: all)."""
        while most is None or len(into) < most:
            try:
                into.append(receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break

    def _commit_batch(self, batch: list[_Job]) -> None:
        for job in batch:
            job.error = None
        counted = any(job.insert is None or job.insert.counted for job in batch)
        try:
            with self._transaction(counted=counted) as conn:
                rows: dict[Insert, list[Sequence[object]]] = {}
                for job in batch:
                    insert = job.insert
                    if insert is not None:
                        rows.setdefault(insert, []).append(job.row)
                        continue
                    if rows:  # what was queued before this job is written before it runs
                        _insert_all(conn, rows)
                    job.result = job.op(conn)
                if rows:
                    _insert_all(conn, rows)
        except Exception as exc:  # noqa: BLE001 - handed to the jobs' waiters
            if len(batch) == 1:
                batch[0].error = exc
                return
            logger.warning("a write batch of %d failed; replaying one job at a time", len(batch))
            for job in batch:
                job.result = None
                try:
                    with self._transaction() as conn:
                        job.result = job.op(conn)
                except Exception as exc:  # noqa: BLE001 - handed to that job's waiter
                    job.error = exc
        self._batches += 1
        self._jobs += len(batch)

    def statistics(self) -> dict[str, int]:
        """Writer figures: batches committed and jobs in them (jobs/batches is the mean
        group-commit size)."""
        return {"batches": self._batches, "jobs": self._jobs}


def _insert_all(conn: sqlite3.Connection, rows: dict[Insert, list[Sequence[object]]]) -> None:
    for insert, queued in rows.items():
        insert.run(conn, queued)
    rows.clear()


def _versions(conn: sqlite3.Connection) -> dict[str, int] | None:
    """The change counters, or None before the migration that creates them."""
    try:
        return dict(conn.execute("SELECT name, value FROM versions").fetchall())
    except sqlite3.OperationalError:
        return None


_UPSERT_BINDING = (
    "INSERT OR REPLACE INTO bindings (id, account_id, contact, contact_params, received_host, "
    "received_port, transport, local_host, local_port, expires_at, call_id, cseq, user_agent, "
    "registered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _binding_row(b: Binding) -> tuple[object, ...]:
    return (b.id, b.account_id, str(b.contact), json.dumps(b.contact_params), b.received[0],
            b.received[1], b.transport, b.local[0], b.local[1], b.expires_at, b.call_id, b.cseq,
            b.user_agent, b.registered_at)
