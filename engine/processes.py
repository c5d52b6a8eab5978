"""A server of several SIP processes (``sip_processes`` > 1, Linux).

One Python thread carries all of a process's SIP work, so one process uses one core at
most.  With ``sip_processes = N`` the server runs N processes that all bind the same UDP
port (``SO_REUSEPORT``); the kernel gives each datagram to one of them by a hash of its
source address and port, so a phone's (or a call's) messages keep reaching the same
process.  How the rest is shared:

* **Messages that reach the wrong process** are handed on by the transport
  (:class:`sip.transport.SharedPort`): every branch and tag a process makes carries its
  index, so responses and in-dialog requests find the process that owns them.  New
  requests other than INVITE (registrations, messages, OPTIONS...) all go to process 0,
  the *primary*; it alone listens on TCP and serves HTTP, the console, provider
  registrations and the binding sweeps.
* **Bindings** live in the primary's registrar, which sends every change to the others
  (``("bindings", account id, [Binding...])``), and the whole table when one starts.
* **Execution limits** are counted in a file all of them map
  (:class:`engine.executions.SharedExecutionCounts`), so the per-customer and per-server
  limits hold for the server as a whole.
* **Console events** of the other processes are sent to the primary, which publishes
  them; the primary tells them which owners have a console open, so that nothing is
  built or sent while nobody listens.
* **Questions** go both ways (:class:`Questions`): the primary asks the others for
  their calls (the API's list), to hang one up (bridge ids carry the mark too), or
  for their count of a customer's calls; the others ask it for the count in all.
* **Authentication failures** are counted by the primary alone: the others report
  theirs, and it tells them of every lock-out (and of an admin's unlock).
* **Callback claims**: a process waiting for a callback claims new calls to its
  owner's accounts, and the primary tells the others (``SharedPort.claim``).
* **Counters**: the others send their SIP counters every STATISTICS_SECONDS, which
  the primary adds to its own in ``/healthz``.

The primary starts the others as ``python -m engine.secondary FD``, with one end of a
socket pair as FD, restarts one that exits, and stops them when it stops.  Frames on
that pair are pickles behind a 4-byte length: both ends are this program.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import secrets
import signal
import socket
import sys
import tempfile
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from engine.events import Event, EventBus
from sandbox.framing import HEADER, FrameDecoder
from sip.transport import SharedPort

log = logging.getLogger(__name__)

#: The largest frame on a link: the binding table a new process starts from is the
#: biggest (about 220 bytes a binding).
MAX_FRAME = 256 * 1024 * 1024
#: A secondary that exits sooner than this after starting is restarted after a pause
#: that doubles each time (up to RESTART_PAUSE_MAX), not at once.
STEADY_SECONDS = 10.0
RESTART_PAUSE_MAX = 30.0
#: How long the primary waits for another process to answer a question.
ASK_SECONDS = 2.0
#: How often a secondary sends its SIP counters to the primary (for /healthz).
STATISTICS_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class ProcessPlan:
    """What a process of a multi-process server needs to know about the group."""

    index: int
    #: each process's hand-over address (loopback UDP), by index (sip.transport.SharedPort)
    peers: tuple[tuple[str, int], ...]
    #: the descriptor of each hand-over socket, bound by the primary; a secondary gets
    #: its own under the same number
    fds: tuple[int, ...]
    #: what every hand-over envelope starts with
    token: bytes
    #: the file of the shared execution counters
    counts_path: str

    @property
    def primary(self) -> bool:
        return self.index == 0

    def shared_port(self) -> SharedPort:
        return SharedPort(self.index, self.peers, self.token, self.fds[self.index])

    @classmethod
    def for_primary(cls, processes: int) -> ProcessPlan:
        """A fresh plan for ``processes`` processes: their hand-over sockets, bound here
        once for the life of the server (a process started again gets the same one),
        a random token, and the counters' file in a private directory (mode 0700)."""
        from engine.executions import SharedExecutionCounts

        sockets = []
        for _ in range(processes):
            handover = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            handover.bind(("127.0.0.1", 0))
            sockets.append(handover)
        rundir = Path(tempfile.mkdtemp(prefix="dialspell-"))
        counts = SharedExecutionCounts.create(rundir, processes)
        peers = tuple((s.getsockname()[0], s.getsockname()[1]) for s in sockets)
        fds = tuple(s.detach() for s in sockets)
        return cls(index=0, peers=peers, fds=fds, token=secrets.token_bytes(16), counts_path=str(counts))

    def of(self, index: int) -> ProcessPlan:
        return dataclasses.replace(self, index=index)

    def remove_files(self) -> None:
        """Close the hand-over sockets and remove the counters' directory (the primary,
        when the server stops)."""
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(self.counts_path)
        with contextlib.suppress(OSError):
            os.rmdir(Path(self.counts_path).parent)


# -- frames ------------------------------------------------------------------------------------


def encode_frame(message: tuple[Any, ...]) -> bytes:
    """A frame as the sandbox's pool and workers write theirs (sandbox.framing): a
    4-byte length, then the pickle."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


class FrameReader:
    """Frames read from a stream, one at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(MAX_FRAME)
        self._frames: deque[bytes] = deque()

    async def next(self) -> tuple[Any, ...] | None:
        """The next frame, or None once the other end has closed."""
        while not self._frames:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            self._frames.extend(self._decoder.feed(data))
        message: tuple[Any, ...] = pickle.loads(self._frames.popleft())
        return message

    async def each(self, handle: Callable[[tuple[Any, ...]], None]) -> None:
        """Call ``handle`` with each frame until the other end closes."""
        while (message := await self.next()) is not None:
            handle(message)


class Outbox:
    """Frames queued from synchronous code and written by one task, in order."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[bytes](float("inf"))

    def put(self, message: tuple[Any, ...]) -> None:
        try:
            self._send.send_nowait(encode_frame(message))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the other end is gone; its replacement gets a fresh start

    async def drain_to(self, stream: trio.SocketStream) -> None:
        async for frame in self._receive:
            try:
                await stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    def close(self) -> None:
        self._send.close()


class Questions:
    """Questions sent over a link and their answers, matched by number."""

    def __init__(self) -> None:
        self._waiting: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._last = 0

    async def ask(self, outbox: Outbox, question: str, args: tuple[Any, ...]) -> Any:
        """Send ``question`` and wait for its answer (None after ASK_SECONDS)."""
        self._last += 1
        number = self._last
        done = trio.Event()
        answer: list[Any] = []
        self._waiting[number] = (done, answer)
        try:
            outbox.put(("ask", number, question, args))
            with trio.move_on_after(ASK_SECONDS):
                await done.wait()
        finally:
            del self._waiting[number]
        return answer[0] if answer else None

    def answered(self, number: int, answer: Any) -> None:
        waiting = self._waiting.get(number)
        if waiting is not None:
            waiting[1].append(answer)
            waiting[0].set()


async def answer_question(outbox: Outbox, number: int, respond: Callable[..., Awaitable[Any]] | None,
                          question: str, args: tuple[Any, ...]) -> None:
    """Answer the other end's question ``number`` (None when it cannot be answered)."""
    try:
        answer = None if respond is None else await respond(question, *args)
    except Exception:
        log.exception("could not answer the question %r", question)
        answer = None
    outbox.put(("answer", number, answer))


# -- the console's events across processes ------------------------------------------------------


class PrimaryEventBus(EventBus):
    """The primary's bus: also tells ``on_interest`` (with the owners that now have a
    subscription; ``None`` among them means an admin's console, which wants everyone's)
    whenever that set changes."""

    __slots__ = ("on_interest",)

    def __init__(self) -> None:
        super().__init__()
        self.on_interest: Callable[[frozenset[int | None]], None] | None = None

    def interest(self) -> frozenset[int | None]:
        return frozenset(self._by_owner)

    def _changed(self) -> None:
        if self.on_interest is not None:
            self.on_interest(self.interest())


class RelayedEventBus(EventBus):
    """A secondary's bus: no console subscribes here; events for the owners the primary
    says are listened to are sent to it (``send``) to be published there."""

    __slots__ = ("interested", "send")

    def __init__(self, send: Callable[[Event], None]) -> None:
        super().__init__()
        self.interested: frozenset[int | None] = frozenset()
        self.send = send

    def publish(self, event: Event) -> None:
        if self.has_subscribers(event.owner):
            self.send(event)

    def has_subscribers(self, owner: int | None) -> bool:
        interested = self.interested
        return bool(interested) and (None in interested or owner in interested)


# -- the primary's side -------------------------------------------------------------------------


class SecondaryProcesses:
    """Starts processes 1..N-1 of the group, keeps them running and talks to them."""

    def __init__(self, *, plan: ProcessPlan, config: Any, events: PrimaryEventBus,
                 bindings: Callable[[], Iterable[tuple[int, list[Any]]]],
                 on_exit: Callable[[int], None], stop_grace: float) -> None:
        self.plan = plan
        self.config = config
        self.events = events
        self.bindings = bindings
        self.on_exit = on_exit
        self.stop_grace = stop_grace
        self._outboxes: dict[int, Outbox] = {}
        self._processes: dict[int, trio.Process] = {}
        self._ready: set[int] = set()
        self._questions = Questions()
        #: answers the other processes' questions (``CallControl.answer``)
        self.respond: Callable[..., Awaitable[Any]] | None = None
        #: applies another process's claim on new calls to some users (SharedPort.claim)
        self.apply_claim: Callable[[list[str], int, float], None] | None = None
        #: counts a failed authentication another process reports (Authenticator.record_failure)
        self.record_failure: Callable[..., None] | None = None
        #: the lock-outs now in force, for a process that starts (Authenticator.lockouts)
        self.lockouts: Callable[[], dict[str, float]] = dict
        #: each running secondary's latest SIP counters (sent every STATISTICS_SECONDS)
        self.statistics: dict[int, dict[str, int]] = {}
        self._stopping = False
        events.on_interest = self._interest_changed

    # Called by the registrar (synchronously) whenever an account's bindings change.
    def bindings_changed(self, account_id: int, bindings: list[Any]) -> None:
        for outbox in self._outboxes.values():
            outbox.put(("bindings", account_id, bindings))

    def lockout(self, key: str, until: float) -> None:
        """The primary locked ``key`` out until ``until`` (0: lifted): tell the others."""
        for outbox in self._outboxes.values():
            outbox.put(("lockout", key, until))

    def claim(self, users: list[str], index: int, seconds: float) -> None:
        """Process ``index`` takes new calls to ``users`` for ``seconds``: tell the others."""
        for other, outbox in self._outboxes.items():
            if other != index:
                outbox.put(("claim", users, index, seconds))

    def _interest_changed(self, interest: frozenset[int | None]) -> None:
        for outbox in self._outboxes.values():
            outbox.put(("interest", interest))

    async def ask(self, index: int, question: str, *args: Any) -> Any:
        """Process ``index``'s answer to ``question`` (``CallControl.answer``), or None
        if it is not running or does not answer within ASK_SECONDS."""
        outbox = self._outboxes.get(index)
        if outbox is None:
            return None
        return await self._questions.ask(outbox, question, args)

    async def ask_each(self, question: str, *args: Any) -> list[Any]:
        answers: list[Any] = []

        async def one(index: int) -> None:
            answer = await self.ask(index, question, *args)
            if answer is not None:
                answers.append(answer)

        async with trio.open_nursery() as nursery:
            for index in list(self._outboxes):
                nursery.start_soon(one, index)
        return answers

    def ready(self, index: int) -> bool:
        """Whether process ``index`` serves SIP now."""
        return index in self._ready

    def pid(self, index: int) -> int | None:
        process = self._processes.get(index)
        return None if process is None or process.returncode is not None else process.pid

    def begin_stop(self) -> None:
        """Ask every secondary to end its calls and exit (the first step of a stop)."""
        self._stopping = True
        for process in self._processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for index in range(1, len(self.plan.peers)):
                await nursery.start(self._keep, index)
            task_status.started()

    async def _keep(self, index: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        pause = 0.5
        first = True
        while True:
            started = trio.current_time()
            returncode = await self._run_one(index, task_status if first else None)
            first = False
            if self._stopping:
                return
            log.warning("SIP process %d exited (%s); starting it again", index, returncode)
            if trio.current_time() - started < STEADY_SECONDS:
                await trio.sleep(pause)
                pause = min(pause * 2, RESTART_PAUSE_MAX)
            else:
                pause = 0.5

    async def _run_one(self, index: int, task_status: trio.TaskStatus[None] | None) -> int | None:
        ours, theirs = socket.socketpair()
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "engine.secondary", str(theirs.fileno())],
                pass_fds=(theirs.fileno(), self.plan.fds[index]),
            )
        finally:
            theirs.close()
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        outbox = Outbox()
        self._processes[index] = process
        ready = trio.Event()
        try:
            async with trio.open_nursery() as nursery:

                def handle(message: tuple[Any, ...]) -> None:
                    kind = message[0]
                    if kind == "event":
                        self.events.publish(message[1])
                    elif kind == "statistics":
                        self.statistics[index] = message[1]
                    elif kind == "auth_failure":
                        if self.record_failure is not None:
                            self.record_failure(*message[1], **message[2])
                    elif kind == "claim":
                        if self.apply_claim is not None:
                            self.apply_claim(*message[1:])
                        self.claim(*message[1:])
                    elif kind == "answer":
                        self._questions.answered(message[1], message[2])
                    elif kind == "ask":
                        nursery.start_soon(answer_question, outbox, message[1], self.respond, message[2], message[3])
                    elif kind == "ready":
                        self._ready.add(index)
                        ready.set()

                outbox.put(("start", self.config, self.plan.of(index), logging.getLogger().level))
                outbox.put(("interest", self.events.interest()))
                # Registered first, so no change is missed between the table and it.
                self._outboxes[index] = outbox
                outbox.put(("table", list(self.bindings())))
                for key, until in self.lockouts().items():
                    outbox.put(("lockout", key, until))
                nursery.start_soon(outbox.drain_to, stream)

                async def talk() -> None:
                    await FrameReader(stream).each(handle)
                    nursery.cancel_scope.cancel()  # the process is gone (or going)

                nursery.start_soon(talk)
                if task_status is not None:
                    await ready.wait()
                    task_status.started()
        finally:
            self._ready.discard(index)
            self.statistics.pop(index, None)
            self._outboxes.pop(index, None)
            outbox.close()
            with trio.CancelScope(shield=True):
                await stream.aclose()
                returncode = await self._reap(process)
                self.on_exit(index)
        if task_status is not None and not ready.is_set():
            raise RuntimeError(f"SIP process {index} stopped while starting (exit status {returncode}); "
                               "its error is logged above")
        return returncode

    async def _reap(self, process: trio.Process) -> int | None:
        """Wait for ``process`` to exit: it ends its calls on SIGTERM within the stop
        grace; past twice that (and its writer's flush), it is killed."""
        if process.returncode is None and self._stopping:
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(2 * self.stop_grace + 10.0):
            return await process.wait()
        process.kill()
        return await process.wait()


# -- the secondary's side -----------------------------------------------------------------------


class PrimaryLink:
    """A secondary's end of the pair: applies what the primary sends, sends events."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = FrameReader(stream)
        self.outbox = Outbox()
        self.events = RelayedEventBus(lambda event: self.outbox.put(("event", event)))
        self.on_bindings: Callable[[int, list[Any]], None] | None = None
        self.on_table: Callable[[list[tuple[int, list[Any]]]], None] | None = None
        #: answers the primary's questions (``CallControl.answer``)
        self.respond: Callable[..., Awaitable[Any]] | None = None
        #: applies another process's claim on new calls to some users (SharedPort.claim)
        self.apply_claim: Callable[[list[str], int, float], None] | None = None
        #: applies the primary's lock-outs (Authenticator.apply_lockout)
        self.apply_lockout: Callable[[str, float], None] | None = None
        self._questions = Questions()
        self._nursery: trio.Nursery | None = None

    async def start(self) -> tuple[Any, ProcessPlan, int]:
        """Read the first frame: the configuration, this process's plan, the log level."""
        first = await self.reader.next()
        if first is None or first[0] != "start":
            raise EOFError("the primary closed the link before starting this process")
        return first[1], first[2], first[3]

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "bindings" and self.on_bindings is not None:
            self.on_bindings(message[1], message[2])
        elif kind == "table" and self.on_table is not None:
            self.on_table(message[1])
        elif kind == "interest":
            self.events.interested = message[1]
        elif kind == "claim" and self.apply_claim is not None:
            self.apply_claim(*message[1:])
        elif kind == "lockout" and self.apply_lockout is not None:
            self.apply_lockout(message[1], message[2])
        elif kind == "ask" and self._nursery is not None:
            self._nursery.start_soon(answer_question, self.outbox, message[1], self.respond, message[2], message[3])
        elif kind == "answer":
            self._questions.answered(message[1], message[2])

    def claim(self, users: list[str], index: int, seconds: float) -> None:
        """This process takes new calls to ``users``: the primary tells the others."""
        self.outbox.put(("claim", users, index, seconds))

    def report_failure(self, *keys: str, **details: Any) -> None:
        """Send a failed authentication to the primary, which counts them all."""
        self.outbox.put(("auth_failure", keys, details))

    def ready(self) -> None:
        """Tell the primary this process serves SIP now."""
        self.outbox.put(("ready",))

    async def send_statistics(self, statistics: Callable[[], dict[str, int]]) -> None:
        """Send this process's SIP counters to the primary, now and then."""
        while True:
            self.outbox.put(("statistics", statistics()))
            await trio.sleep(STATISTICS_SECONDS)

    async def run(self) -> None:
        """Apply the primary's frames until it closes the link (then return)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.outbox.drain_to, self.stream)
            await self.reader.each(self._handle)
            nursery.cancel_scope.cancel()
        self._nursery = None

    async def ask(self, question: str, *args: Any) -> Any:
        """The primary's answer to ``question`` (None if it does not answer in time)."""
        return await self._questions.ask(self.outbox, question, args)
