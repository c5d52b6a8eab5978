"""The trio shell around the sans-IO core: UDP and TCP on one port, driving transactions.

:class:`SIPEndpoint` owns the sockets and a :class:`~sip.transaction.TransactionLayer`.
Bytes from the network go through :func:`~sip.parse.parse_message_untrusted` (the only
door for attacker bytes); a request that cannot be parsed is answered ``400 <defect>``
when it can be answered at all, and dropped otherwise.  Everything the layer asks to send
is sent; every event it raises is handed, synchronously, to the transaction user (the
application), which starts its own tasks for slow work.

Robustness rules (a burst of garbage must never stop the server from serving others):

* one bad datagram or connection costs at most one parse attempt and one small answer;
* TCP connections have an idle timeout, a per-message size cap (the framer's) and a cap on
  how many may be open at once (overall and per source address);
* sends never block the receive path: UDP sends are non-blocking ``sendto`` calls, TCP
  sends go through a small per-connection queue drained by that connection's task.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import logging
import marshal
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from sip.errors import SIPParseError
from sip.frozen import fast_init
from sip.message import (
    Request,
    Response,
    acks_stateless_answer,
    make_response,
    owner_mark,
    stateless_tag,
)
from sip.parse import StreamFramer, parse_message_untrusted
from sip.transaction import Action, Address, Send, TransactionLayer, TryingDue
from sip.validate import parse_error_response

log = logging.getLogger(__name__)

MAX_DATAGRAM = 65535
_UDP_BATCH = 32  # datagrams handled between yields to the scheduler

# Kernel receive timestamps (socket(7) SO_TIMESTAMPNS: a struct timespec of
# CLOCK_REALTIME in a control message).  Python's socket module does not name the
# option; 35 is its value in Linux's generic socket ABI (x86, arm, riscv...).  Where it
# is refused or differs, no control message arrives and the queue delay reads 0.
_SO_TIMESTAMPNS = 35
# Linux, ip(7)/ipv6(7): with IP_RECVERR set, an ICMP error for a datagram we sent is kept
# on the socket's error queue (read with MSG_ERRQUEUE) with the destination and as much
# of the datagram as the ICMP message quoted; without it, an unconnected UDP socket
# never hears of them.
_IP_RECVERR = 11
_IPV6_RECVERR = 25
_MSG_ERRQUEUE = 0x2000
_EXTENDED_ERR = struct.Struct("@IBBBB")  # sock_extended_err: ee_errno, origin, type, code, pad
_ORIGIN_ICMP, _ORIGIN_ICMP6 = 2, 3
# The errors RFC 3261 18.4 says to report to the transport user: unreachable destination
# (host, network, port, protocol) and parameter problem; not "fragmentation needed"
# (path MTU), source quench or TTL exceeded.
_DELIVERY_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                              errno.EPROTO, errno.ENOPROTOOPT, errno.EHOSTDOWN})
_TIMESPEC = struct.Struct("@qq")


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportLimits:
    """Limits of the transport shell (every one configurable from the composition root)."""

    tcp_max_connections: int = 4096
    tcp_max_per_address: int = 64
    tcp_idle_timeout: float = 600.0
    tcp_connect_timeout: float = 5.0
    tcp_send_queue: int = 256


@fast_init
@dataclass(frozen=True, slots=True)
class Incoming:
    """How a message arrived: the peer, our local socket and the transport."""

    source: Address
    local: Address
    transport: str


EventHandler = Callable[[Action], None]

#: Requests a process of a shared port handles itself when they start something new;
#: every other new request goes to process 0 (registrations, messages, options...).
_STARTED_ANYWHERE = frozenset({b"INVITE", b"ACK", b"CANCEL"})


@dataclass(frozen=True, slots=True)
class SharedPort:
    """This endpoint is one of several processes serving one UDP port (Linux
    ``SO_REUSEPORT``: the kernel gives each datagram to one of them by a hash of its
    source address and port).

    Which process a message belongs to: for a response or an in-dialog request, the one
    whose mark its branch or To tag carries (:func:`sip.message.owner_mark`; each process
    must call :func:`sip.message.mark_identifiers` with its index); for a new INVITE
    (and its ACK or CANCEL), whichever process the kernel chose, unless another has
    claimed new calls to its Request-URI's user; for any other new request, process
    0, which alone also listens on TCP and keeps the TCP connections (the others send
    over TCP through it).

    ``peers[i]`` is the loopback UDP address of process ``i``'s hand-over socket, and
    ``fd`` this process's (bound by whoever started the group, so that the addresses
    are known to all and stay the same when a process is started again).  A message
    that reached the wrong process is handed on there in an envelope that keeps its
    source and starts with ``token``; an envelope without it is ignored (any local user
    can send to a loopback port).  UDP rather than ``AF_UNIX`` datagrams: Linux queues
    at most ``net.unix.max_dgram_qlen`` (10 by default) of those per socket, fewer than
    a busy moment hands on.  ``claims`` is the one part that changes."""

    index: int
    peers: tuple[Address, ...]
    token: bytes
    fd: int
    #: Request-URI user -> (process, monotonic deadline): that process expects a new
    #: call to this user (a callback it asked for) and takes its INVITE, ACK and CANCEL.
    claims: dict[str, tuple[int, float]] = field(default_factory=dict, compare=False)

    def owner(self, data: bytes) -> int:
        mark = owner_mark(data)
        if mark is not None:
            return mark if mark < len(self.peers) else self.index
        if data.startswith(b"SIP/2.0 "):
            return self.index
        space = data.find(b" ", 0, 20)
        if data[:space] not in _STARTED_ANYWHERE:
            return 0
        if self.claims:
            return self._claimed(data, space + 1)
        return self.index

    def claim(self, users: Iterable[str], index: int, seconds: float) -> None:
        """Process ``index`` takes new calls to ``users`` for ``seconds``."""
        deadline = time.monotonic() + seconds
        for user in users:
            self.claims[user.lower()] = (index, deadline)

    def _claimed(self, data: bytes, start: int) -> int:
        end = data.find(b"@", start, start + 300)
        colon = data.find(b":", start, end)
        if end == -1 or colon == -1:
            return self.index
        user = data[colon + 1:end].decode("utf-8", "replace").lower()
        claim = self.claims.get(user)
        if claim is None:
            return self.index
        if claim[1] < time.monotonic():
            del self.claims[user]
            return self.index
        return claim[0] if claim[0] < len(self.peers) else self.index


class _Connection:
    __slots__ = ("stream", "peer", "send_channel", "receive_channel", "last_activity")

    def __init__(self, stream: trio.SocketStream, peer: Address, queue: int) -> None:
        self.stream = stream
        self.peer = peer
        self.send_channel, self.receive_channel = trio.open_memory_channel[bytes](queue)
        self.last_activity = trio.current_time()


class SIPEndpoint:
    """A SIP endpoint listening on UDP and TCP on one address.

    ``handler`` receives every TU event of the transaction layer (never a :class:`Send`:
    those are performed here).  Call :meth:`serve` with ``nursery.start``; it reports the
    bound ``(host, port)``.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        handler: EventHandler,
        layer: TransactionLayer | None = None,
        limits: TransportLimits | None = None,
        shared: SharedPort | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.handler = handler
        self.layer = layer if layer is not None else TransactionLayer()
        self.limits = limits or TransportLimits()
        self.local: Address = (host, port)
        self._udp: socket.socket | None = None
        self._connections: dict[Address, _Connection] = {}
        self._per_address: dict[str, int] = {}
        self._nursery: trio.Nursery | None = None
        self._timer_wakeup = trio.Event()
        self._armed_deadline = float("inf")
        self._timers_seen = -1
        self.counters = {"udp_in": 0, "tcp_in": 0, "bad": 0, "dropped": 0, "sent": 0, "shed": 0,
                         "icmp_errors": 0, "stateless_acks": 0, "handed_on": 0, "handed_in": 0}
        # The kernel's receive time of the datagram being handled (a timespec's bytes),
        # for queue_delay(); None while a stream message is handled.
        self._stamp: bytes | None = None
        self._timestamps = False
        self._recverr = False
        self._icmp_failed: list[tuple[bytes, Address, str]] = []
        self.shared: SharedPort | None = shared
        self._handover: socket.socket | None = None

    # -- lifecycle ------------------------------------------------------------------------
    async def serve(self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        shared = self.shared
        if shared is not None:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Room for bursts: a registration storm arrives faster than one loop turn.
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                udp.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
            except OSError:
                pass
        if sys.platform == "linux":
            try:
                udp.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                self._timestamps = True
            except OSError:
                pass
            try:
                if family == socket.AF_INET6:
                    udp.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
                else:
                    udp.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
                self._recverr = True
            except OSError:
                pass
        udp.bind((self.host, self.port))
        bound_port = udp.getsockname()[1]
        udp.setblocking(False)
        listener: trio.socket.SocketType | None = None
        if shared is None or shared.index == 0:
            listener = trio.socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                # UDP and TCP share the port number (RFC 3261 18: both on 5060 by default).
                await listener.bind((self.host, bound_port))
            except OSError:
                udp.close()
                listener.close()
                raise
            listener.listen(512)
        if shared is not None:
            handover = socket.socket(fileno=os.dup(shared.fd))
            with contextlib.suppress(OSError):
                handover.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            handover.setblocking(False)
            self._handover = handover
        self._udp = udp
        self.port = bound_port
        self.local = (self.host, bound_port)
        trio_udp = trio.socket.from_stdlib_socket(udp)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._udp_loop, trio_udp)
                if listener is not None:
                    nursery.start_soon(self._tcp_accept_loop, trio.SocketListener(listener))
                if self._handover is not None:
                    nursery.start_soon(self._handover_loop, self._handover)
                nursery.start_soon(self._timer_loop)
                log.info("SIP endpoint on %s %s:%d%s", "udp+tcp" if listener is not None else "udp",
                         self.host, bound_port,
                         "" if shared is None else f" (process {shared.index} of {len(shared.peers)})")
                task_status.started(self.local)
            # (the nursery exits only when cancelled)
        finally:
            self._nursery = None
            trio_udp.close()
            if listener is not None:
                listener.close()
            if self._handover is not None:
                self._handover.close()
                self._handover = None

    # -- sending --------------------------------------------------------------------------
    def perform(self, actions: list[Action]) -> None:
        """Send what the layer asked to send, hand events to the handler."""
        for action in actions:
            if type(action) is Send:
                self.send_message(action.message, action.destination, action.transport)
            elif type(action) is TryingDue:
                # The handler has seen the INVITE (the action before this one).
                self.perform(self.layer.trying(action.transaction, trio.current_time()))
            else:
                try:
                    self.handler(action)
                except Exception:  # the TU's bug must not stop the transport
                    log.exception("transaction user failed on %s", type(action).__name__)
        self._rearm_timer()

    def queue_delay(self) -> float:
        """How long the message being handled waited in its socket's queue before it
        was read, in seconds: what a server behind its load sees grow.  For a TCP
        message, the wait of the newest segment read with it (so never more than its
        own).  0.0 where the kernel gives no receive timestamps."""
        stamp = self._stamp
        if stamp is None:
            return 0.0
        seconds, nanoseconds = _TIMESPEC.unpack_from(stamp)
        waited: float = time.time() - (seconds + nanoseconds * 1e-9)
        return waited if waited > 0.0 else 0.0

    def respond(self, transaction: object, response: Response) -> None:
        """Send a response through its server transaction."""
        self.perform(self.layer.respond(transaction, response, trio.current_time()))  # type: ignore[arg-type]

    def respond_statelessly(self, transaction: object, response: Response) -> None:
        """Send a final 300-699 response and drop the transaction (a challenge, RFC 3261
        8.2.7; see :meth:`TransactionLayer.respond_statelessly`)."""
        self.perform(self.layer.respond_statelessly(transaction, response, trio.current_time()))  # type: ignore[arg-type]

    def shed(self, transaction: object, retry_after: int) -> None:
        """Refuse a new request because the server is behind (counted as "shed"): 503
        with Retry-After (RFC 3261 21.5.4), sent statelessly so the refusal costs no
        state either."""
        request: Request = transaction.request  # type: ignore[attr-defined]
        self.counters["shed"] += 1
        response = make_response(request, 503, "Service Unavailable (overloaded)",
                                 to_tag=stateless_tag(request), headers=(("Retry-After", str(retry_after)),))
        self.respond_statelessly(transaction, response)

    def request(self, request: Request, destination: Address, transport: str = "UDP") -> object:
        """Start a client transaction; its events come to the handler."""
        tx, actions = self.layer.request(request, destination, transport, trio.current_time())
        self.perform(actions)
        return tx

    def send_message(self, message: Request | Response, destination: Address, transport: str) -> None:
        self.send_bytes(message.to_bytes(), destination, transport)

    def send_bytes(self, data: bytes, destination: Address, transport: str) -> None:
        """Send raw bytes (also used for CRLF keep-alives).  Never blocks."""
        self.counters["sent"] += 1
        if transport.upper() == "TCP":
            shared = self.shared
            if shared is not None and shared.index != 0:
                self._hand_on(0, b"O", data, destination, "TCP")  # process 0 holds the connections
                return
            self._send_tcp(data, destination)
            return
        assert self._udp is not None
        try:
            self._udp.sendto(data, destination)
        except BlockingIOError:
            self.counters["dropped"] += 1  # UDP may lose packets; retransmission covers it
        except OSError as exc:
            if exc.errno not in _DELIVERY_ERRNOS or not self._recverr:
                log.debug("UDP send to %s failed: %s", destination, exc)
                return
            # An ICMP error for an earlier datagram (to anyone) is reported by the next
            # call on the socket, and this send did not happen: read the error queue,
            # then send again.  What the errors mean is dealt with in a task of its
            # own, not inside whatever is sending now.
            if self._read_udp_errors() and self._nursery is not None:
                self._nursery.start_soon(self._report_udp_errors_task)
            try:
                self._udp.sendto(data, destination)
            except OSError as again:
                log.debug("UDP send to %s failed: %s", destination, again)

    def _read_udp_errors(self) -> bool:
        """Move the UDP socket's error queue into ``_icmp_failed``: each ICMP unreachable
        names a datagram we sent (RFC 3261 18.4).  True if any was queued."""
        raw = self._udp
        assert raw is not None
        failed = self._icmp_failed
        before = len(failed)
        for _ in range(_UDP_BATCH):
            try:
                quoted, control, _flags, addr = raw.recvmsg(MAX_DATAGRAM, 512, _MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            for _level, _type, value in control:
                if len(value) < _EXTENDED_ERR.size:
                    continue
                code, origin, icmp_type, icmp_code, _pad = _EXTENDED_ERR.unpack_from(value)
                if origin == _ORIGIN_ICMP:
                    wanted = icmp_type == 12 or (icmp_type == 3 and icmp_code != 4)
                elif origin == _ORIGIN_ICMP6:
                    wanted = icmp_type in (1, 4)
                else:
                    wanted = False
                if wanted:
                    failed.append((quoted, (addr[0], addr[1]), f"ICMP: {errno.errorcode.get(code, code)}"))
        return len(failed) > before

    def _report_udp_errors(self) -> None:
        """Tell the transaction layer of the queued ICMP errors: a request of a client
        transaction among them ends it at once, instead of after Timer B or F."""
        failed, self._icmp_failed = self._icmp_failed, []
        for quoted, destination, reason in failed:
            self.counters["icmp_errors"] += 1
            self.perform(self.layer.transport_error(quoted, destination, "UDP", reason, trio.current_time()))

    async def _report_udp_errors_task(self) -> None:
        self._report_udp_errors()

    def _send_tcp(self, data: bytes, destination: Address) -> None:
        conn = self._connections.get(destination)
        if conn is not None:
            try:
                conn.send_channel.send_nowait(data)
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                self.counters["dropped"] += 1
            return
        # No connection to reuse (RFC 3261 18.2.2: a response goes back over the
        # connection the request came on; if it closed, open a new one to the address).
        if self._nursery is not None:
            self._nursery.start_soon(self._connect_and_send, destination, data)

    async def _connect_and_send(self, destination: Address, data: bytes) -> None:
        if len(self._connections) >= self.limits.tcp_max_connections:
            self.counters["dropped"] += 1
            return
        try:
            with trio.fail_after(self.limits.tcp_connect_timeout):
                stream = await trio.open_tcp_stream(destination[0], destination[1])
        except (OSError, trio.TooSlowError) as exc:
            log.debug("TCP connect to %s failed: %s", destination, exc)
            # RFC 3261 18.4 / 17.1: the request's transaction (if it was one) fails at
            # once instead of waiting out Timer B or F.
            reason = "TCP connect timed out" if isinstance(exc, trio.TooSlowError) else f"TCP connect failed: {exc.strerror or exc}"
            self.perform(self.layer.transport_error(data, destination, "TCP", reason, trio.current_time()))
            return
        conn = self._connections.get(destination)
        if conn is not None:  # raced with another connection to the same peer
            await stream.aclose()
            self._send_tcp(data, destination)
            return
        await self._run_connection(stream, destination, first=data)

    # -- receiving ------------------------------------------------------------------------
    async def _udp_loop(self, sock: trio.socket.SocketType) -> None:
        # Read the datagrams already queued straight off the socket and only wait when
        # it is empty: going through the scheduler for each one costs two trips round
        # the run loop per datagram under load.  Every _UDP_BATCH datagrams the loop
        # yields so the tasks they started get to run.
        local = self.local
        raw = self._udp
        assert raw is not None
        taken = 0
        stamped = self._timestamps
        recvmsg = raw.recvmsg
        recvfrom = raw.recvfrom
        shared = self.shared
        while True:
            # Counted before anything else, so a flood of keep-alives or ICMP errors
            # yields too.
            taken += 1
            if taken > _UDP_BATCH:
                taken = 0
                await trio.lowlevel.checkpoint()
            try:
                if stamped:
                    data, control, _flags, addr = recvmsg(MAX_DATAGRAM, 64)
                    self._stamp = control[0][2] if control and control[0][1] == _SO_TIMESTAMPNS else None
                else:
                    data, addr = recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                taken = 0
                await trio.lowlevel.wait_readable(raw)
                continue
            except OSError as exc:
                # An ICMP error for an earlier send surfaces here (IP_RECVERR): its
                # details wait on the error queue.
                if exc.errno in _DELIVERY_ERRNOS:
                    if self._recverr:
                        self._read_udp_errors()
                        self._report_udp_errors()
                    continue
                raise
            self.counters["udp_in"] += 1
            if len(data) <= 4 and not data.strip(b"\r\n\x00 "):
                continue  # keep-alive CRLF or empty datagram
            if shared is not None:
                owner = shared.owner(data)
                if owner != shared.index:
                    self._hand_on(owner, b"I", data, (addr[0], addr[1]), "UDP")
                    continue
            self.receive_bytes(data, Incoming((addr[0], addr[1]), local, "UDP"))

    def receive_bytes(self, data: bytes, incoming: Incoming) -> None:
        """Feed one complete message (a datagram or a framed stream message)."""
        if data[:4] == b"ACK " and acks_stateless_answer(data):
            self.counters["stateless_acks"] += 1
            return
        try:
            message = parse_message_untrusted(data)
        except SIPParseError as exc:
            self.counters["bad"] += 1
            log.debug("bad message from %s: %s", incoming.source, exc.reason)
            answer = parse_error_response(data, exc)
            if answer is not None:
                # The response goes where the message came from (RFC 3581 behaviour:
                # the only address we can trust for a message we could not parse).
                self.send_bytes(answer, incoming.source, incoming.transport)
            return
        if type(message) is Request:
            stamped = _stamp_via(message, incoming.source)
            if stamped is None:
                self.counters["bad"] += 1
                return
            message = stamped
        self.perform(self.layer.receive(message, incoming.source, incoming.transport, trio.current_time()))

    async def _tcp_accept_loop(self, listener: trio.SocketListener) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    # EMFILE and friends: back off briefly instead of spinning.
                    log.warning("TCP accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                try:
                    peer_raw = stream.socket.getpeername()
                except OSError:
                    await stream.aclose()
                    continue
                peer: Address = (peer_raw[0], peer_raw[1])
                if (
                    len(self._connections) >= self.limits.tcp_max_connections
                    or self._per_address.get(peer[0], 0) >= self.limits.tcp_max_per_address
                ):
                    self.counters["dropped"] += 1
                    await stream.aclose()
                    continue
                assert self._nursery is not None
                self._nursery.start_soon(self._run_connection, stream, peer, None)

    async def _run_connection(self, stream: trio.SocketStream, peer: Address, first: bytes | None = None) -> None:
        conn = _Connection(stream, peer, self.limits.tcp_send_queue)
        self._connections[peer] = conn
        self._per_address[peer[0]] = self._per_address.get(peer[0], 0) + 1
        if first is not None:
            conn.send_channel.send_nowait(first)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._tcp_writer, conn, nursery.cancel_scope)
                await self._tcp_reader(conn)
                nursery.cancel_scope.cancel()
        finally:
            if self._connections.get(peer) is conn:
                del self._connections[peer]
            count = self._per_address.get(peer[0], 1) - 1
            if count:
                self._per_address[peer[0]] = count
            else:
                self._per_address.pop(peer[0], None)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _tcp_reader(self, conn: _Connection) -> None:
        framer = StreamFramer()
        incoming = Incoming(conn.peer, self.local, "TCP")
        # The kernel stamps TCP data too (SCM_TIMESTAMPNS of the newest segment read), so
        # queue_delay() sees a server behind its load on its connections as well.
        sock = conn.stream.socket
        stamped = self._timestamps
        if stamped:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            except OSError:
                stamped = False
        stamp: bytes | None = None
        while True:
            with trio.move_on_after(self.limits.tcp_idle_timeout) as idle:
                try:
                    if stamped:
                        data, control, _flags, _addr = await sock.recvmsg(65536, 64)
                        stamp = control[0][2] if control and control[0][1] == _SO_TIMESTAMPNS else None
                    else:
                        data = await conn.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
            if idle.cancelled_caught:
                log.debug("closing idle TCP connection from %s", conn.peer)
                return
            if not data:
                return  # the peer closed (or half-closed: we answer nothing more)
            conn.last_activity = trio.current_time()
            try:
                messages = framer.feed(data)
            except SIPParseError as exc:
                # A stream that lost its framing cannot be resynchronised (RFC 3261 18.3).
                self.counters["bad"] += 1
                log.debug("closing TCP connection from %s: %s", conn.peer, exc.reason)
                return
            for raw in messages:
                self.counters["tcp_in"] += 1
                if self.shared is not None:
                    owner = self.shared.owner(raw)
                    if owner != self.shared.index:
                        self._hand_on(owner, b"I", raw, conn.peer, "TCP")
                        continue
                self._stamp = stamp
                self.receive_bytes(raw, incoming)
            if not messages and len(data) >= 4 and not data.strip(b"\r\n"):
                # RFC 5626 3.5.1: answer a CRLFCRLF ping with a CRLF pong.
                try:
                    conn.send_channel.send_nowait(b"\r\n")
                except trio.WouldBlock:
                    pass

    async def _tcp_writer(self, conn: _Connection, scope: trio.CancelScope) -> None:
        async for data in conn.receive_channel:
            try:
                await conn.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                scope.cancel()
                return

    # -- processes sharing the port ---------------------------------------------------------
    def _hand_on(self, index: int, kind: bytes, data: bytes, peer: Address, transport: str) -> None:
        """Send ``data`` to process ``index`` of the shared port: ``b"I"``, a message that
        arrived here from ``peer`` for it to handle; ``b"O"``, one for it to send to
        ``peer`` (over a TCP connection only it holds).  Lost like a datagram when that
        process is not there (restarting): retransmissions cover it as they cover UDP."""
        assert self.shared is not None and self._handover is not None
        envelope = self.shared.token + marshal.dumps((kind, transport, peer[0], peer[1], data))
        try:
            self._handover.sendto(envelope, self.shared.peers[index])
        except OSError as exc:
            self.counters["dropped"] += 1
            log.debug("could not hand a message on to process %d: %s", index, exc)
            return
        self.counters["handed_on"] += 1

    async def _handover_loop(self, sock: socket.socket) -> None:
        """Take what the other processes of the shared port hand on to this one."""
        local = self.local
        assert self.shared is not None
        token = self.shared.token
        skip = len(token)
        taken = 0
        while True:
            taken += 1
            if taken > _UDP_BATCH:
                taken = 0
                await trio.lowlevel.checkpoint()
            try:
                envelope = sock.recv(MAX_DATAGRAM + 512)
            except BlockingIOError:
                taken = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            if not hmac.compare_digest(envelope[:skip], token):
                self.counters["bad"] += 1
                continue
            try:
                kind, transport, host, port, data = marshal.loads(envelope[skip:])
            except (ValueError, EOFError, TypeError):
                self.counters["bad"] += 1
                continue
            self.counters["handed_in"] += 1
            if kind == b"O":
                self._send_tcp(data, (host, port))
                continue
            # Handled here whatever its mark says: it is never handed on twice.
            self._stamp = None
            self.receive_bytes(data, Incoming((host, port), local, transport))

    # -- timers ---------------------------------------------------------------------------
    def _rearm_timer(self) -> None:
        # Only a timer started since the last look can be due before the armed deadline.
        started = self.layer.timers_started
        if started == self._timers_seen:
            return
        self._timers_seen = started
        deadline = self.layer.next_deadline()
        if deadline is not None and deadline < self._armed_deadline:
            self._timer_wakeup.set()

    async def _timer_loop(self) -> None:
        while True:
            deadline = self.layer.next_deadline()
            self._armed_deadline = deadline if deadline is not None else float("inf")
            self._timer_wakeup = trio.Event()
            with trio.move_on_at(self._armed_deadline):
                await self._timer_wakeup.wait()
            now = trio.current_time()
            if deadline is not None and now >= deadline:
                self.perform(self.layer.expire(now))

    def statistics(self) -> dict[str, int]:
        stats = dict(self.counters)
        stats["tcp_connections"] = len(self._connections)
        stats.update(self.layer.statistics())
        return stats


def _stamp_via(request: Request, source: Address) -> Request | None:
    """Add ``received``/``rport`` to the top Via (RFC 3261 18.2.1, RFC 3581 4).

    Returns None when the request has no usable Via (it cannot be answered)."""
    try:
        via = request.top_via
    except SIPParseError:
        return None
    host, port = source
    rport = via.param("rport")
    changes: dict[str, str | None] = {}
    # RFC 3581 4: with an empty rport the server MUST add received (even when equal).
    if rport is not None and rport == "":
        changes["rport"] = str(port)
        changes["received"] = host
    elif via.host.strip("[]") != host:
        # RFC 3261 18.2.1: received is added when sent-by differs from the source.
        changes["received"] = host
    if not changes:
        return request
    stamped = via.with_params(**changes)
    headers = request.headers.with_first_value_removed("Via").with_added("Via", str(stamped), first=True)
    return request.replace(headers=headers)
