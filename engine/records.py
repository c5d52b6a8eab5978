"""What calls read and leave behind: dialplans, providers, the key/value store, traces
and call detail records (CDRs), on top of :class:`engine.storage.Store`.

Reads come from the store's read connection (never blocking the writer); writes go
through the group-commit writer.  A CDR is one row per leg: the caller's leg and each
dialled leg, linked by the bridge id when they were bridged.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from engine.storage import Insert, StorageError, Store
from sip.message import random_hex

if TYPE_CHECKING:
    from engine.bridge import Bridge
    from engine.calls import Call
    from engine.legs import OutboundLeg
    from engine.storage import Account
    from sip.message import Response

log = logging.getLogger(__name__)

KV_MAX_KEYS = 100
KV_MAX_KEY = 64
KV_MAX_VALUE = 1024
#: Characters no key or value may hold (the dialplan API's rule, kept here too: a
#: worker's own checks are not trusted, and the HTTP API writes the same store).
KV_FORBIDDEN = re.compile(r"[\r\n\x00]")


@dataclass(frozen=True, slots=True, kw_only=True)
class Provider:
    """A customer's SIP trunk (docs/providers.md)."""

    id: int
    customer_id: int
    name: str
    server: str  # host[:port]
    username: str | None = None
    password: str | None = None
    from_user: str | None = None
    from_host: str | None = None
    outbound_proxy: str | None = None  # host[:port]
    headers: tuple[tuple[str, str], ...] = ()
    register: bool = False
    register_contact: str | None = None
    register_expiry: int = 3600

    @property
    def server_host(self) -> str:
        return _split_hostport(self.server)[0]

    @property
    def server_port(self) -> int | None:
        return _split_hostport(self.server)[1]

    @property
    def proxy_host(self) -> str | None:
        return _split_hostport(self.outbound_proxy)[0] if self.outbound_proxy else None

    @property
    def proxy_port(self) -> int | None:
        return _split_hostport(self.outbound_proxy)[1] if self.outbound_proxy else None


def _split_hostport(text: str) -> tuple[str, int | None]:
    text = text.strip()
    if text.startswith("sip:"):
        text = text[4:]
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    host, sep, port = text.partition(":")
    return host, int(port) if sep and port.isdigit() else None


@dataclass(slots=True)
class _CDR:
    id: str
    customer_id: int | None
    call_id: str
    direction: str
    leg: str
    from_uri: str
    to_uri: str
    created: float
    bridge_id: str | None = None
    progress_at: float | None = None
    answered_at: float | None = None
    hungup_at: float | None = None
    status: int | None = None
    reason: str | None = None
    hangup_reason: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    written: bool = False  # (each record is written once, whichever path ends it)


@dataclass(eq=False, slots=True)
class Placed:
    """The owner of legs the server places with no caller behind them (a click-to-call's
    two legs): to their records what a :class:`~engine.calls.Call` is to the legs its
    dialplan dials, without a caller's record."""

    account: Account


class CallRecords:
    """Per-server access to the tables calls use.

    Records are gathered per owner (a call, or a :class:`Placed`) while its legs are up:
    a leg that fails is written at its final response, the legs of a bridge when the
    bridge ends, and a caller's that no bridge holds when its call finishes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._open: dict[int, list[tuple[object, _CDR]]] = {}  # id(call) -> leg records

    # -- reads --------------------------------------------------------------------------
    # Both are read for every call: from memory until the tables change.
    def dialplan(self, customer_id: int, name: str) -> tuple[str | None, str | None]:
        def load() -> tuple[str | None, str | None]:
            row = self.store.query_one(
                "SELECT source, trace_email FROM dialplans WHERE customer_id = ? AND name = ?", (customer_id, name)
            )
            return (None, None) if row is None else (str(row[0]), row[1])

        return self.store.cached_read("dialplans", (customer_id, name), load)

    def providers(self, customer_id: int) -> list[Provider]:
        def load() -> tuple[Provider, ...]:
            rows = self.store.query_all(
                "SELECT id, customer_id, name, server, username, password, from_user, from_host, "
                "outbound_proxy, headers, register, register_contact, register_expiry "
                "FROM providers WHERE customer_id = ? ORDER BY name",
                (customer_id,),
            )
            return tuple(_provider(r) for r in rows)

        return list(self.store.cached_read("providers", customer_id, load))

    # -- key/value store (sys.DB*) ------------------------------------------------------------
    async def kv_write(self, customer_id: int, key: str, value: str) -> str | None:
        """Store a value; returns an error message for the author, or None."""
        if len(key) > KV_MAX_KEY or not key:
            return f"sys.DBWrite(): key must be 1-{KV_MAX_KEY} characters"
        if len(value) > KV_MAX_VALUE:
            return f"sys.DBWrite(): value must be at most {KV_MAX_VALUE} characters"
        if KV_FORBIDDEN.search(key) or KV_FORBIDDEN.search(value):
            return "sys.DBWrite(): key and value must not contain CR, LF or NUL"

        def op(conn: sqlite3.Connection) -> str | None:
            exists = conn.execute("SELECT 1 FROM kv WHERE customer_id = ? AND key = ?", (customer_id, key)).fetchone()
            if exists is None:
                count = conn.execute("SELECT COUNT(*) FROM kv WHERE customer_id = ?", (customer_id,)).fetchone()[0]
                if count >= KV_MAX_KEYS:
                    return f"sys.DBWrite(): at most {KV_MAX_KEYS} keys per customer"
            conn.execute(
                "INSERT INTO kv (customer_id, key, value, updated) VALUES (?, ?, ?, strftime('%s','now')) "
                "ON CONFLICT (customer_id, key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                (customer_id, key, value),
            )
            return None

        return await self.store.write(op)

    async def kv_read(self, customer_id: int, key: str) -> str | None:
        row = self.store.query_one("SELECT value FROM kv WHERE customer_id = ? AND key = ?", (customer_id, key))
        return None if row is None else str(row[0])

    async def kv_delete(self, customer_id: int, key: str) -> None:
        await self.store.write(lambda conn: conn.execute("DELETE FROM kv WHERE customer_id = ? AND key = ?", (customer_id, key)))

    async def kv_keys(self, customer_id: int) -> list[str]:
        return [str(r[0]) for r in self.store.query_all("SELECT key FROM kv WHERE customer_id = ? ORDER BY key", (customer_id,))]

    # -- traces -------------------------------------------------------------------------------
    def save_trace(self, call: Call, dialplan: str, lines: list[str], now: float) -> str:
        """Queue the trace of one dialplan run for storage; returns its id."""
        trace_id = random_hex(16)
        owner = call.account.customer_id if call.account is not None else None
        row = (trace_id, owner, call.leg.request.call_id, dialplan, now, "\n".join(lines))
        self._record(_TRACE_ROW, row, f"the trace {trace_id}")
        return trace_id

    def _record(self, insert: Insert, row: tuple[object, ...], what: str) -> None:
        """Queue a record nobody waits for.  Calls ending while the server shuts down
        (its writer already stopped) lose theirs: said in the log, not raised into the
        call's teardown."""
        try:
            self.store.insert_soon(insert, row, what=what)
        except StorageError as exc:
            log.error("could not store %s: %s", what, exc)

    # -- CDRs ---------------------------------------------------------------------------------
    def _caller_cdr(self, call: Call, now: float) -> _CDR:
        legs = self._open.setdefault(id(call), [])
        for owner, cdr in legs:
            if owner is call:
                return cdr
        cdr = _inbound_cdr(call, "caller")
        legs.append((call, cdr))
        return cdr

    def leg_started(self, call: Call | Placed, leg: OutboundLeg, now: float) -> None:
        if isinstance(call, Placed):
            self._open.setdefault(id(call), [])
        else:
            self._caller_cdr(call, now)
        cdr = _CDR(
            id=random_hex(16),
            customer_id=call.account.customer_id if call.account is not None else None,
            call_id=leg.call_id,
            direction="out",
            leg="callee",
            from_uri=str(leg.request.from_.uri),
            to_uri=str(leg.request.uri),
            created=now,
        )
        self._open[id(call)].append((leg, cdr))
        leg.when_final(lambda final: self._leg_final(call, leg, cdr, final))
        leg.when_hung_up(lambda why: self._leg_hung_up(call, leg, cdr, why))

    def _leg_final(self, call: Call | Placed, leg: OutboundLeg, cdr: _CDR, final: Response) -> None:
        cdr.status = final.status
        cdr.reason = final.reason
        cdr.progress_at = _wall(leg.progress_at, leg.started_at, cdr.created)
        if 200 <= final.status < 300:
            cdr.answered_at = _wall(leg.answered_at, leg.started_at, cdr.created)
            return  # written when its bridge ends, or when it is hung up outside one
        cdr.hungup_at = cdr.created if cdr.answered_at is None else cdr.answered_at
        self._write([cdr])
        self._forget(call, leg)

    def _leg_hung_up(self, call: Call | Placed, leg: OutboundLeg, cdr: _CDR, why: str) -> None:
        """An answered leg was hung up outside a bridge (a 2xx that crossed our CANCEL,
        a late 2xx of a fork, a Dial's winner whose caller had gone, a web callback's,
        a click-to-call's whose other party did not answer)."""
        if cdr.bridge_id is not None:
            return
        cdr.hungup_at = _wall(trio.current_time(), leg.started_at, cdr.created)
        cdr.hangup_reason = why
        self._write([cdr])
        self._forget(call, leg)

    def bridge_started(self, call: Call, bridge: Bridge, winner: OutboundLeg, now: float) -> None:
        self._bridge_caller(call, bridge, now)
        self.legs_bridged(call, bridge, (winner,), now)

    def inbound_bridged(self, caller: Call, callback: Call, bridge: Bridge, now: float) -> None:
        """A waiting caller was answered and joined to the call that came back to it (a
        callback): both calls' records carry the bridge id, written when it ends."""
        self._bridge_caller(caller, bridge, now)
        cdr = _inbound_cdr(callback, "callback")
        cdr.bridge_id, cdr.answered_at, cdr.status = bridge.bridge_id, now, 200
        cdr.reason = callback.leg.final_reason or "OK"
        self._open[id(caller)].append((callback, cdr))

    def legs_bridged(self, owner: Call | Placed, bridge: Bridge, legs: tuple[OutboundLeg, ...], now: float) -> None:
        """Answered legs of ``owner`` were joined (a call's winner, a click-to-call's two)."""
        for leg, cdr in self._open.get(id(owner), []):
            if any(leg is joined for joined in legs):
                cdr.bridge_id = bridge.bridge_id
                cdr.answered_at = cdr.answered_at or now

    def bridge_ended(self, call: Call | Placed, bridge: Bridge, by: str, reason: str, now: float) -> None:
        records = [cdr for _, cdr in self._open.pop(id(call), []) if cdr.bridge_id == bridge.bridge_id]
        for cdr in records:
            cdr.hungup_at = now
            cdr.hangup_reason = reason if by in reason else f"{reason} ({by})"
        if records:
            self._write(records)

    def _bridge_caller(self, call: Call, bridge: Bridge, now: float) -> None:
        caller = self._caller_cdr(call, now)
        caller.bridge_id = bridge.bridge_id
        caller.answered_at = now
        caller.status = 200
        caller.reason = call.leg.final_reason or "OK"

    def call_finished(self, call: Call, now: float) -> None:
        """The caller's INVITE has its final answer and the call's dialplan has ended:
        write the caller's CDR (also of a call that dialled nothing: a dialplan's
        sys.Respond, a limit's 480) unless a bridge holds it (bridge_ended writes it)."""
        if call.bridge is not None:
            return  # (also when the bridge has ended already and written it)
        caller = self._caller_cdr(call, now)  # (a call that dialled nothing has none yet)
        caller.status = call.leg.final_status
        caller.reason = call.leg.final_reason
        caller.hungup_at = now
        self._write([caller])
        self._forget(call, call)

    def _forget(self, call: Call | Placed, leg: object) -> None:
        records = self._open.get(id(call))
        if records is not None:
            records[:] = [(o, c) for o, c in records if o is not leg]
            if not records:  # (keyed by id(): an owner's key must not outlive it)
                del self._open[id(call)]

    def _write(self, cdrs: list[_CDR]) -> None:
        for c in cdrs:
            if c.written:
                continue
            c.written = True
            row = (
                c.id, c.customer_id, c.bridge_id, c.call_id, c.direction, c.leg, c.from_uri, c.to_uri, c.created,
                c.progress_at, c.answered_at, c.hungup_at, c.status, c.reason, c.hangup_reason,
            )
            self._record(_CDR_ROW, row, f"the call record {c.id}")


# (No change counter follows either table: see storage.Insert.)
_TRACE_ROW = Insert("INSERT INTO traces (id, customer_id, call_id, dialplan, created, text)", 6, counted=False)
_CDR_ROW = Insert(
    "INSERT OR REPLACE INTO cdrs (id, customer_id, bridge_id, call_id, direction, leg, from_uri, to_uri, created, "
    "progress_at, answered_at, hungup_at, status, reason, hangup_reason)", 15, counted=False
)


def _inbound_cdr(call: Call, leg: str) -> _CDR:
    """A new record of the INVITE that started ``call``."""
    request = call.leg.request
    return _CDR(
        id=random_hex(16),
        customer_id=call.account.customer_id if call.account is not None else None,
        call_id=request.call_id,
        direction=call.direction.lower(),
        leg=leg,
        from_uri=str(request.from_.uri),
        to_uri=str(request.uri),
        created=call.started,
    )


def _wall(mono: float | None, mono_start: float | None, wall_start: float) -> float | None:
    if mono is None or mono_start is None:
        return None
    return wall_start + (mono - mono_start)


def _provider(row: tuple[object, ...]) -> Provider:
    headers_raw = row[9]
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(headers_raw, str) and headers_raw:
        try:
            headers = tuple((str(k), str(v)) for k, v in json.loads(headers_raw))
        except (ValueError, TypeError):
            headers = ()
    return Provider(
        id=int(row[0]),  # type: ignore[call-overload]
        customer_id=int(row[1]),  # type: ignore[call-overload]
        name=str(row[2]),
        server=str(row[3]),
        username=row[4] if isinstance(row[4], str) else None,
        password=row[5] if isinstance(row[5], str) else None,
        from_user=row[6] if isinstance(row[6], str) else None,
        from_host=row[7] if isinstance(row[7], str) else None,
        outbound_proxy=row[8] if isinstance(row[8], str) else None,
        headers=headers,
        register=bool(row[10]),
        register_contact=row[11] if isinstance(row[11], str) else None,
        register_expiry=int(row[12]) if isinstance(row[12], int) else 3600,
    )
