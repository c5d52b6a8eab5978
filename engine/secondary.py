"""``python -m engine.secondary FD``: one of the extra SIP processes of a server with
``sip_processes`` > 1, started by the primary (engine/processes.py) with its end of a
socket pair as FD.  It serves SIP on the shared port until SIGTERM/SIGINT or until the
primary goes away, then stops as a server does: its calls are ended first."""

from __future__ import annotations

import logging
import signal
import socket
import sys

import trio

from engine.processes import PrimaryLink

log = logging.getLogger(__name__)


async def serve_secondary(fd: int) -> None:
    from engine.server import Server

    stream = trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))
    link = PrimaryLink(stream)
    config, plan, level = await link.start()
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s %(name)s [sip {plan.index}]: %(message)s")
    server = Server(config, plan=plan, link=link)
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def follow_primary() -> None:
                    await link.run()
                    log.info("the primary process has gone: stopping")
                    nursery.cancel_scope.cancel()

                nursery.start_soon(follow_primary)
                await nursery.start(server.run)
                link.ready()
                nursery.start_soon(link.send_statistics, server.endpoint.statistics)
                async for signum in signals:
                    log.info("received %s, shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        server.close()


def main() -> int:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("usage: python -m engine.secondary FD (started by dialspell serve, not by hand)", file=sys.stderr)
        return 2
    trio.run(serve_secondary, int(sys.argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
