"""``dialspell serve``: run the server."""

from __future__ import annotations

import argparse
from pathlib import Path

import trio

from engine.config import DEFAULT_DATA_DIR, ServerConfig


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the SIP server (UDP+TCP) and its HTTP API",
        description="Run dialspell: SIP on UDP and TCP (one port), HTTP on another. "
        "Stops cleanly on Ctrl-C or SIGTERM.",
    )
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="data directory (default: %(default)s)")
    p.add_argument("--sip-host", default="0.0.0.0", help="address to listen on for SIP (default: %(default)s)")
    p.add_argument("--sip-port", type=int, default=5060, help="SIP port, UDP and TCP (default: %(default)s)")
    p.add_argument("--http-host", default=None, help="address for HTTP (default: the SIP address)")
    p.add_argument("--http-port", type=int, default=8080, help="HTTP port (default: %(default)s)")
    p.add_argument("--domain", default=None, help="the SIP domain served by default (default: the SIP address)")
    p.add_argument("--tls-cert", type=Path, default=None, help="certificate (PEM) to serve HTTPS")
    p.add_argument("--tls-key", type=Path, default=None, help="private key (PEM) for --tls-cert")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from engine.server import serve_forever

    if (args.tls_cert is None) != (args.tls_key is None):
        print("dialspell serve: --tls-cert and --tls-key go together", flush=True)
        return 2
    config = ServerConfig(
        data_dir=args.data_dir,
        sip_host=args.sip_host,
        sip_port=args.sip_port,
        http_host=args.http_host,
        http_port=args.http_port,
        domain=args.domain,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    try:
        trio.run(serve_forever, config)
    except OSError as exc:
        print(f"dialspell serve: cannot start: {exc}. Is another server using the port? "
              "Choose others with --sip-port/--http-port.", flush=True)
        return 1
    return 0
