"""Admin commands: ``dialspell customer|account|domain add|list``.

They open the data directory's database directly, so they work whether or not a server
runs on the same directory: a running server notices new accounts and domains within a
fraction of a second (see :meth:`engine.storage.Store.directory`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from engine.cli import CommandFailed, fail, show_help
from engine.config import DEFAULT_DATA_DIR
from engine.schema import LOCAL_DOMAIN

if TYPE_CHECKING:
    from engine.storage import Store

_DATA_DIR_HELP = f"the server's data directory (default {DEFAULT_DATA_DIR})"


def add_commands(subparsers: Any) -> None:
    """Register ``customer``, ``account`` and ``domain`` on the root subparsers."""
    customer = subparsers.add_parser("customer", help="add and list customers")
    customer_sub = customer.add_subparsers(dest="customer_command", metavar="ACTION")
    customer.set_defaults(func=show_help(customer))

    p = customer_sub.add_parser("add", help="create a customer (owner of accounts and dialplans)")
    p.add_argument("name", help="the customer's unique name (also their console login)")
    p.add_argument("--password", required=True, help="the console password (stored as a scrypt hash)")
    p.add_argument("--email", help="contact address (unique if given)")
    p.add_argument("--admin", action="store_true", help="may see every customer's events")
    _data_dir(p)
    p.set_defaults(func=cmd_customer_add)

    p = customer_sub.add_parser("list", help="list customers")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _data_dir(p)
    p.set_defaults(func=cmd_customer_list)

    account = subparsers.add_parser("account", help="add and list SIP accounts")
    account_sub = account.add_subparsers(dest="account_command", metavar="ACTION")
    account.set_defaults(func=show_help(account))

    p = account_sub.add_parser(
        "add", help="create a SIP account",
        description=(
            "Create the SIP account USER@DOMAIN.  DOMAIN must already be served: "
            f"'{LOCAL_DOMAIN}' (always served) is the server's default domain, i.e. its "
            "--domain and its own IP addresses; other domains are added first with "
            "'dialspell domain add DOMAIN'.  Domains are never added implicitly, so a "
            "typing mistake cannot create a domain.  The password is stored only as "
            "digest HA1 values (MD5 and SHA-256) for the realm DOMAIN."
        ),
    )
    p.add_argument("address", metavar="USER@DOMAIN", help=f"e.g. alice@{LOCAL_DOMAIN} or alice@example.com")
    p.add_argument("--password", required=True, help="the SIP digest password")
    p.add_argument("--customer", required=True, help="the owning customer's name")
    p.add_argument("--incoming-only", action="store_true", help="may receive calls but not place them")
    p.add_argument("--keepalive", action="store_true", help="send NAT keep-alives to its contacts")
    p.add_argument("--disabled", action="store_true", help="create it disabled (REGISTER gets 403)")
    p.add_argument("--in-dialplan", metavar="N", help="dialplan for calls to this account")
    p.add_argument("--out-dialplan", metavar="N", help="dialplan for calls from this account")
    _data_dir(p)
    p.set_defaults(func=cmd_account_add)

    p = account_sub.add_parser("list", help="list SIP accounts")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _data_dir(p)
    p.set_defaults(func=cmd_account_list)

    domain = subparsers.add_parser("domain", help="add and list served SIP domains")
    domain_sub = domain.add_subparsers(dest="domain_command", metavar="ACTION")
    domain.set_defaults(func=show_help(domain))

    p = domain_sub.add_parser(
        "add", help="serve a SIP domain",
        description=(
            "Serve DOMAIN (REGISTERs and calls for USER@DOMAIN are ours).  Aliases are other "
            "host names or addresses meaning the same domain.  Adding an existing domain "
            f"adds the aliases to it; '{LOCAL_DOMAIN}' may be given aliases too."
        ),
    )
    p.add_argument("domain", help="e.g. example.com")
    p.add_argument("--alias", action="append", default=[], metavar="A",
                   help="another name for it (repeatable)")
    _data_dir(p)
    p.set_defaults(func=cmd_domain_add)

    p = domain_sub.add_parser("list", help="list served domains")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _data_dir(p)
    p.set_defaults(func=cmd_domain_list)


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help=_DATA_DIR_HELP)


@contextmanager
def open_store(data_dir: str, *, if_taken: str = "") -> Iterator[Store]:
    """The data directory's store for the block, closed after it.  A storage error
    ends the command with its message (``if_taken`` added when a name is taken)."""
    from engine.storage import ConflictError, StorageError, Store

    try:
        store = Store.open(data_dir)
        try:
            yield store
        finally:
            store.close()
    except ConflictError as exc:
        raise CommandFailed(f"{exc}: {if_taken}" if if_taken else str(exc)) from None
    except StorageError as exc:
        raise CommandFailed(str(exc)) from None


# -- customers ----------------------------------------------------------------------------


def cmd_customer_add(args: argparse.Namespace) -> int:
    with open_store(args.data_dir, if_taken="choose another, or see 'dialspell customer list'") as store:
        customer = store.add_customer(args.name, args.password, email=args.email,
                                      admin=args.admin, now=time.time())
    print(f"customer {customer.name!r} added (id {customer.id}{', admin' if customer.admin else ''})")
    return 0


def cmd_customer_list(args: argparse.Namespace) -> int:
    with open_store(args.data_dir) as store:
        customers = store.customers()
    rows = [{"id": c.id, "name": c.name, "email": c.email, "admin": c.admin} for c in customers]
    return print_listing(rows, args.json, ["ID", "NAME", "EMAIL", "ADMIN"], lambda r: [
        str(r["id"]), str(r["name"]), str(r["email"] or "-"), "yes" if r["admin"] else "no"])


# -- accounts -----------------------------------------------------------------------------


def cmd_account_add(args: argparse.Namespace) -> int:
    user, at, domain = str(args.address).rpartition("@")
    if not at or not user or not domain:
        return fail(f"{args.address!r} is not USER@DOMAIN (e.g. alice@{LOCAL_DOMAIN})")
    domain = domain.lower()
    with open_store(args.data_dir, if_taken="see 'dialspell account list'") as store:
        if store.customer_by_name(args.customer) is None:
            return fail(f"customer {args.customer!r} does not exist: create it with "
                        f"'dialspell customer add {args.customer} --password ...'")
        if domain not in {d.domain for d in store.domains()}:
            return fail(f"domain {domain!r} is not served: add it with 'dialspell domain "
                        f"add {domain}', or use {user}@{LOCAL_DOMAIN} for the server's "
                        "default domain")
        account = store.add_account(
            user, domain, customer=args.customer, password=args.password,
            incoming_only=args.incoming_only, keepalive=args.keepalive,
            disabled=args.disabled, in_dialplan=args.in_dialplan,
            out_dialplan=args.out_dialplan, now=time.time(),
        )
    print(f"account {account.aor} added for customer {args.customer!r} (id {account.id})")
    return 0


def cmd_account_list(args: argparse.Namespace) -> int:
    with open_store(args.data_dir) as store:
        accounts = store.accounts()
        names = {c.id: c.name for c in store.customers()}
    rows = [
        {"id": a.id, "address": a.aor, "customer": names.get(a.customer_id),
         "incoming_only": a.incoming_only, "keepalive": a.keepalive, "disabled": a.disabled,
         "in_dialplan": a.in_dialplan, "out_dialplan": a.out_dialplan}
        for a in accounts
    ]
    flags = ("incoming_only", "keepalive", "disabled")
    return print_listing(rows, args.json, ["ID", "ADDRESS", "CUSTOMER", "FLAGS", "IN", "OUT"], lambda r: [
        str(r["id"]), str(r["address"]), str(r["customer"]),
        ",".join(f.replace("_", "-") for f in flags if r[f]) or "-",
        str(r["in_dialplan"] or "-"), str(r["out_dialplan"] or "-")])


# -- domains ------------------------------------------------------------------------------


def cmd_domain_add(args: argparse.Namespace) -> int:
    with open_store(args.data_dir, if_taken="see 'dialspell domain list'") as store:
        domain = store.add_domain(args.domain, args.alias, now=time.time())
    aliases = f" (aliases: {', '.join(domain.aliases)})" if domain.aliases else ""
    print(f"domain {domain.domain!r} served{aliases}")
    return 0


def cmd_domain_list(args: argparse.Namespace) -> int:
    with open_store(args.data_dir) as store:
        domains = store.domains()
    rows = [{"domain": d.domain, "aliases": list(d.aliases)} for d in domains]
    return print_listing(rows, args.json, ["DOMAIN", "ALIASES"], lambda r: [
        str(r["domain"]) + (" (the server's default domain)" if r["domain"] == LOCAL_DOMAIN else ""),
        ", ".join(r["aliases"]) or "-"])


def print_listing(items: list[dict[str, Any]], as_json: bool, header: list[str],
                  cells: Callable[[dict[str, Any]], list[str]]) -> int:
    """What every list command prints: ``items`` as JSON, or a table of ``cells(item)``."""
    if as_json:
        print(json.dumps(items, indent=2))
    else:
        print_table(header, [cells(item) for item in items])
    return 0


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Print rows as columns padded to their widest cell (the list commands' format)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    for line in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
