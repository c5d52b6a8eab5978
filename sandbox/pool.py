"""The trio side: a pool of pre-spawned worker processes and the wall clock.

``SandboxPool`` starts its workers ahead of need, hands each execution to the worker
with the least runnable work, relays the script's host calls to the engine's
:class:`~sandbox.results.Host`, and owns every deadline the worker cannot enforce on
itself: the wall clock (with Dial's extensions and the absolute cap), and liveness.  A
worker that crashes, sends a malformed frame, or holds runnable work without a word for
``Limits.stall_seconds`` is killed with SIGKILL and replaced; every execution it held
ends as ``crashed`` (the blast radius, kept rare by the worker's own limits: see
docs/sandbox.md).  Everything a worker says is parsed by
``framing.parse_worker_frame_untrusted`` and re-capped here.
"""

from __future__ import annotations

import enum
import itertools
import json
import logging
import math
import os
import re as stdlib_re
import subprocess
import sys
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from sandbox.errors import PoolClosedError, WorkerProtocolError, WorkerStartError
from sandbox.framing import (
    MAX_WORKER_FRAME,
    CallFrame,
    CompiledFrame,
    DoneFrame,
    FrameDecoder,
    LogFrame,
    ReadyFrame,
    RetireFrame,
    TickFrame,
    WorkerFrame,
    check_plain_value,
    encode_pool_frame,
    parse_worker_frame_untrusted,
)
from sandbox.limits import WORKER_FIELDS, Limits
from sandbox.results import (
    CompileError,
    ErrorInfo,
    ExecutionResult,
    Host,
    HostReply,
    LimitKind,
    Outcome,
)

logger = logging.getLogger(__name__)

_ADDRESS = stdlib_re.compile(r" at 0x[0-9a-fA-F]+|0x[0-9a-fA-F]{9,}")
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
_WEBGET_SLACK = 5.0


def sanitise(text: str) -> str:
    """What the author may see of a worker's text: no heap addresses, no host paths."""
    text = _ADDRESS.sub("", text) if "0x" in text else text
    return text.replace(_PACKAGE_ROOT, "<host>") if _PACKAGE_ROOT in text else text


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RETIRING = "retiring"
    DEAD = "dead"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Crashed:
    reason: str


class _Pending:
    """One execution as the pool tracks it, and the mailbox its frames arrive in.

    (A deque and a parking lot rather than a memory channel: trio builds each channel
    through ``MemorySendChannel[T]``, a trip through the typing machinery once per
    execution, and a receive that finds a frame waiting still goes round the scheduler
    twice.)"""

    __slots__ = ("id", "worker", "runnable", "orphan", "_frames", "_arrived")

    def __init__(self, ident: int, worker: _Worker) -> None:
        self.id = ident
        self.worker = worker
        self.runnable = False
        self.orphan = False
        self._frames: deque[WorkerFrame | _Crashed] = deque()
        self._arrived = trio.lowlevel.ParkingLot()

    def deliver(self, frame: WorkerFrame | _Crashed) -> None:
        self._frames.append(frame)
        self._arrived.unpark()

    async def next_frame(self) -> WorkerFrame | _Crashed:
        """The next frame, waiting (cancellably) only when none has arrived."""
        frames = self._frames
        while not frames:
            await self._arrived.park()
        return frames.popleft()


class _Worker:
    """One worker process and the executions it holds."""

    def __init__(self, process: trio.Process, pool: SandboxPool) -> None:
        self.process = process
        self.pool = pool
        self.pid = process.pid
        self.state = WorkerState.STARTING
        self.executions: dict[int, _Pending] = {}
        self.compiles: dict[int, trio.MemorySendChannel[tuple[CompileError, ...] | None]] = {}
        self.runnable = 0
        self.outgoing, self._outgoing_receive = trio.open_memory_channel[bytes](math.inf)
        self.watchdog = trio.CancelScope()
        self.last_heard = 0.0  # when a runnable execution last made the worker talk
        self.decoder = FrameDecoder(MAX_WORKER_FRAME)
        self.ready_seen = False
        self.replaced = False
        self.backlog = 0
        self.writing = False
        self.closing = False
        stdin = process.stdin
        assert isinstance(stdin, trio.lowlevel.FdStream)
        self.fd = stdin.fileno()

    # --- sending ------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        """Queue one frame; written at once when nothing is queued (the common case)."""
        if self.state is WorkerState.DEAD or self.closing:
            return
        data = encode_pool_frame(message)
        if not self.backlog and not self.writing:
            # Skip a task switch: the pipe is non-blocking and usually has room.
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                self.process.kill()
                return
            if written == len(data):
                return
            data = data[written:]
        self.backlog += 1
        self.outgoing.send_nowait(data)

    def close_input(self) -> None:
        """EOF on the worker's stdin once everything queued is written."""
        if not self.closing:
            self.closing = True
            self.outgoing.close()

    async def writer(self) -> None:
        """Write what send() could not; EOF on close; a dead pipe ends the worker."""
        stdin = self.process.stdin
        assert stdin is not None
        receive = self._outgoing_receive
        try:
            while True:
                try:
                    frame = await receive.receive()
                except trio.EndOfChannel:
                    await stdin.aclose()
                    return
                self.backlog -= 1
                self.writing = True
                await stdin.send_all(frame)
                self.writing = False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.process.kill()

    # --- liveness -------------------------------------------------------------------

    # The watchdog's deadline is moved lazily: a frame heard or an execution becoming
    # runnable only notes the time, and _watch, woken by a deadline that may be stale,
    # compares it with last_heard before it kills.  Moving a trio deadline costs a
    # heap update; a dialplan run changed it six times.
    def set_runnable(self, pending: _Pending, runnable: bool) -> None:
        if pending.runnable == runnable:
            return
        pending.runnable = runnable
        self.runnable += 1 if runnable else -1
        if runnable:
            self.last_heard = now = trio.current_time()
            if self.watchdog.deadline == math.inf:
                self.watchdog.deadline = now + self.pool.limits.stall_seconds

    def heard(self) -> None:
        if self.runnable:
            self.last_heard = trio.current_time()

    def fail_all(self, reason: str) -> None:
        self.state = WorkerState.DEAD
        for pending in self.executions.values():
            pending.deliver(_Crashed(reason=reason))
        self.executions.clear()
        for channel in self.compiles.values():
            channel.send_nowait(None)
        self.compiles.clear()


class SandboxPool:
    """Worker processes that run dialplans, used from trio.

    ``async with SandboxPool(workers=2, limits=Limits()) as pool:`` starts the workers
    (each reports ready before ``__aenter__`` returns) and stops them on exit.
    """

    def __init__(self, *, workers: int = 2, limits: Limits | None = None) -> None:
        if workers < 1:
            raise ValueError("a pool needs at least one worker")
        self.limits = limits if limits is not None else Limits()
        self._size = workers
        self._workers: list[_Worker] = []
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self._nursery_manager: Any = None
        self._closed = False
        self._capacity = trio.Event()
        self.crashes = 0
        self.spawned = 0

    # --- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> SandboxPool:
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        try:
            async with trio.open_nursery() as starters:
                for _ in range(self._size):
                    starters.start_soon(self._nursery.start, self._worker_task)
        except BaseException:
            self._closed = True
            self._nursery.cancel_scope.cancel()
            await self._nursery_manager.__aexit__(*sys.exc_info())
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._closed = True
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        return await self._nursery_manager.__aexit__(exc_type, exc, tb)  # type: ignore[no-any-return]

    def worker_pids(self) -> list[int]:
        """The live workers' process ids (for operators, tests and benchmarks)."""
        return [w.pid for w in self._workers if w.state is not WorkerState.DEAD]

    def _command(self) -> list[str]:
        config = {name: getattr(self.limits, name) for name in WORKER_FIELDS}
        return [sys.executable, "-s", "-B", "-m", "sandbox.worker", json.dumps(config)]

    def _environment(self) -> dict[str, str]:
        # A minimal environment: nothing of the server's (credentials, config) leaks.
        env = {"PYTHONPATH": _PACKAGE_ROOT, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
        if "PATH" in os.environ:
            env["PATH"] = os.environ["PATH"]
        return env

    async def _worker_task(self, task_status: trio.TaskStatus[_Worker] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            process = await trio.lowlevel.open_process(
                self._command(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd="/",
                env=self._environment(),
            )
        except OSError as exc:
            raise WorkerStartError(f"cannot start a worker: {exc}") from exc
        worker = _Worker(process, self)
        self.spawned += 1
        reason = "worker exited"
        try:
            with trio.move_on_after(self.limits.spawn_timeout_seconds):
                reason = await self._read(worker)
            if worker.state is not WorkerState.READY:
                raise WorkerStartError(f"a worker did not start: {reason}")
            self._workers.append(worker)
            task_status.started(worker)
            self._signal_capacity()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.writer)
                nursery.start_soon(self._watch, worker)
                reason = await self._read(worker)
                nursery.cancel_scope.cancel()
        finally:
            if (worker.executions or worker.compiles) and not self._closed:
                self.crashes += 1
                logger.warning(
                    "sandbox worker %s ended (%s) holding %d executions",
                    worker.pid,
                    reason,
                    len(worker.executions),
                )
            worker.fail_all(reason)
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()
            if worker in self._workers:
                self._workers.remove(worker)
            self._signal_capacity()
            if not self._closed and not worker.replaced and self._nursery is not None:
                worker.replaced = True
                self._nursery.start_soon(self._respawn)

    async def _respawn(self) -> None:
        assert self._nursery is not None
        try:
            await self._nursery.start(self._worker_task)
        except WorkerStartError:
            logger.exception("could not replace a sandbox worker")

    async def _watch(self, worker: _Worker) -> None:
        """Kill the worker once a runnable execution has left it silent for
        ``stall_seconds`` (see _Worker.set_runnable)."""
        stall = self.limits.stall_seconds
        while True:
            with worker.watchdog:
                await trio.sleep_forever()
            now = trio.current_time()
            if worker.runnable and now >= worker.last_heard + stall:
                logger.warning("sandbox worker %s stalled; killing it", worker.pid)
                worker.process.kill()
                return
            # Heard from since the deadline was set, or idle: wait for the next one.
            worker.watchdog = trio.CancelScope(
                deadline=worker.last_heard + stall if worker.runnable else math.inf)

    async def _read(self, worker: _Worker) -> str:
        """Read frames until EOF (or, while starting, until ready); say why it ended."""
        stdout = worker.process.stdout
        assert stdout is not None
        decoder = worker.decoder
        try:
            while True:
                if worker.state is WorkerState.STARTING and worker.ready_seen:
                    worker.state = WorkerState.READY
                    return "ready"
                data = await stdout.receive_some(65536)
                if not data:
                    return "worker exited"
                for payload in decoder.feed(bytes(data)):
                    frame = parse_worker_frame_untrusted(payload)
                    if isinstance(frame, ReadyFrame):
                        if worker.ready_seen:
                            raise WorkerProtocolError("ready twice")
                        worker.ready_seen = True
                    elif not worker.ready_seen:
                        raise WorkerProtocolError("frame before ready")
                    else:
                        self._dispatch(worker, frame)
        except WorkerProtocolError as exc:
            logger.warning("sandbox worker %s sent garbage: %s", worker.pid, exc)
            return f"protocol error: {exc}"
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return "pipe closed"

    def _dispatch(self, worker: _Worker, frame: WorkerFrame) -> None:
        worker.heard()
        if isinstance(frame, TickFrame):
            return
        if isinstance(frame, RetireFrame):
            if worker.state is WorkerState.READY:
                worker.state = WorkerState.RETIRING
                logger.info("sandbox worker %s retires (%s)", worker.pid, frame.reason)
                assert self._nursery is not None
                worker.replaced = True
                self._nursery.start_soon(self._respawn)
                self._close_if_idle(worker)
            return
        if isinstance(frame, CompiledFrame):
            channel = worker.compiles.pop(frame.id, None)
            if channel is None:
                raise WorkerProtocolError("compile result for an unknown request")
            channel.send_nowait(frame.errors)
            return
        if isinstance(frame, ReadyFrame):  # pragma: no cover - handled by _read
            return
        pending = worker.executions.get(frame.id)
        if pending is None:
            raise WorkerProtocolError(f"frame for unknown execution {frame.id}")
        if isinstance(frame, CallFrame):
            worker.set_runnable(pending, False)
        elif isinstance(frame, DoneFrame):
            worker.set_runnable(pending, False)
            del worker.executions[frame.id]
            self._signal_capacity()
            self._close_if_idle(worker)
        if not pending.orphan:
            pending.deliver(frame)

    def _close_if_idle(self, worker: _Worker) -> None:
        if worker.state is WorkerState.RETIRING and not worker.executions:
            # EOF on stdin: the worker exits by itself once it has nothing to do.
            worker.close_input()

    def _signal_capacity(self) -> None:
        self._capacity.set()
        self._capacity = trio.Event()

    async def _acquire(self) -> _Worker:
        while True:
            if self._closed or self._nursery is None:
                raise PoolClosedError("the sandbox pool is not running")
            best: _Worker | None = None
            for worker in self._workers:
                if worker.state is not WorkerState.READY:
                    continue
                if len(worker.executions) >= self.limits.worker_max_active:
                    continue
                if best is None or (worker.runnable, len(worker.executions)) < (
                    best.runnable,
                    len(best.executions),
                ):
                    best = worker
            if best is not None:
                return best
            await self._capacity.wait()

    # --- compile ----------------------------------------------------------------------

    async def compile_errors(self, source: str, *, limits: Limits | None = None) -> list[CompileError]:
        """Why ``source`` does not compile (empty list: it does).  Compiled in a worker."""
        limits = self.limits if limits is None else limits
        refused = _size_error(source, limits)
        if refused is not None:
            return [refused]
        worker = await self._acquire()
        ident = next(self._ids)
        send, receive = trio.open_memory_channel[tuple[CompileError, ...] | None](1)
        worker.compiles[ident] = send
        worker.send({"op": "compile", "id": ident, "source": source, "source_bytes": limits.source_bytes})
        with trio.move_on_after(limits.stall_seconds + 10.0):
            result = await receive.receive()
            if result is not None:
                return list(result)
        worker.compiles.pop(ident, None)
        return [CompileError(line=1, column=1, message="the dialplan could not be compiled")]

    # --- run ----------------------------------------------------------------------------

    async def run(
        self,
        source: str,
        *,
        request: Mapping[str, object],
        context: Mapping[str, object],
        host: Host,
        limits: Limits | None = None,
    ) -> ExecutionResult:
        """Run one dialplan to its end and say how it ended.

        ``request`` and ``context`` are plain data (see docs/sandbox.md for the keys).
        Cancelling the calling task (the caller hung up) ends the execution in the
        worker at its next instruction or at once if it is parked in a host call.
        """
        limits = self.limits if limits is None else limits
        started = trio.current_time()
        log = _Output(limits, host)
        refused = _size_error(source, limits)
        if refused is not None:
            return _compile_failure((refused,), started)
        worker = await self._acquire()
        pending = _Pending(next(self._ids), worker)
        worker.executions[pending.id] = pending
        worker.set_runnable(pending, True)
        worker.send(
            {
                "op": "run",
                "id": pending.id,
                "source": source,
                "request": dict(request),
                "context": dict(context),
                "limits": limits.per_execution(),
            }
        )
        absolute = started + limits.absolute_wall_seconds
        deadline = min(started + limits.wall_seconds, absolute)
        finished = False
        # One scope holds the wall deadline for the whole execution (moved when a
        # blocking call extends it): a scope per wait would cost as much as the wait.
        wall = trio.CancelScope(deadline=deadline)
        try:
            with wall:
                while True:
                    frame = await pending.next_frame()
                    if isinstance(frame, _Crashed):
                        finished = True
                        return _ended(Outcome.CRASHED, log, started, reason=frame.reason)
                    if isinstance(frame, DoneFrame):
                        finished = True
                        log.add(frame.lines)
                        return _done(frame, log, started)
                    if isinstance(frame, LogFrame):
                        log.add(frame.lines)
                        continue
                    assert isinstance(frame, CallFrame)
                    log.add(frame.lines)
                    now = trio.current_time()
                    if frame.name == "ExtendScriptTimeout":
                        seconds = frame.args[0] if frame.args else 0
                        if type(seconds) in (int, float):
                            deadline = wall.deadline = min(now + float(seconds), absolute)  # type: ignore[arg-type]
                        reply = HostReply()
                    else:
                        extended = min(max(deadline, now + _allowance(frame, limits)), absolute)
                        if extended != deadline:
                            deadline = wall.deadline = extended
                        reply = await host.call(frame.name, frame.args)
                    _check_reply(reply)
                    worker.set_runnable(pending, True)
                    worker.send(
                        {
                            "op": "reply",
                            "id": pending.id,
                            "value": reply.value,
                            "end": reply.end,
                            "error": reply.error,
                            "failure_status": reply.failure_status,
                            "failure_reason": reply.failure_reason,
                        }
                    )
            # Only the wall deadline leaves the loop this way.
            return _ended(Outcome.LIMIT_EXCEEDED, log, started, limit=LimitKind.WALL)
        finally:
            if not finished:
                # Wall time, a cancelled caller or a host error: stop the script in
                # the worker; its late frames are dropped.
                pending.orphan = True
                if pending.id in worker.executions:
                    worker.set_runnable(pending, True)
                    reason = "wall" if trio.current_time() >= deadline else "cancelled"
                    worker.send({"op": "cancel", "id": pending.id, "reason": reason})


class _Output:
    """The author's output as the pool re-caps it (the worker's caps are not trusted)."""

    __slots__ = ("lines", "_bytes", "_limits", "_host", "_over")

    def __init__(self, limits: Limits, host: Host) -> None:
        self.lines: list[str] = []
        self._bytes = 0
        self._limits = limits
        self._host = host
        self._over = False

    def add(self, lines: tuple[str, ...]) -> None:
        limits = self._limits
        for raw in lines:
            if self._over:
                return
            line = sanitise(raw[: limits.line_bytes + 64])
            self._bytes += len(line) + 1
            if self._bytes > limits.output_bytes + 256:
                self._over = True
                line = f"[output limit of {limits.output_bytes} bytes reached]"
            self.lines.append(line)
            self._host.log(line)


def _allowance(frame: CallFrame, limits: Limits) -> float:
    """How long a blocking call may hold the script (the wall deadline's extension)."""
    args = frame.args
    if frame.name == "Dial":
        ring = args[1] if len(args) > 1 and type(args[1]) is int else 0
        ring = 180 if ring <= 0 or ring > 180 else ring
        return ring + limits.dial_extension_seconds
    if frame.name == "GoogleVoiceCall":
        wait = args[6] if len(args) > 6 and type(args[6]) is int else 30
        return wait + limits.dial_extension_seconds
    if frame.name == "HttpCallback":
        wait = args[3] if len(args) > 3 and type(args[3]) is int else 30
        return wait + limits.dial_extension_seconds
    if frame.name == "WebGet":
        timeout = args[1] if len(args) > 1 and type(args[1]) in (int, float) else 10
        return float(timeout) + _WEBGET_SLACK  # type: ignore[arg-type]
    return 0.0


def _check_reply(reply: HostReply) -> None:
    if type(reply) is not HostReply:
        raise TypeError(f"Host.call must return a HostReply, not {type(reply).__name__}")
    check_plain_value(reply.value)
    if reply.failure_status is not None and type(reply.failure_status) is not int:
        raise TypeError("HostReply.failure_status must be an int or None")
    for text in (reply.failure_reason, reply.error):
        if text is not None and type(text) is not str:
            raise TypeError("HostReply texts must be str or None")


def _size_error(source: str, limits: Limits) -> CompileError | None:
    if len(source) <= limits.source_bytes // 4:
        return None
    size = len(source.encode("utf-8", "surrogatepass"))
    if size <= limits.source_bytes:
        return None
    return CompileError(
        line=1, column=1, message=f"the dialplan is {size} bytes; the limit is {limits.source_bytes}"
    )


def _compile_failure(errors: tuple[CompileError, ...], started: float) -> ExecutionResult:
    first = errors[0]
    return ExecutionResult(
        outcome=Outcome.COMPILE_ERROR,
        error=ErrorInfo(type="CompileError", message=first.message, line=first.line),
        compile_errors=errors,
        wall_seconds=trio.current_time() - started,
    )


def _ended(
    outcome: Outcome,
    log: _Output,
    started: float,
    *,
    limit: LimitKind | None = None,
    reason: str = "",
) -> ExecutionResult:
    error = None
    if outcome is Outcome.CRASHED:
        error = ErrorInfo(type="WorkerCrash", message="the dialplan's worker process stopped", line=None)
        logger.info("execution crashed: %s", reason)
    return ExecutionResult(
        outcome=outcome,
        error=error,
        limit=limit,
        log=tuple(log.lines),
        wall_seconds=trio.current_time() - started,
    )


def _done(frame: DoneFrame, log: _Output, started: float) -> ExecutionResult:
    error = frame.error
    if error is not None:
        error = ErrorInfo(type=error.type, message=sanitise(error.message), line=error.line)
    if frame.outcome is Outcome.COMPILE_ERROR and not frame.compile_errors:
        raise WorkerProtocolError("compile error without errors")
    return ExecutionResult(
        outcome=frame.outcome,
        error=error,
        limit=frame.limit,
        log=tuple(log.lines),
        trace_enabled=frame.trace,
        cpu_seconds=frame.cpu,
        wall_seconds=trio.current_time() - started,
        compile_errors=frame.compile_errors,
    )
