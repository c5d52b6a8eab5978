"""The web side's queries, on top of :class:`engine.storage.Store`.

Reads use the store's read connection (the trio thread); writes go through the store's
group-commit writer, so a handler that awaited a write knows it is committed.  Every
read of a customer's object takes the owner as a filter (``owner=None`` only for
admins), so an object of another customer is indistinguishable from a missing one.
Rows are returned as plain dicts ready to be serialised.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.records import KV_MAX_KEYS
from engine.storage import ConflictError, Customer, Store

_CUSTOMER = ("id", "name", "email", "admin", "created")
_ACCOUNT = ("id", "customer_id", "user", "domain", "incoming_only", "in_dialplan", "out_dialplan",
            "keepalive", "disabled", "created")
_DIALPLAN = ("customer_id", "name", "trace_email", "limits", "updated", "size")
_PROVIDER = ("id", "customer_id", "name", "server", "username", "password", "from_user", "from_host",
             "outbound_proxy", "headers", "register", "register_contact", "register_expiry", "created")
_TRACE = ("id", "customer_id", "call_id", "dialplan", "created")
_CDR = ("id", "customer_id", "bridge_id", "call_id", "direction", "leg", "from_uri", "to_uri", "created",
        "progress_at", "answered_at", "hungup_at", "status", "reason", "hangup_reason")
_KV = ("customer_id", "key", "value", "updated")

ACCOUNT_FLAGS = ("incoming_only", "keepalive", "disabled")
PROVIDER_FIELDS = _PROVIDER[2:13]


def token_hash(token: str) -> str:
    """What the database keeps of a session token."""
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """One page of a list: the rows, and how many match in all."""

    items: list[dict[str, Any]]
    total: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Filter:
    """A list's WHERE clause, built from equality and range conditions."""

    clauses: tuple[str, ...] = ()
    params: tuple[object, ...] = ()

    def add(self, clause: str, *params: object) -> Filter:
        return Filter(clauses=(*self.clauses, clause), params=(*self.params, *params))

    def owner(self, owner: int | None, column: str = "customer_id") -> Filter:
        return self if owner is None else self.add(f"{column} = ?", owner)

    def sql(self) -> str:
        return " WHERE " + " AND ".join(self.clauses) if self.clauses else ""


def _as_dict(columns: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(columns, row, strict=True))


class WebRepository:
    """Sessions, customers and every resource of the API (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- generic ------------------------------------------------------------------------
    def _page(self, table: str, columns: Sequence[str], where: Filter, order: str, limit: int,
              offset: int, select: str | None = None) -> Page:
        select = select or ", ".join(columns)
        total = self.store.query_one(f"SELECT COUNT(*) FROM {table}{where.sql()}", where.params)
        rows = self.store.query_all(
            f"SELECT {select} FROM {table}{where.sql()} ORDER BY {order} LIMIT ? OFFSET ?",
            (*where.params, limit, offset))
        return Page(items=[_as_dict(columns, r) for r in rows], total=int(total[0]) if total else 0)

    def _one(self, table: str, columns: Sequence[str], where: Filter, select: str | None = None) -> dict[str, Any] | None:
        row = self.store.query_one(f"SELECT {select or ', '.join(columns)} FROM {table}{where.sql()}",
                                   where.params)
        return None if row is None else _as_dict(columns, row)

    # -- sessions -----------------------------------------------------------------------
    async def create_session(self, customer_id: int, token: str, *, now: float, expires_at: float,
                             source: str | None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM web_sessions WHERE expires_at <= ?", (now,))
            conn.execute("INSERT INTO web_sessions (token_hash, customer_id, created, expires_at, source) "
                         "VALUES (?, ?, ?, ?, ?)", (token_hash(token), customer_id, now, expires_at, source))
        await self.store.write(op)

    def session(self, token: str, now: float) -> tuple[Customer, float, float] | None:
        """(customer, created, expires_at) of a live session, else None."""
        row = self.store.query_one(
            "SELECT c.id, c.name, c.email, c.admin, c.created, s.created, s.expires_at "
            "FROM web_sessions s JOIN customers c ON c.id = s.customer_id "
            "WHERE s.token_hash = ? AND s.expires_at > ?", (token_hash(token), now))
        if row is None:
            return None
        return _customer(row[:5]), float(row[5]), float(row[6])

    async def set_session_expiry(self, token: str, expires_at: float) -> None:
        await self.store.write(lambda conn: conn.execute(
            "UPDATE web_sessions SET expires_at = ? WHERE token_hash = ?", (expires_at, token_hash(token))))

    async def end_session(self, token: str) -> None:
        await self.store.write(lambda conn: conn.execute(
            "DELETE FROM web_sessions WHERE token_hash = ?", (token_hash(token),)))

    # -- customers ----------------------------------------------------------------------
    def customer(self, customer_id: int) -> Customer | None:
        row = self.store.query_one(f"SELECT {', '.join(_CUSTOMER)} FROM customers WHERE id = ?", (customer_id,))
        return None if row is None else _customer(row)

    def customer_by_name(self, name: str) -> Customer | None:
        row = self.store.query_one(f"SELECT {', '.join(_CUSTOMER)} FROM customers WHERE name = ?", (name,))
        return None if row is None else _customer(row)

    def password_hash(self, name: str) -> tuple[Customer, str] | None:
        row = self.store.query_one(
            f"SELECT {', '.join(_CUSTOMER)}, password_hash FROM customers WHERE name = ?", (name,))
        return None if row is None else (_customer(row[:5]), str(row[5]))

    def password_hash_of(self, customer_id: int) -> str | None:
        row = self.store.query_one("SELECT password_hash FROM customers WHERE id = ?", (customer_id,))
        return None if row is None else str(row[0])

    def customers(self, limit: int, offset: int) -> Page:
        page = self._page("customers", _CUSTOMER, Filter(), "id", limit, offset)
        return Page(items=[customer_json(_customer(tuple(r.values()))) for r in page.items], total=page.total)

    async def sign_up(self, *, name: str, email: str | None, password_hash: str, domain: str,
                      ha1: tuple[str, str], dialplan: str, key: str, now: float) -> Customer:
        """Create a customer with its SIP account ``name@domain`` (In and Out dialplan
        ``default``), the ``default`` dialplan and a webcallback key, in one transaction."""
        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute("INSERT INTO customers (name, email, password_hash, admin, created) "
                               "VALUES (?, ?, ?, 0, ?)", (name, email, password_hash, now))
            cid = int(cur.lastrowid or 0)
            conn.execute("INSERT INTO sip_accounts (user, domain, customer_id, ha1_md5, ha1_sha256, "
                         "in_dialplan, out_dialplan, created) VALUES (?, ?, ?, ?, ?, 'default', 'default', ?)",
                         (name, domain, cid, ha1[0], ha1[1], now))
            conn.execute("INSERT INTO dialplans (customer_id, name, source, updated) VALUES (?, 'default', ?, ?)",
                         (cid, dialplan, now))
            conn.execute("INSERT INTO webcallback_keys (customer_id, key, created) VALUES (?, ?, ?)",
                         (cid, key, now))
            return cid
        try:
            cid = await self.store.write(op)
        except sqlite3.IntegrityError as exc:
            text = str(exc)
            what = "e-mail address" if "email" in text else "user name"
            raise ConflictError(f"that {what} is taken") from exc
        return Customer(id=cid, name=name, email=email, admin=False, created=now)

    async def update_customer(self, customer_id: int, *, email: str | None) -> None:
        try:
            await self.store.write(lambda conn: conn.execute(
                "UPDATE customers SET email = ? WHERE id = ?", (email, customer_id)))
        except sqlite3.IntegrityError as exc:
            raise ConflictError("that e-mail address is taken") from exc

    async def set_password(self, customer_id: int, password_hash: str, keep_session: str | None) -> None:
        """Change the password and end every other session of the customer."""
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE customers SET password_hash = ? WHERE id = ?", (password_hash, customer_id))
            conn.execute("DELETE FROM web_sessions WHERE customer_id = ? AND token_hash IS NOT ?",
                         (customer_id, token_hash(keep_session) if keep_session else None))
        await self.store.write(op)

    def webcallback_key(self, customer_id: int) -> str | None:
        row = self.store.query_one("SELECT key FROM webcallback_keys WHERE customer_id = ?", (customer_id,))
        return None if row is None else str(row[0])

    async def set_webcallback_key(self, customer_id: int, key: str, now: float) -> None:
        await self.store.write(lambda conn: conn.execute(
            "INSERT INTO webcallback_keys (customer_id, key, created) VALUES (?, ?, ?) "
            "ON CONFLICT (customer_id) DO UPDATE SET key = excluded.key, created = excluded.created",
            (customer_id, key, now)))

    # -- SIP accounts ---------------------------------------------------------------------
    def served_domains(self) -> set[str]:
        return {str(r[0]) for r in self.store.query_all("SELECT domain FROM sip_domains")}

    def accounts(self, where: Filter, limit: int, offset: int) -> Page:
        return self._page("sip_accounts", _ACCOUNT, where, "id", limit, offset)

    def account(self, account_id: int, owner: int | None) -> dict[str, Any] | None:
        return self._one("sip_accounts", _ACCOUNT, Filter().add("id = ?", account_id).owner(owner))

    def account_by_user(self, user: str, customer_id: int) -> dict[str, Any] | None:
        """The customer's account named ``user`` (in the default domain first)."""
        where = Filter().add("user = ?", user).owner(customer_id)
        rows = self.store.query_all(
            f"SELECT {', '.join(_ACCOUNT)} FROM sip_accounts{where.sql()} "
            "ORDER BY domain != 'local', id LIMIT 1", where.params)
        return _as_dict(_ACCOUNT, rows[0]) if rows else None

    async def add_account(self, values: dict[str, Any]) -> int:
        names = list(values)
        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(f"INSERT INTO sip_accounts ({', '.join(names)}) VALUES "
                               f"({', '.join('?' for _ in names)})", tuple(values.values()))
            return int(cur.lastrowid or 0)
        try:
            return await self.store.write(op)
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"the account {values['user']}@{values['domain']} already exists") from exc

    async def update(self, table: str, row_id: int, values: dict[str, Any]) -> None:
        """Set ``values`` on row ``row_id`` of ``table`` (columns checked by the caller)."""
        if not values:
            return
        sets = ", ".join(f"{name} = ?" for name in values)
        try:
            await self.store.write(lambda conn: conn.execute(
                f"UPDATE {table} SET {sets} WHERE id = ?", (*values.values(), row_id)))
        except sqlite3.IntegrityError as exc:
            raise ConflictError("that name is taken") from exc

    async def delete(self, table: str, row_id: int) -> None:
        await self.store.write(lambda conn: conn.execute(f"DELETE FROM {table} WHERE id = ?", (row_id,)))

    # -- dialplans ------------------------------------------------------------------------
    _DIALPLAN_SELECT = "customer_id, name, trace_email, limits, updated, length(source)"

    def dialplans(self, where: Filter, limit: int, offset: int) -> Page:
        page = self._page("dialplans", _DIALPLAN, where, "customer_id, name", limit, offset,
                          select=self._DIALPLAN_SELECT)
        return Page(items=[_dialplan_json(r) for r in page.items], total=page.total)

    def dialplan(self, customer_id: int, name: str) -> dict[str, Any] | None:
        row = self.store.query_one(
            f"SELECT {self._DIALPLAN_SELECT}, source FROM dialplans WHERE customer_id = ? AND name = ?",
            (customer_id, name))
        if row is None:
            return None
        return {**_dialplan_json(_as_dict(_DIALPLAN, row[:6])), "source": row[6]}

    async def put_dialplan(self, customer_id: int, name: str, *, source: str, trace_email: str | None,
                           limits: dict[str, float], now: float) -> bool:
        """Create or replace; True if it was created."""
        def op(conn: sqlite3.Connection) -> bool:
            existed = conn.execute("SELECT 1 FROM dialplans WHERE customer_id = ? AND name = ?",
                                   (customer_id, name)).fetchone() is not None
            conn.execute(
                "INSERT INTO dialplans (customer_id, name, source, trace_email, limits, updated) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (customer_id, name) DO UPDATE SET "
                "source = excluded.source, trace_email = excluded.trace_email, "
                "limits = excluded.limits, updated = excluded.updated",
                (customer_id, name, source, trace_email, json.dumps(limits), now))
            return not existed
        return await self.store.write(op)

    async def delete_dialplan(self, customer_id: int, name: str) -> None:
        await self.store.write(lambda conn: conn.execute(
            "DELETE FROM dialplans WHERE customer_id = ? AND name = ?", (customer_id, name)))

    def accounts_using_dialplan(self, customer_id: int, name: str) -> list[str]:
        rows = self.store.query_all(
            "SELECT user || '@' || domain FROM sip_accounts WHERE customer_id = ? AND "
            "(in_dialplan = ? OR out_dialplan = ?) ORDER BY id", (customer_id, name, name))
        return [str(r[0]) for r in rows]

    # -- providers ------------------------------------------------------------------------
    def providers(self, where: Filter, limit: int, offset: int) -> Page:
        page = self._page("providers", _PROVIDER, where, "id", limit, offset)
        return Page(items=[provider_json(r) for r in page.items], total=page.total)

    def provider(self, provider_id: int, owner: int | None) -> dict[str, Any] | None:
        row = self._one("providers", _PROVIDER, Filter().add("id = ?", provider_id).owner(owner))
        return None if row is None else provider_json(row)

    async def add_provider(self, customer_id: int, values: dict[str, Any], now: float) -> int:
        data = {**values, "customer_id": customer_id, "created": now}
        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(f"INSERT INTO providers ({', '.join(data)}) VALUES "
                               f"({', '.join('?' for _ in data)})", tuple(data.values()))
            return int(cur.lastrowid or 0)
        try:
            return await self.store.write(op)
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"a provider named {values.get('name')!r} already exists") from exc

    # -- traces and CDRs -------------------------------------------------------------------
    def traces(self, where: Filter, limit: int, offset: int) -> Page:
        return self._page("traces", _TRACE, where, "created DESC, id", limit, offset)

    def trace(self, trace_id: str, owner: int | None) -> dict[str, Any] | None:
        return self._one("traces", (*_TRACE, "text"), Filter().add("id = ?", trace_id).owner(owner))

    def cdrs(self, where: Filter, limit: int, offset: int) -> Page:
        return self._page("cdrs", _CDR, where, "created DESC, id", limit, offset)

    def cdr(self, cdr_id: str, owner: int | None) -> dict[str, Any] | None:
        return self._one("cdrs", _CDR, Filter().add("id = ?", cdr_id).owner(owner))

    # -- the key/value store ----------------------------------------------------------------
    def kv_items(self, where: Filter, limit: int, offset: int) -> Page:
        return self._page("kv", _KV, where, "customer_id, key", limit, offset)

    def kv_item(self, customer_id: int, key: str) -> dict[str, Any] | None:
        return self._one("kv", _KV, Filter().add("key = ?", key).owner(customer_id))

    async def kv_put(self, customer_id: int, key: str, value: str, now: float) -> bool | None:
        """Write a key; True if created, False if replaced, None if the store is full."""
        def op(conn: sqlite3.Connection) -> bool | None:
            exists = conn.execute("SELECT 1 FROM kv WHERE customer_id = ? AND key = ?",
                                  (customer_id, key)).fetchone() is not None
            if not exists:
                count = conn.execute("SELECT COUNT(*) FROM kv WHERE customer_id = ?", (customer_id,)).fetchone()[0]
                if count >= KV_MAX_KEYS:
                    return None
            conn.execute("INSERT INTO kv (customer_id, key, value, updated) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (customer_id, key) DO UPDATE SET value = excluded.value, "
                         "updated = excluded.updated", (customer_id, key, value, now))
            return not exists
        return await self.store.write(op)

    async def kv_delete(self, customer_id: int, key: str) -> None:
        await self.store.write(lambda conn: conn.execute(
            "DELETE FROM kv WHERE customer_id = ? AND key = ?", (customer_id, key)))


def _customer(row: Sequence[Any]) -> Customer:
    return Customer(id=int(row[0]), name=str(row[1]), email=row[2], admin=bool(row[3]), created=float(row[4]))


def customer_json(customer: Customer) -> dict[str, Any]:
    return {"id": customer.id, "name": customer.name, "email": customer.email,
            "admin": customer.admin, "created": customer.created}


def account_json(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for flag in ACCOUNT_FLAGS:
        out[flag] = bool(out[flag])
    out["aor"] = f"{row['user']}@{row['domain']}"
    return out


def _dialplan_json(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    try:
        out["limits"] = json.loads(row["limits"] or "{}")
    except ValueError:
        out["limits"] = {}
    return out


def provider_json(row: dict[str, Any]) -> dict[str, Any]:
    """A provider as the API shows it: the password is write-only."""
    out = dict(row)
    out["has_password"] = bool(out.pop("password"))
    out["register"] = bool(out["register"])
    try:
        out["headers"] = [list(h) for h in json.loads(row["headers"] or "[]")]
    except ValueError:
        out["headers"] = []
    return out
