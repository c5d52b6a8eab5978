"""``dialspell dialplan check`` and ``dialspell dialplan run``: dialplans without a server.

``check FILE`` compiles FILE in a sandbox worker: exit 0 if it compiles, else exit 1
and one ``FILE:LINE:COL: message`` line per error.

``run FILE`` places simulated calls through the real sandbox (no network; see
engine/simulator.py for what each sys call does).  It exits 0 whatever the script did,
1 if FILE cannot be read, 2 for usage errors.  ``--json`` prints one JSON object per
call per line: outcome, status, reason, log, error, limit, legs, answered_by.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.cli import positive_int

if TYPE_CHECKING:
    from engine.simulator import SimulatedCall


def add_local_commands(subparsers: Any) -> None:
    """Register ``check`` and ``run`` on the ``dialspell dialplan`` subparsers."""
    check = subparsers.add_parser("check", help="compile a dialplan and list its errors")
    check.add_argument("file", metavar="FILE", help="the dialplan source")
    check.set_defaults(func=check_command)

    run = subparsers.add_parser("run", help="run a dialplan against simulated calls")
    run.add_argument("file", metavar="FILE", help="the dialplan source")
    run.add_argument("--to", default="1234", metavar="NUMBER", help="the called user (req.URI.User)")
    run.add_argument("--from", dest="from_uri", default="sip:alice@example.com", metavar="URI",
                     help="the caller's From URI")
    run.add_argument("--direction", choices=("in", "out"), default="in",
                     help="sys.In or sys.Out (default in)")
    run.add_argument("--answer", metavar="REGEX", default=None,
                     help="Dial legs whose URI matches this answer; others fail with 480")
    run.add_argument("--repeat", type=positive_int, default=1, metavar="N",
                     help="place N consecutive calls through the same pool")
    run.add_argument("--json", action="store_true", help="one JSON object per call per line")
    run.add_argument("--username", default="owner", help="the owner's user name (sys.Username)")
    run.add_argument("--workers", type=positive_int, default=1, help="sandbox worker processes")
    run.set_defaults(func=run_command, parser=run)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"dialspell: cannot read {path}: {exc}", file=sys.stderr)
        return None


def compile_errors(source: str) -> list[Any]:
    """What compiling ``source`` in a sandbox worker found wrong (nothing: it compiles)."""
    import trio

    from sandbox import Limits, SandboxPool

    async def compile_it() -> list[Any]:
        async with SandboxPool(workers=1, limits=Limits()) as pool:
            return await pool.compile_errors(source)

    return trio.run(compile_it)


def check_command(args: argparse.Namespace) -> int:
    source = _read(args.file)
    if source is None:
        return 1
    errors = compile_errors(source)
    for error in errors:
        print(f"{args.file}:{error.line}:{error.column}: {error.message}")
    return 1 if errors else 0


def run_command(args: argparse.Namespace) -> int:
    import trio

    from engine.simulator import CallSpec, simulate
    from sandbox import Limits, SandboxPool

    answer = None
    if args.answer is not None:
        try:
            answer = re.compile(args.answer)
        except re.error as exc:
            args.parser.error(f"--answer: invalid regular expression: {exc}")
    source = _read(args.file)
    if source is None:
        return 1
    spec = CallSpec(
        to=args.to,
        from_uri=args.from_uri,
        direction=args.direction,
        answer=answer,
        username=args.username,
    )

    async def place_calls() -> None:
        db: dict[str, str] = {}
        async with SandboxPool(workers=args.workers, limits=Limits()) as pool:
            for number in range(1, args.repeat + 1):
                call = await simulate(pool, source, spec, db)
                _print_call(call, number, as_json=args.json)

    trio.run(place_calls)
    return 0


def _print_call(call: SimulatedCall, number: int, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(call.as_json(), ensure_ascii=False), flush=True)
        return
    print(f"call {number}: {call.outcome.value} -> {call.status} {call.reason}")
    if call.answered_by:
        print(f"  answered by {call.answered_by}")
    for leg in call.legs:
        print(f"  leg {leg}")
    for line in call.log:
        print(f"  DialPlan=> {line}")
    if call.limit:
        print(f"  limit: {call.limit}")
    if call.error is not None and call.outcome.value != "runtime_error":
        print(f"  error: {call.error.get('type')}: {call.error.get('message')}")
