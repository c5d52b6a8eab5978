"""The ``dialspell`` client commands: a terminal for the HTTP API of a running server.

``login`` stores a session token in ``$XDG_CONFIG_HOME/dialspell/session.json`` (or
``~/.config/dialspell/``), readable by its owner only; the other commands use it.
``trace list|show`` and ``cdr list`` also work on a data directory without a server:
``--data-dir DIR`` given -> read DIR; else a stored login -> ask the server; else read
the default data directory ``./dialspell-data``.

Exit codes: 0 success, 1 failure (the message on stderr says what to do), 2 usage.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.cli import positive_int, show_help
from engine.config import DEFAULT_DATA_DIR

if TYPE_CHECKING:
    import httpx

    from engine.storage import Store

DEFAULT_SERVER = "http://127.0.0.1:8080"
SESSION_FILE = "session.json"
_COLOURS = {"dialplan": "36", "registrar": "32", "call": "35", "auth": "31", "limit": "33",
            "sip": "90", "dropped": "1;31"}
_EVENT_TYPES = ("dialplan", "registrar", "auth", "call", "limit", "sip")


class ClientError(Exception):
    """A failure to report on stderr (exit 1)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """What ``dialspell login`` stored."""

    server: str
    token: str
    username: str
    cacert: str | None = None


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    return (Path(base) if base else Path.home() / ".config") / "dialspell"


def load_session() -> Session | None:
    path = config_dir() / SESSION_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Session(server=data["server"], token=data["token"], username=data["username"],
                       cacert=data.get("cacert"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ClientError(f"cannot read {path}: {exc}; run 'dialspell login' again") from exc


def save_session(session: Session) -> Path:
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / SESSION_FILE
    data = json.dumps({"server": session.server, "token": session.token, "username": session.username,
                       "cacert": session.cacert})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)  # also when the file already existed
        out.write(data)
    return path


# -- the HTTP side --------------------------------------------------------------------------
def _client(server: str, token: str | None, cacert: str | None, timeout: float | None = 30.0) -> httpx.Client:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    verify: Any = cacert if cacert else True
    if cacert:
        import ssl

        verify = ssl.create_default_context(cafile=cacert)
    return httpx.Client(base_url=server, headers=headers, verify=verify, timeout=timeout)


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return str(error["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def _check(response: httpx.Response) -> Any:
    if response.status_code == 401:
        raise ClientError(f"{_error_text(response)}: run 'dialspell login'")
    if response.status_code >= 400:
        raise ClientError(_error_text(response))
    return response.json() if response.content else None


def _request(session: Session, method: str, path: str, **kwargs: Any) -> httpx.Response:
    import httpx

    try:
        with _client(session.server, session.token, session.cacert) as client:
            return client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach {session.server}: {exc}; is the server running? "
                          "('dialspell login --server URL' changes the server)") from exc


def _need_session() -> Session:
    session = load_session()
    if session is None:
        raise ClientError("not logged in: run 'dialspell login --server URL --username NAME'")
    return session


# -- commands -------------------------------------------------------------------------------
def cmd_login(args: argparse.Namespace) -> int:
    import httpx

    try:
        username = args.username or input("Username: ").strip()
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass(f"Password for {username} at {args.server}: ")
    except EOFError:
        raise ClientError("no user name or password to read (standard input is closed): give "
                          "--username, and the password on standard input with --password-stdin") from None
    server = args.server.rstrip("/")
    try:
        with _client(server, None, args.cacert) as client:
            response = client.post("/api/v1/login", json={"username": username, "password": password})
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach {server}: {exc}; check --server (and --cacert for HTTPS)") from exc
    if response.status_code in (401, 422):
        raise ClientError(f"{_error_text(response)}; check the user name and password")
    body = _check(response)
    cacert = str(Path(args.cacert).resolve()) if args.cacert else None
    path = save_session(Session(server=server, token=body["token"], username=username, cacert=cacert))
    until = datetime.datetime.fromtimestamp(body["expires_at"]).strftime("%H:%M")
    print(f"Logged in to {server} as {username} until {until} (session in {path}).")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    session = load_session()
    if session is None:
        print("Not logged in.", file=sys.stderr)
        return 0
    try:
        _request(session, "POST", "/api/v1/logout")
    finally:
        (config_dir() / SESSION_FILE).unlink(missing_ok=True)
    print(f"Logged out of {session.server}.")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    try:
        source = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read {args.file}: {exc}") from exc
    session = _need_session()
    response = _request(session, "PUT", f"/api/v1/dialplans/{args.name}", json={"source": source})
    if response.status_code == 422 and response.json()["error"]["code"] == "compile_error":
        for problem in response.json()["error"]["details"]:
            print(f"{args.file}:{problem['line']}:{problem['column']}: {problem['message']}", file=sys.stderr)
        print(f"dialspell: {args.name} was not changed: fix the errors above and push again", file=sys.stderr)
        return 1
    body = _check(response)
    if args.json:
        print(json.dumps(body))
    else:
        print(f"Dialplan {args.name} {'created' if response.status_code == 201 else 'updated'}.")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    session = _need_session()
    body = _check(_request(session, "GET", f"/api/v1/dialplans/{args.name}"))
    if args.json:
        print(json.dumps(body))
    elif args.output:
        Path(args.output).write_text(body["source"], encoding="utf-8")
        print(f"Wrote {args.name} to {args.output}.", file=sys.stderr)
    else:
        sys.stdout.write(body["source"])
    return 0


def _where(args: argparse.Namespace) -> tuple[str, Session | Path]:
    """The rule of the module docstring: local data dir, remote session, default dir."""
    if args.data_dir is not None:
        return "local", Path(args.data_dir)
    session = load_session()
    if session is not None:
        return "remote", session
    return "local", DEFAULT_DATA_DIR


def _open_local(path: Path) -> Store:
    from engine.storage import DB_FILENAME, StorageError, Store

    if not (path / DB_FILENAME).is_file():
        raise ClientError(f"no dialspell data in {path}: give --data-dir DIR, or run "
                          "'dialspell login' to ask a server")
    try:
        return Store.open(path)
    except StorageError as exc:
        raise ClientError(str(exc)) from exc


def _local_rows(path: Path, sql: str, params: tuple[object, ...], columns: tuple[str, ...]) -> list[dict[str, Any]]:
    store = _open_local(path)
    try:
        return [dict(zip(columns, row, strict=True)) for row in store.query_all(sql, params)]
    finally:
        store.close()


_TRACE_COLUMNS = ("id", "customer_id", "call_id", "dialplan", "created")
_CDR_COLUMNS = ("id", "customer_id", "bridge_id", "call_id", "direction", "leg", "from_uri", "to_uri",
                "created", "progress_at", "answered_at", "hungup_at", "status", "reason", "hangup_reason")


def _when(value: float | None) -> str:
    return "-" if value is None else datetime.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")


def cmd_trace_list(args: argparse.Namespace) -> int:
    mode, where = _where(args)
    if isinstance(where, Session):
        items = _check(_request(where, "GET", "/api/v1/traces", params={"limit": args.limit}))["items"]
    else:
        items = _local_rows(where, f"SELECT {', '.join(_TRACE_COLUMNS)} FROM traces ORDER BY created DESC "
                            "LIMIT ?", (args.limit,), _TRACE_COLUMNS)
    if args.json:
        print(json.dumps(items))
        return 0
    if not items:
        print("No traces.", file=sys.stderr)
    for t in items:
        print(f"{t['id']}  {_when(t['created'])}  {t['dialplan']:<16} {t['call_id']}")
    return 0


def cmd_trace_show(args: argparse.Namespace) -> int:
    mode, where = _where(args)
    if isinstance(where, Session):
        trace = _check(_request(where, "GET", f"/api/v1/traces/{args.id}"))
    else:
        rows = _local_rows(where, f"SELECT {', '.join(_TRACE_COLUMNS)}, text FROM traces WHERE id = ?",
                           (args.id,), (*_TRACE_COLUMNS, "text"))
        if not rows:
            raise ClientError(f"no trace {args.id}: 'dialspell trace list' shows the ids")
        trace = rows[0]
    if args.json:
        print(json.dumps(trace))
        return 0
    print(f"trace {trace['id']}  {_when(trace['created'])}  dialplan {trace['dialplan']}  call {trace['call_id']}")
    print(trace["text"])
    return 0


def cmd_cdr_list(args: argparse.Namespace) -> int:
    mode, where = _where(args)
    if isinstance(where, Session):
        items = _check(_request(where, "GET", "/api/v1/cdrs", params={"limit": args.limit}))["items"]
    else:
        items = _local_rows(where, f"SELECT {', '.join(_CDR_COLUMNS)} FROM cdrs ORDER BY created DESC LIMIT ?",
                            (args.limit,), _CDR_COLUMNS)
    if args.json:
        print(json.dumps(items))
        return 0
    if not items:
        print("No call records.", file=sys.stderr)
    for c in items:
        status = "-" if c["status"] is None else str(c["status"])
        print(f"{_when(c['created'])}  {c['direction']:<3} {c['leg']:<7} {c['from_uri']} -> {c['to_uri']}  "
              f"{status} {c['reason'] or ''}".rstrip())
    return 0


def use_colour(stream: Any, environ: dict[str, str] | os._Environ[str]) -> bool:
    """Colours only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return bool(getattr(stream, "isatty", lambda: False)()) and not environ.get("NO_COLOR")


def format_event(event: dict[str, Any], *, colour: bool) -> str:
    """One console line: time, type, then what happened."""
    kind = str(event.get("type", "?"))
    stamp = datetime.datetime.fromtimestamp(float(event.get("time") or 0)).strftime("%H:%M:%S")
    data = {k: v for k, v in event.items() if k not in ("type", "time", "owner")}
    if kind == "dialplan" and "line" in data:
        text = f"{data.pop('dialplan', '')}: {data.pop('line')}".lstrip(": ")
    elif kind == "dropped":
        text = f"{data.get('count')} events dropped (the console fell behind)"
        data = {}
    else:
        text = ""
    rest = " ".join(f"{k}={v}" for k, v in data.items() if k not in ("line",) and v is not None)
    text = f"{text} {rest}".strip() if kind != "dropped" else text
    label = f"{kind:<9}"
    if colour:
        label = f"\x1b[{_COLOURS.get(kind, '0')}m{label}\x1b[0m"
    return f"{stamp} {label} {text}"


def _sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: "):
            try:
                yield json.loads(line[6:])
            except ValueError:
                continue


def cmd_console(args: argparse.Namespace) -> int:
    import httpx

    session = _need_session()
    params: dict[str, str] = {}
    if args.types:
        params["types"] = args.types
    if args.sip:
        params["sip"] = "1"
    colour = use_colour(sys.stdout, os.environ)
    try:
        with _client(session.server, session.token, session.cacert, timeout=None) as client, \
                client.stream("GET", "/api/v1/events", params=params) as response:
            if response.status_code >= 400:
                response.read()
                _check(response)
            print(f"Following {session.username}'s events on {session.server} (Ctrl-C stops).",
                  file=sys.stderr, flush=True)
            for event in _sse(response.iter_lines()):
                if args.json:
                    print(json.dumps(event), flush=True)
                else:
                    print(format_event(event, colour=colour), flush=True)
    except httpx.HTTPError as exc:
        raise ClientError(f"the event stream from {session.server} ended: {exc}") from exc
    except KeyboardInterrupt:
        return 0
    return 0


# -- registration ---------------------------------------------------------------------------
def _run(func: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except ClientError as exc:
            print(f"dialspell: {exc}", file=sys.stderr)
            return 1
    return wrapped


def _local_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None,
                        help="read this data directory instead of asking the server you are logged in to "
                        f"(without a login: {DEFAULT_DATA_DIR})")
    parser.add_argument("--json", action="store_true", help="print JSON")


def add_commands(subparsers: Any) -> None:
    """Register ``login``, ``logout``, ``trace``, ``cdr`` and ``console``."""
    p = subparsers.add_parser("login", help="log in to a server's API and keep the session token",
                              description="Log in and store the session token (file mode 0600) in "
                              f"{config_dir() / SESSION_FILE}.")
    p.add_argument("--server", default=DEFAULT_SERVER, help="the server's HTTP URL (default %(default)s)")
    p.add_argument("--username", help="your customer name (asked if not given)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--cacert", help="CA certificate (PEM) to trust for an HTTPS server")
    p.set_defaults(func=_run(cmd_login))

    p = subparsers.add_parser("logout", help="end the stored session")
    p.set_defaults(func=_run(cmd_logout))

    trace = subparsers.add_parser("trace", help="list and show dialplan traces")
    trace_sub = trace.add_subparsers(dest="trace_command", metavar="ACTION")
    trace.set_defaults(func=show_help(trace))
    p = trace_sub.add_parser("list", help="the newest traces")
    p.add_argument("--limit", type=positive_int, default=50, help="how many (default %(default)s)")
    _local_options(p)
    p.set_defaults(func=_run(cmd_trace_list))
    p = trace_sub.add_parser("show", help="one trace with its text")
    p.add_argument("id", metavar="ID", help="the trace id (from 'trace list')")
    _local_options(p)
    p.set_defaults(func=_run(cmd_trace_show))

    cdr = subparsers.add_parser("cdr", help="list call detail records")
    cdr_sub = cdr.add_subparsers(dest="cdr_command", metavar="ACTION")
    cdr.set_defaults(func=show_help(cdr))
    p = cdr_sub.add_parser("list", help="the newest call detail records")
    p.add_argument("--limit", type=positive_int, default=50, help="how many (default %(default)s)")
    _local_options(p)
    p.set_defaults(func=_run(cmd_cdr_list))

    p = subparsers.add_parser("console", help="follow your live events (dialplan logs, registrations, calls)")
    p.add_argument("--types", help=f"comma-separated event types: {','.join(_EVENT_TYPES)} (default all but sip)")
    p.add_argument("--sip", action="store_true", help="include full SIP messages")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.set_defaults(func=_run(cmd_console))


def add_dialplan_commands(subparsers: Any) -> None:
    """Register ``push`` and ``pull`` on the ``dialspell dialplan`` subparsers."""
    p = subparsers.add_parser("push", help="upload a dialplan to the server (compiled there first)")
    p.add_argument("name", metavar="NAME", help="the dialplan's name")
    p.add_argument("file", metavar="FILE", help="the source file")
    p.add_argument("--json", action="store_true", help="print the stored dialplan as JSON")
    p.set_defaults(func=_run(cmd_push))
    p = subparsers.add_parser("pull", help="download a dialplan's source")
    p.add_argument("name", metavar="NAME", help="the dialplan's name")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.add_argument("--json", action="store_true", help="print the dialplan as JSON")
    p.set_defaults(func=_run(cmd_pull))
