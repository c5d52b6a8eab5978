"""``dialspell serve``: run the server."""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from engine.config import ConfigError, load_config


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the SIP server (UDP+TCP) and its HTTP API",
        description="Run dialspell: SIP on UDP and TCP (one port), HTTP on another. "
        "Stops cleanly on Ctrl-C or SIGTERM.",
    )
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="TOML file of settings (docs/configuration.md); flags override it")
    p.add_argument("--data-dir", type=Path, default=None, help="data directory (default: ./dialspell-data)")
    p.add_argument("--sip-host", default=None, help="address to listen on for SIP (default: 0.0.0.0)")
    p.add_argument("--sip-port", type=int, default=None, help="SIP port, UDP and TCP (default: 5060)")
    p.add_argument("--http-host", default=None, help="address for HTTP (default: the SIP address)")
    p.add_argument("--http-port", type=int, default=None, help="HTTP port (default: 8080)")
    p.add_argument("--domain", default=None, help="the SIP domain served by default (default: the SIP address)")
    p.add_argument("--sip-processes", type=int, default=None, metavar="N",
                   help="SIP processes sharing the port, one core each (Linux; default: 1)")
    p.add_argument("--tls-cert", type=Path, default=None, help="certificate (PEM) to serve HTTPS")
    p.add_argument("--tls-key", type=Path, default=None, help="private key (PEM) for --tls-cert")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from engine.server import serve_forever

    if (args.tls_cert is None) != (args.tls_key is None):
        print("dialspell serve: --tls-cert and --tls-key go together", file=sys.stderr, flush=True)
        return 2
    try:
        config = load_config(
            args.config,
            {
                "data_dir": args.data_dir,
                "sip_host": args.sip_host,
                "sip_port": args.sip_port,
                "http_host": args.http_host,
                "http_port": args.http_port,
                "domain": args.domain,
                "sip_processes": args.sip_processes,
                "tls_cert": args.tls_cert,
                "tls_key": args.tls_key,
            },
        )
    except ConfigError as exc:
        print(f"dialspell serve: {exc}", file=sys.stderr, flush=True)
        return 2
    import trio

    from engine.storage import StorageError

    try:
        trio.run(serve_forever, config)
    except (StorageError, OSError, BaseExceptionGroup) as raised:
        # The server's tasks raise inside nurseries, so a failure to start arrives
        # wrapped in exception groups: say what it was, without the traceback.
        failure = _startup_failure(raised, (StorageError, OSError))
        if failure is None or (isinstance(failure, OSError) and failure.errno not in _CANNOT_LISTEN):
            raise
        if isinstance(failure, OSError):
            print(f"dialspell serve: cannot listen on SIP {config.sip_host}:{config.sip_port} and HTTP "
                  f"{config.http_host or config.sip_host}:{config.http_port}: {failure.strerror or failure}. "
                  f"{_CANNOT_LISTEN.get(failure.errno or 0, '')}", file=sys.stderr, flush=True)
        else:
            print(f"dialspell serve: {failure}", file=sys.stderr, flush=True)
        return 1
    return 0


#: What binding a socket fails with when the address is taken, not ours, or privileged,
#: and what to do about it.
_CANNOT_LISTEN = {
    errno.EADDRINUSE: "Is another server using a port? Choose others with --sip-port/--http-port.",
    errno.EADDRNOTAVAIL: "Is that address one of this machine's? Choose another with --sip-host/--http-host.",
    errno.EACCES: "Ports below 1024 need privileges: choose higher ones with --sip-port/--http-port, "
                  "or grant the capability CAP_NET_BIND_SERVICE.",
}


def _startup_failure(raised: BaseException, kinds: tuple[type[Exception], ...]) -> Exception | None:
    """The one error of ``kinds`` that ``raised`` is or wraps, when it wraps nothing else."""
    if isinstance(raised, BaseExceptionGroup):
        found = [_startup_failure(inner, kinds) for inner in raised.exceptions]
        return found[0] if len(found) == 1 else None
    return raised if isinstance(raised, kinds) else None
