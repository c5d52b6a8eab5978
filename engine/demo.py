"""``dialspell demo``: a whole call through a dialplan, on this machine, in a few seconds.

It starts a server on free loopback ports with a temporary data directory, creates a
customer with two accounts and an Out dialplan for alice, registers two simulated
phones (engine/softphone.py), lets alice call bob through the dialplan and send him a
text message (a MESSAGE, which runs no dialplan) while the call is up, hangs up, and
prints what the server stored: the dialplan's trace and the call detail records.  Then it stops and removes the data directory (unless
``--keep``).  Exit 0 when the call went through, 1 otherwise.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from engine.config import ServerConfig
from engine.softphone import PhoneError, SoftPhone

CUSTOMER = "demo"
DIALPLAN = "alice-out"
DIALPLAN_SOURCE = """\
# alice's Out dialplan in the demo: log the call, then ring the called account's phones.
sys.Log("alice is calling %s" % req.URI.User)
sys.Dial("%s@local" % req.URI.User)
"""
ACCOUNTS = (("alice", "alice-secret"), ("bob", "bob-secret"))


def cmd_demo(args: argparse.Namespace) -> int:
    hold = max(0.0, min(float(args.hold), 60.0))

    def emit(line: str) -> None:
        print(line, flush=True)

    if args.keep:
        data_dir = Path(tempfile.mkdtemp(prefix="dialspell-demo-"))
        code = trio.run(run_demo, data_dir, hold, emit)
        emit(f"data directory kept: {data_dir}")
        return code
    with tempfile.TemporaryDirectory(prefix="dialspell-demo-") as tmp:
        return trio.run(run_demo, Path(tmp), hold, emit)


def _free_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1 (SIP listens on both with one number)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise OSError("no free port on 127.0.0.1")


async def run_demo(data_dir: Path, hold: float, emit: Callable[[str], None]) -> int:
    """The demo itself; every step is reported through ``emit``.  Returns the exit code."""
    from engine.server import Server  # the composition root: imported only when used

    steps = 8
    step = 0

    def heading(text: str) -> None:
        nonlocal step
        step += 1
        emit(f"\n[{step}/{steps}] {text}")

    def indent(line: str) -> None:
        emit(f"    {line}")

    config = ServerConfig(
        data_dir=data_dir, sip_host="127.0.0.1", sip_port=_free_port(),
        http_port=_free_port(), domain="127.0.0.1", sandbox_workers=1,
    )
    heading(f"Data directory {data_dir}: customer, accounts and dialplan")
    server = Server(config)
    store = server.store
    try:
        now = time.time()
        customer = store.add_customer(CUSTOMER, "demo-password", now=now)
        indent(f"customer {CUSTOMER!r}")
        for user, password in ACCOUNTS:
            store.add_account(user, "local", customer=CUSTOMER, password=password,
                              out_dialplan=DIALPLAN if user == "alice" else None, now=now)
            indent(f"account {user}@local (password {password!r})"
                   + (f", Out dialplan {DIALPLAN!r}" if user == "alice" else ""))
        store.put_dialplan(customer.id, DIALPLAN, DIALPLAN_SOURCE, now=now)
        indent(f"dialplan {DIALPLAN!r}:")
        for line in DIALPLAN_SOURCE.splitlines():
            indent(f"  | {line}")
        async with trio.open_nursery() as nursery:
            heading("Starting the server")
            await nursery.start(server.run)
            assert server.sip_address is not None
            host, port = server.sip_address
            indent(f"SIP on udp+tcp {host}:{port}, HTTP on {server.http_address}, "
                   f"domain {config.default_domain}")
            code = await _call(server, nursery, hold, heading, indent)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    emit("")
    emit("demo finished: the call went through the dialplan" if code == 0
         else "demo failed: see the messages above")
    return code


async def _call(server: Any, nursery: trio.Nursery, hold: float,
                heading: Callable[[str], None], indent: Callable[[str], None]) -> int:
    assert server.sip_address is not None
    phones = {
        user: SoftPhone(user=user, password=password, domain=server.config.default_domain,
                        server=server.sip_address, on_event=indent)
        for user, password in ACCOUNTS
    }
    alice, bob = phones["alice"], phones["bob"]
    try:
        heading("Registering two simulated phones (REGISTER with digest authentication)")
        with trio.fail_after(10):
            for phone in phones.values():
                await nursery.start(phone.run)
                await phone.register()
        heading("alice calls bob: the server runs alice's Out dialplan, which dials bob@local")
        with trio.fail_after(15):
            call = await alice.call("bob")
            answered = await bob.wait_answered()
        heading("While the call is up, alice sends bob a text (SIP MESSAGE, no dialplan)")
        with trio.fail_after(10):
            sent = await alice.message("bob", "Can you hear me?")
        if sent.status >= 300:
            raise PhoneError("MESSAGE", sent.status, sent.reason)
        heading(f"alice hangs up after {hold:g} s")
        await trio.sleep(hold)
        with trio.fail_after(10):
            response = await call.hang_up()
            indent(f"alice: BYE answered {response.status} {response.reason}")
            await answered.wait_ended()
    except PhoneError as exc:
        indent(f"error: {exc}")
        return 1
    except trio.TooSlowError:
        indent("error: no answer in time")
        return 1
    heading("The dialplan's trace (table traces)")
    store = server.store
    try:
        with trio.fail_after(10):
            traces, cdrs = await _records(store, call.dialog.call_id)
    except trio.TooSlowError:
        indent("error: the server did not store the trace and CDRs in time")
        return 1
    for dialplan, text in traces:
        indent(f"-- dialplan {dialplan!r}")
        for line in str(text).splitlines():
            indent(line)
    heading("The call detail records (table cdrs): one row per leg")
    header = ("LEG", "DIRECTION", "FROM", "TO", "STATUS", "DURATION", "HANGUP")
    rows = [
        (str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]),
         f"{r[6] - r[5]:.1f} s" if r[5] is not None and r[6] is not None else "-",
         str(r[7] or "-"))
        for r in cdrs
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    for row in (header, *rows):
        indent("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


async def _records(store: Any, caller_call_id: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The call's trace and its CDR rows, once the server has written them.

    The server writes them from its own tasks after the hang-up and announces nothing,
    so this re-reads after each commit of the store's writer (bounded by the caller)."""
    while True:
        await store.write(lambda conn: None)  # a barrier: every earlier write is committed
        traces = store.query_all("SELECT dialplan, text FROM traces ORDER BY created")
        cdrs = store.query_all(
            "SELECT leg, direction, from_uri, to_uri, status, answered_at, hungup_at, "
            "hangup_reason FROM cdrs WHERE bridge_id IN "
            "(SELECT bridge_id FROM cdrs WHERE call_id = ?) ORDER BY leg = 'callee', created",
            (caller_call_id,),
        )
        if traces and len(cdrs) >= 2:
            return traces, cdrs
        await trio.sleep(0.05)

