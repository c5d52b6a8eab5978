"""The database schema: numbered migrations, applied in order, each exactly once.

Append only: a migration that has shipped never changes; a new need gets a new number.
:class:`engine.storage.Store` applies them when it opens a data directory.
"""

from __future__ import annotations

from collections.abc import Sequence

#: The pseudo-domain that stands for the server's default domain (its ``--domain``).
LOCAL_DOMAIN = "local"


def _version_triggers(table: str, counter: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_{op.lower()}_version AFTER {op} ON {table} "
        f"BEGIN UPDATE versions SET value = value + 1 WHERE name = '{counter}'; END"
        for op in ("INSERT", "UPDATE", "DELETE")
    ]


_MIGRATION_1 = [
    """CREATE TABLE versions (name TEXT PRIMARY KEY, value INTEGER NOT NULL)""",
    """INSERT INTO versions (name, value) VALUES ('directory', 1), ('dialplans', 1)""",
    """CREATE TABLE settings (name TEXT PRIMARY KEY, value BLOB NOT NULL)""",
    """CREATE TABLE customers (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        email TEXT UNIQUE COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        admin INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL)""",
    """CREATE TABLE sip_domains (
        id INTEGER PRIMARY KEY,
        domain TEXT NOT NULL UNIQUE,
        aliases TEXT NOT NULL DEFAULT '[]',
        created REAL NOT NULL)""",
    f"""INSERT INTO sip_domains (domain, aliases, created) VALUES ('{LOCAL_DOMAIN}', '[]', 0)""",
    """CREATE TABLE sip_accounts (
        id INTEGER PRIMARY KEY,
        user TEXT NOT NULL,
        domain TEXT NOT NULL REFERENCES sip_domains(domain) ON UPDATE CASCADE,
        customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
        ha1_md5 TEXT NOT NULL,
        ha1_sha256 TEXT NOT NULL,
        incoming_only INTEGER NOT NULL DEFAULT 0,
        in_dialplan TEXT,
        out_dialplan TEXT,
        keepalive INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        UNIQUE (user, domain))""",
    """CREATE INDEX sip_accounts_customer ON sip_accounts (customer_id)""",
    """CREATE TABLE bindings (
        id TEXT PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES sip_accounts(id) ON DELETE CASCADE,
        contact TEXT NOT NULL,
        contact_params TEXT NOT NULL DEFAULT '',
        received_host TEXT NOT NULL,
        received_port INTEGER NOT NULL,
        transport TEXT NOT NULL,
        local_host TEXT NOT NULL,
        local_port INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        call_id TEXT NOT NULL,
        cseq INTEGER NOT NULL,
        user_agent TEXT,
        registered_at REAL NOT NULL)""",
    """CREATE INDEX bindings_account ON bindings (account_id)""",
    """CREATE TABLE dialplans (
        id INTEGER PRIMARY KEY,
        customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        source TEXT NOT NULL,
        trace_email TEXT,
        updated REAL NOT NULL,
        UNIQUE (customer_id, name))""",
    *_version_triggers("customers", "directory"),
    *_version_triggers("sip_domains", "directory"),
    *_version_triggers("sip_accounts", "directory"),
    *_version_triggers("dialplans", "dialplans"),
]


_MIGRATION_2 = [
    # A customer's SIP trunks (sys.Dial "number@provider"); the registration columns are
    # read by the provider registration agent.
    """CREATE TABLE providers (
        id INTEGER PRIMARY KEY,
        customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
        name TEXT NOT NULL COLLATE NOCASE,
        server TEXT NOT NULL,
        username TEXT,
        password TEXT,
        from_user TEXT,
        from_host TEXT,
        outbound_proxy TEXT,
        headers TEXT NOT NULL DEFAULT '[]',
        register INTEGER NOT NULL DEFAULT 0,
        register_contact TEXT,
        register_expiry INTEGER NOT NULL DEFAULT 3600,
        created REAL NOT NULL,
        UNIQUE (customer_id, name))""",
    # The dialplans' key/value store (sys.DBRead/DBWrite).
    """CREATE TABLE kv (
        customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        updated REAL NOT NULL,
        PRIMARY KEY (customer_id, key))""",
    # One row per dialplan execution.
    """CREATE TABLE traces (
        id TEXT PRIMARY KEY,
        customer_id INTEGER REFERENCES customers(id) ON DELETE CASCADE,
        call_id TEXT NOT NULL,
        dialplan TEXT NOT NULL,
        created REAL NOT NULL,
        text TEXT NOT NULL)""",
    """CREATE INDEX traces_customer ON traces (customer_id, created)""",
    # One row per call leg, linked by bridge_id when two legs were bridged.
    """CREATE TABLE cdrs (
        id TEXT PRIMARY KEY,
        customer_id INTEGER REFERENCES customers(id) ON DELETE CASCADE,
        bridge_id TEXT,
        call_id TEXT NOT NULL,
        direction TEXT NOT NULL,
        leg TEXT NOT NULL,
        from_uri TEXT NOT NULL,
        to_uri TEXT NOT NULL,
        created REAL NOT NULL,
        progress_at REAL,
        answered_at REAL,
        hungup_at REAL,
        status INTEGER,
        reason TEXT,
        hangup_reason TEXT)""",
    """CREATE INDEX cdrs_customer ON cdrs (customer_id, created)""",
    """CREATE INDEX cdrs_bridge ON cdrs (bridge_id)""",
]

_MIGRATION_3 = [
    # Web console sessions: only the SHA-256 of the bearer token is kept (the token has
    # 384 random bits, so a fast hash is enough; a stolen table opens no session).
    """CREATE TABLE web_sessions (
        token_hash TEXT PRIMARY KEY,
        customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
        created REAL NOT NULL,
        expires_at REAL NOT NULL,
        source TEXT)""",
    """CREATE INDEX web_sessions_customer ON web_sessions (customer_id)""",
    # The secret of a customer's /webcallback URL (shown to its owner, so kept as is).
    """CREATE TABLE webcallback_keys (
        customer_id INTEGER PRIMARY KEY REFERENCES customers(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        created REAL NOT NULL)""",
    # Per-dialplan execution limits (JSON object; they can only tighten the server's).
    """ALTER TABLE dialplans ADD COLUMN limits TEXT NOT NULL DEFAULT '{}'""",
]

#: (number, name, statements).  Append only: a shipped migration never changes.
_MIGRATION_4 = [
    # A change counter for providers, so calls read them from memory (see
    # Store.cached_read) and still see every change.
    """INSERT INTO versions (name, value) VALUES ('providers', 1)""",
    *_version_triggers("providers", "providers"),
]

MIGRATIONS: tuple[tuple[int, str, Sequence[str]], ...] = (
    (1, "customers, domains, accounts, bindings, dialplans", _MIGRATION_1),
    (2, "providers, key/value store, traces, call detail records", _MIGRATION_2),
    (3, "web sessions, webcallback keys, dialplan limits", _MIGRATION_3),
    (4, "a change counter for providers", _MIGRATION_4),
)
