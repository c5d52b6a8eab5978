"""Operator commands for calls: ``dialspell dialplan add|list``, ``dialspell account set``
and ``dialspell provider add|list`` (and the options of ``dialspell demo``, which
engine/demo.py runs).

Like the admin commands (engine/cli_admin.py) they open the data directory's database
directly, so they work whether or not a server runs on the same directory: a running
server reads dialplans, account flags and providers from the database for every call.

Exit codes: 0 success, 1 failure (with a one-line ``dialspell: error: ...`` on stderr
that says what to do), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from engine.cli import deferred, seconds, show_help
from engine.cli import fail as _fail
from engine.cli_admin import open_store, print_listing
from engine.cli_dialplan import compile_errors
from engine.config import DEFAULT_DATA_DIR
from engine.schema import LOCAL_DOMAIN

if TYPE_CHECKING:
    from engine.storage import Store

T = TypeVar("T")

_DATA_DIR_HELP = f"the server's data directory (default {DEFAULT_DATA_DIR})"

#: Names of dialplans and providers: what a dial string's host and the web API accept.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
#: host[:port] of a provider's server or outbound proxy (a name, IPv4, or [IPv6]).
HOSTPORT = re.compile(r"(?:sip:)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?\Z")
HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}\Z")
#: Headers the B2BUA builds itself (the list sys.SetCustomSIPHeader refuses, plus the
#: digest answers it computes from the provider's credentials).
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in ("Via", "From", "To", "Contact", "CSeq", "Call-ID", "Max-Forwards", "Content-Length",
              "Route", "Record-Route", "Authorization", "Proxy-Authorization")
)
MAX_HEADERS = 20
MAX_HEADER_VALUE = 512


def add_commands(subparsers: Any) -> None:
    """Register ``dialplan add|list``, ``account set``, ``provider add|list`` and
    ``demo``.

    ``dialplan`` and ``account`` are groups other modules create; this adds actions to
    them (creating a group only if it is missing)."""
    p = subparsers.add_parser(
        "demo", help="run a server and place one call through a dialplan, step by step",
        description=(
            "Start a server on free 127.0.0.1 ports with a temporary data directory, create "
            "a customer with accounts alice@local and bob@local and an Out dialplan for "
            "alice, register two simulated phones, call bob from alice through the "
            "dialplan, send bob a text message, hang up, and print the trace and the call "
            "detail records the server stored."
        ),
    )
    p.add_argument("--hold", type=seconds, default=1.0, metavar="SECONDS",
                   help="how long the call stays up before alice hangs up (default 1)")
    p.add_argument("--keep", action="store_true",
                   help="keep the data directory (its path is printed) instead of removing it")
    p.set_defaults(func=deferred("engine.demo", "cmd_demo"))

    dialplan_sub = _group(subparsers, "dialplan", "check, run and manage dialplans")
    p = dialplan_sub.add_parser(
        "add", help="store a customer's dialplan (replacing one of the same name)",
        description=(
            "Compile FILE in a sandbox worker and store it as the customer's dialplan NAME. "
            "A script that does not compile is refused (one FILE:LINE:COL: message line per "
            "error, exit 1).  An existing dialplan of that name is replaced; calls already "
            "running keep the old source, the next call uses the new one."
        ),
    )
    p.add_argument("customer", metavar="CUSTOMER", help="the owning customer's name")
    p.add_argument("name", metavar="NAME", help="the dialplan's name (letters, digits, . _ -)")
    p.add_argument("file", metavar="FILE", help="the dialplan source (restricted Python)")
    p.add_argument("--trace-email", metavar="ADDR",
                   help="mail every execution's trace to this address")
    _data_dir(p)
    p.set_defaults(func=cmd_dialplan_add)

    p = dialplan_sub.add_parser("list", help="list stored dialplans")
    p.add_argument("customer", metavar="CUSTOMER", nargs="?", help="only this customer's")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _data_dir(p)
    p.set_defaults(func=cmd_dialplan_list)

    account_sub = _group(subparsers, "account", "add and list SIP accounts")
    p = account_sub.add_parser(
        "set", help="choose an account's In and Out dialplans",
        description=(
            "Set the dialplan that runs for calls to USER@DOMAIN (--in-dialplan) and for "
            "calls it places (--out-dialplan).  An empty NAME clears it: calls to the "
            "account then ring its bindings, and its calls go where their Request-URI says."
        ),
    )
    p.add_argument("address", metavar="USER@DOMAIN", help=f"e.g. alice@{LOCAL_DOMAIN}")
    p.add_argument("--in-dialplan", metavar="NAME", help="dialplan for calls to it ('' clears)")
    p.add_argument("--out-dialplan", metavar="NAME", help="dialplan for its calls ('' clears)")
    _data_dir(p)
    p.set_defaults(func=cmd_account_set, parser=p)

    provider = subparsers.add_parser("provider", help="add and list customers' SIP providers")
    provider_sub = provider.add_subparsers(dest="provider_command", metavar="ACTION")
    provider.set_defaults(func=show_help(provider))
    p = provider_sub.add_parser(
        "add", help="add a SIP provider (trunk) for a customer",
        description=(
            "Add the provider NAME for CUSTOMER: a dial string leg 'NUMBER@NAME' then calls "
            "NUMBER at --server, answering its digest challenge with --username/--password, "
            "with From <sip:FROM-USER@FROM-HOST>, the extra --header lines, and through "
            "--outbound-proxy when given."
        ),
    )
    p.add_argument("customer", metavar="CUSTOMER", help="the owning customer's name")
    p.add_argument("name", metavar="NAME", help="the name dial strings use (e.g. 'primary')")
    p.add_argument("--server", required=True, metavar="HOST[:PORT]", help="the provider's SIP server")
    p.add_argument("--username", metavar="U", help="digest user name")
    p.add_argument("--password", metavar="P", help="digest password (needs --username)")
    p.add_argument("--from-user", metavar="U", help="user part of From (default: the caller's)")
    p.add_argument("--from-host", metavar="H", help="host part of From (default: the server's host)")
    p.add_argument("--outbound-proxy", metavar="HOST[:PORT]", help="send requests through this proxy")
    p.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="an extra header on every call (repeatable)")
    _data_dir(p)
    p.set_defaults(func=cmd_provider_add)

    p = provider_sub.add_parser("list", help="list providers (passwords are not shown)")
    p.add_argument("customer", metavar="CUSTOMER", nargs="?", help="only this customer's")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _data_dir(p)
    p.set_defaults(func=cmd_provider_list)


def _group(subparsers: Any, name: str, help_text: str) -> Any:
    """The subparsers of the existing command ``name``, creating the command if needed."""
    parser: argparse.ArgumentParser | None = subparsers.choices.get(name)
    if parser is None:
        parser = subparsers.add_parser(name, help=help_text)
        created = parser.add_subparsers(dest=f"{name}_command", metavar="ACTION")
        parser.set_defaults(func=show_help(parser))
        return created
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    created = parser.add_subparsers(dest=f"{name}_command", metavar="ACTION")
    return created


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help=_DATA_DIR_HELP)



def _write(store: Store, op: Callable[[sqlite3.Connection], T]) -> T:
    """Run one write transaction through the store's writer (from synchronous code)."""
    import trio

    async def once() -> T:
        outcome: list[T] = []
        failure: list[Exception] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run_writer)
            try:
                outcome.append(await store.write(op))
            except Exception as exc:  # re-raised below, outside the nursery's group
                failure.append(exc)
            nursery.cancel_scope.cancel()
        if failure:
            raise failure[0]
        return outcome[0]

    return trio.run(once)


def _customer_id(store: Store, name: str) -> int | None:
    customer = store.customer_by_name(name)
    return None if customer is None else customer.id


def _no_customer(name: str) -> int:
    return _fail(f"customer {name!r} does not exist: create it with "
                 f"'dialspell customer add {name} --password ...', or see 'dialspell customer list'")


def _listed_rows(args: argparse.Namespace, select: str, alias: str, order: str) -> list[tuple[Any, ...]] | int:
    """The rows of ``select`` (whose table is named ``alias``), only those of
    ``--customer`` when given, in ``order``; or the exit code of a failure."""
    with open_store(args.data_dir) as store:
        where = ""
        params: tuple[int, ...] = ()
        if args.customer is not None:
            customer_id = _customer_id(store, args.customer)
            if customer_id is None:
                return _no_customer(args.customer)
            where, params = f" WHERE {alias}.customer_id = ?", (customer_id,)
        return store.query_all(select + where + order, params)


# -- dialplans ------------------------------------------------------------------------------


def cmd_dialplan_add(args: argparse.Namespace) -> int:
    if not NAME.match(args.name):
        return _fail(f"{args.name!r} is not a dialplan name: use up to 64 letters, digits, "
                     "'.', '_' or '-', starting with a letter or digit")
    email = args.trace_email
    if email is not None and (not re.fullmatch(r"[^@\s]+@[^@\s]+", email) or len(email) > 254):
        return _fail(f"--trace-email {email!r} is not an e-mail address")
    try:
        source = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return _fail(f"cannot read {args.file}: {exc}")
    errors = compile_errors(source)
    if errors:
        for error in errors:
            print(f"{args.file}:{error.line}:{error.column}: {error.message}")
        return _fail(f"{args.file} does not compile: dialplan {args.name!r} not stored "
                     f"(check it with 'dialspell dialplan check {args.file}')")
    with open_store(args.data_dir) as store:
        customer_id = _customer_id(store, args.customer)
        if customer_id is None:
            return _no_customer(args.customer)
        existed = store.dialplan_source(customer_id, args.name) is not None
        store.put_dialplan(customer_id, args.name, source, trace_email=email, now=time.time())
    verb = "replaced" if existed else "added"
    print(f"dialplan {args.name!r} {verb} for customer {args.customer!r} ({len(source)} characters)")
    if not existed:
        print(f"use it with: dialspell account set USER@DOMAIN --in-dialplan {args.name} "
              f"(or --out-dialplan {args.name})")
    return 0


def cmd_dialplan_list(args: argparse.Namespace) -> int:
    rows = _listed_rows(
        args,
        "SELECT c.name, d.name, length(d.source), d.trace_email, d.updated, "
        "(SELECT group_concat(a.user || '@' || a.domain || ':' || "
        "  CASE WHEN a.in_dialplan = d.name AND a.out_dialplan = d.name THEN 'in+out' "
        "       WHEN a.in_dialplan = d.name THEN 'in' ELSE 'out' END, ' ') "
        " FROM sip_accounts a WHERE a.customer_id = d.customer_id "
        " AND (a.in_dialplan = d.name OR a.out_dialplan = d.name)) "
        "FROM dialplans d JOIN customers c ON c.id = d.customer_id",
        "d", " ORDER BY c.name, d.name",
    )
    if isinstance(rows, int):
        return rows
    items = [
        {"customer": r[0], "name": r[1], "size": r[2], "trace_email": r[3], "updated": r[4],
         "used_by": str(r[5]).split() if r[5] else []}
        for r in rows
    ]
    return print_listing(items, args.json, ["CUSTOMER", "NAME", "SIZE", "TRACE-EMAIL", "UPDATED", "USED BY"],
                         lambda i: [str(i["customer"]), str(i["name"]), str(i["size"]), str(i["trace_email"] or "-"),
                                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(i["updated"]))),
                                    ", ".join(i["used_by"]) or "-"])


# -- account set ----------------------------------------------------------------------------


def cmd_account_set(args: argparse.Namespace) -> int:
    if args.in_dialplan is None and args.out_dialplan is None:
        args.parser.error("give --in-dialplan NAME and/or --out-dialplan NAME ('' clears)")
    user, at, domain = str(args.address).rpartition("@")
    if not at or not user or not domain:
        return _fail(f"{args.address!r} is not USER@DOMAIN (e.g. alice@{LOCAL_DOMAIN})")
    domain = domain.lower()
    changes: dict[str, str | None] = {}
    for field, value in (("in_dialplan", args.in_dialplan), ("out_dialplan", args.out_dialplan)):
        if value is None:
            continue
        if value and not NAME.match(value):
            return _fail(f"{value!r} is not a dialplan name")
        changes[field] = value or None
    with open_store(args.data_dir) as store:
        account = next((a for a in store.accounts() if a.user == user and a.domain == domain), None)
        if account is None:
            return _fail(f"no account {user}@{domain}: see 'dialspell account list' "
                         "(default-domain accounts are USER@local)")
        store.set_account_flags(account.id, **changes)
        missing = [name for name in changes.values()
                   if name and store.dialplan_source(account.customer_id, name) is None]
    for field, value in changes.items():
        label = field.replace("_", " ")
        print(f"{account.aor}: {label} {value!r}" if value else f"{account.aor}: {label} cleared")
    for name in missing:
        print(f"dialspell: warning: the account's customer has no dialplan {name!r} yet: "
              f"calls will get 404 until you run 'dialspell dialplan add CUSTOMER {name} FILE'",
              file=sys.stderr)
    return 0


# -- providers ------------------------------------------------------------------------------


def _hostport_problem(text: str, option: str) -> str | None:
    found = HOSTPORT.match(text)
    if found is None:
        return f"{option} {text!r} is not HOST[:PORT]"
    if found.group(2) is not None and not 1 <= int(found.group(2)) <= 65535:
        return f"{option} {text!r}: the port must be 1-65535"
    return None


def _parse_header(text: str) -> tuple[str, str] | str:
    """(name, value), or a message saying what is wrong."""
    if "\r" in text or "\n" in text:
        return f"--header {text!r}: CR and LF are not allowed"
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not HEADER_NAME.match(name):
        return f"--header {text!r} is not 'Name: value' (the name: letters, digits and '-')"
    if name.lower() in RESERVED_HEADERS:
        return f"--header {name}: the server sets this header itself"
    if len(value) > MAX_HEADER_VALUE:
        return f"--header {name}: the value is longer than {MAX_HEADER_VALUE} characters"
    return (name, value)


def cmd_provider_add(args: argparse.Namespace) -> int:
    if not NAME.match(args.name) or args.name.lower() == LOCAL_DOMAIN:
        return _fail(f"{args.name!r} cannot name a provider: use up to 64 letters, digits, "
                     f"'.', '_' or '-' (and not '{LOCAL_DOMAIN}')")
    for option, value in (("--server", args.server), ("--outbound-proxy", args.outbound_proxy)):
        if value is not None and (problem := _hostport_problem(value, option)):
            return _fail(problem)
    if args.password is not None and not args.username:
        return _fail("--password needs --username")
    for option, value in (("--username", args.username), ("--password", args.password),
                          ("--from-user", args.from_user), ("--from-host", args.from_host)):
        if value is not None and (any(c in value for c in "\r\n\x00") or len(value) > 256):
            return _fail(f"{option}: at most 256 characters, no CR, LF or NUL")
    if len(args.header) > MAX_HEADERS:
        return _fail(f"at most {MAX_HEADERS} --header options")
    headers: list[list[str]] = []
    for text in args.header:
        parsed = _parse_header(text)
        if isinstance(parsed, str):
            return _fail(parsed)
        headers.append(list(parsed))
    with open_store(args.data_dir) as store:
        customer_id = _customer_id(store, args.customer)
        if customer_id is None:
            return _no_customer(args.customer)
        row = (customer_id, args.name, args.server, args.username, args.password,
               args.from_user, args.from_host, args.outbound_proxy, json.dumps(headers),
               time.time())
        try:
            provider_id = _write(store, lambda conn: conn.execute(
                "INSERT INTO providers (customer_id, name, server, username, password, "
                "from_user, from_host, outbound_proxy, headers, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row).lastrowid)
        except sqlite3.IntegrityError:
            return _fail(f"customer {args.customer!r} already has a provider named "
                         f"{args.name!r}: see 'dialspell provider list {args.customer}'")
    print(f"provider {args.name!r} added for customer {args.customer!r} (id {provider_id}): "
          f"dial it with sys.Dial(\"${{dst}}@{args.name}\")")
    return 0


def cmd_provider_list(args: argparse.Namespace) -> int:
    rows = _listed_rows(
        args,
        "SELECT p.id, c.name, p.name, p.server, p.username, p.password IS NOT NULL "
        "AND p.password != '', p.from_user, p.from_host, p.outbound_proxy, p.headers "
        "FROM providers p JOIN customers c ON c.id = p.customer_id",
        "p", " ORDER BY c.name, p.name",
    )
    if isinstance(rows, int):
        return rows
    items = []
    for r in rows:
        try:
            headers = [f"{k}: {v}" for k, v in json.loads(r[9] or "[]")]
        except (ValueError, TypeError):
            headers = []
        items.append({
            "id": r[0], "customer": r[1], "name": r[2], "server": r[3], "username": r[4],
            "has_password": bool(r[5]), "from_user": r[6], "from_host": r[7],
            "outbound_proxy": r[8], "headers": headers,
        })
    return print_listing(items, args.json, ["ID", "CUSTOMER", "NAME", "SERVER", "USERNAME", "FROM", "PROXY", "HEADERS"],
                         lambda i: [str(i["id"]), str(i["customer"]), str(i["name"]), str(i["server"]),
                                    str(i["username"] or "-") + (" (password set)" if i["has_password"] else ""),
                                    f"{i['from_user'] or '*'}@{i['from_host'] or '*'}"
                                    if i["from_user"] or i["from_host"] else "-",
                                    str(i["outbound_proxy"] or "-"), "; ".join(i["headers"]) or "-"])

