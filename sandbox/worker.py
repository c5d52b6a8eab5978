"""The worker process: many executions as greenlets on one thread (``python -m sandbox.worker``).

One worker runs many executions, but only one at a time, each on its own greenlet:

* a facade call that needs the host (Dial ringing for minutes) sends a ``call`` frame
  and switches back to the scheduler, so a parked execution costs a greenlet (a few
  KB), not a process or a thread;
* CPU is measured per execution with ``time.process_time()`` around every slice, and
  ``setitimer(ITIMER_PROF)`` is armed with ``min(quantum, remaining budget)`` whenever
  an execution is switched in.  When it fires inside script code, the handler either
  raises the uncatchable ``LimitExceeded(cpu)`` (budget spent; the timer keeps firing
  every millisecond, so the limit is sticky) or, when others are waiting, switches to
  the scheduler: the least-CPU-used execution runs next, so a trivial dialplan waits
  at most one quantum behind 20 spinning ones;
* the process itself is capped: RLIMIT_DATA (heap), RLIMIT_FSIZE 0, RLIMIT_CORE 0,
  a small RLIMIT_NOFILE after start-up, and a large RLIMIT_STACK set *before* the
  interpreter starts (the worker re-execs itself once), so that hashing a deeply
  nested tuple (gh-154318: C recursion without a guard) runs out of heap, not stack;
  after its warm-up a seccomp filter (sandbox.seccomp) takes away files, sockets,
  processes and signals to others.

The pool is the backstop for everything else: it owns the wall clock and kills a
worker that crashes, stalls or sends garbage.  Frames from the pool are trusted; the
worker's stdout is reserved for frames (fd 1 is pointed at /dev/null for everything
else).
"""

from __future__ import annotations

import gc
import heapq
import itertools
import json
import logging
import marshal
import os
import resource
import select
import signal
import sys
import time
from collections.abc import Mapping
from types import CodeType, FrameType, TracebackType
from typing import Any

import greenlet

from sandbox import seccomp
from sandbox.control import Cancelled, EndScript, LimitExceeded, ScriptControl
from sandbox.facade import Regex, RegexCache, Reply, Request, Sys
from sandbox.framing import HEADER, encode_frame
from sandbox.guards import GlobalsFactory, Guards, Printer, scrub
from sandbox.limits import PER_EXECUTION_FIELDS, Limits
from sandbox.policy import FILENAME, compile_dialplan
from sandbox.results import CompileError, LimitKind, Outcome

logger = logging.getLogger(__name__)

_WAIT = "wait"
_PREEMPT = "preempt"
_HEARTBEAT_SECONDS = 0.5
_MAX_MESSAGE = 1024
_CACHE_SIZE = 512
# Every lazy import a dialplan can cause must happen here: once the worker is confined
# it cannot open a file.  The fullwidth identifier makes the parser import unicodedata
# (it normalises identifiers with NFKC).
_WARM_UP = """
ｗ = "é".upper()
x = [i * 2 for i in range(3)]
sys.Log("%s %d %r" % ("a", 1, x) + f"{x!r:>5}" + "b".ljust(3) + ",".join(["c"]))
m = re.search(r"(\\d+)", "ab12")
sys.Log(m.group(1) + str(req.URI) + req.Header.From.FromURI.ToString())
try:
    {}["k"]
except KeyError as e:
    pass
"""


class _Idle:
    """The guards' target while no execution runs (never charged in practice)."""

    __slots__ = ("limits", "alloc", "cpu_used", "slice_start")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.alloc = 0
        self.cpu_used = 0.0
        self.slice_start = time.process_time()


class Execution:
    """One running dialplan: its greenlet, budget, output and the facade's port."""

    __slots__ = (
        "id", "source", "request", "context", "limits", "greenlet", "cpu_used",
        "slice_start", "in_script", "in_host_call", "pending", "throw", "lines",
        "out_bytes", "out_over", "sys", "worker", "seq", "alloc",
    )

    def __init__(self, worker: Worker, message: Mapping[str, Any], limits: Limits) -> None:
        self.worker = worker
        self.id: int = message["id"]
        self.source: str = message["source"]
        self.request: Mapping[str, object] = message.get("request") or {}
        self.context: Mapping[str, object] = message.get("context") or {}
        self.limits = limits
        self.greenlet: greenlet.greenlet | None = None
        self.cpu_used = 0.0
        self.slice_start = 0.0
        self.in_script = False
        self.in_host_call = False
        self.pending: Reply | None = None
        self.throw: BaseException | None = None
        self.lines: list[str] = []
        self.out_bytes = 0
        self.out_over = False
        self.sys: Sys | None = None
        self.seq = 0
        self.alloc = 0

    # --- the facade's port ------------------------------------------------------

    def log(self, text: str) -> None:
        """One sys.Log/print call: cut long lines; past the total, end the execution."""
        limits = self.limits
        if self.out_over:
            raise LimitExceeded(LimitKind.OUTPUT)
        for line in text.split("\n") if "\n" in text else (text,):
            encoded = line.encode("utf-8", "replace")
            size = len(encoded)
            if size > limits.line_bytes:
                line = encoded[: limits.line_bytes].decode("utf-8", "ignore") + " [line cut]"
                size = limits.line_bytes
            self.out_bytes += size + 1
            if self.out_bytes > limits.output_bytes:
                self.out_over = True
                self.lines.append(
                    f"[output limit of {limits.output_bytes} bytes reached: execution ended]"
                )
                raise LimitExceeded(LimitKind.OUTPUT)
            self.lines.append(line)

    def call(self, name: str, args: list[object]) -> Reply:
        """Send a host call and park this greenlet until the reply (or a limit) comes."""
        worker = self.worker
        # No timer signal may preempt or raise between the frame and the park.
        self.in_host_call = True
        try:
            worker.stop_clock(self)
            worker.emit({"op": "call", "id": self.id, "name": name, "args": args, "log": self.take_lines()})
            reply = worker.main.switch(_WAIT)
        finally:
            self.in_host_call = False
        if self.cpu_used >= self.limits.cpu_seconds:
            raise LimitExceeded(LimitKind.CPU)
        if not isinstance(reply, Reply):
            raise Cancelled()
        return reply

    def take_lines(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


class ResidentSize:
    """This process's resident size now, read from ``/proc/self/statm`` through a file
    opened before the seccomp filter closes ``open``.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries the peak over ``fork`` and
    ``execve``, so a worker started by a server (or test run) already past the
    retirement size would report it from its first run and retire after every one.
    Where ``/proc`` is missing the peak is the only measure there is."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None
        self._page = os.sysconf("SC_PAGE_SIZE") if self._fd is not None else 0

    def bytes(self) -> int:
        if self._fd is not None:
            # statm: size resident shared text lib data dt, in pages.
            return int(os.pread(self._fd, 128, 0).split()[1]) * self._page
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Worker:
    """The scheduler: reads frames, runs greenlets in CPU-fair slices, writes frames."""

    def __init__(self, fd_in: int, fd_out: int, limits: Limits) -> None:
        self.fd_in = fd_in
        self.fd_out = fd_out
        self.limits = limits
        self.main = greenlet.getcurrent()
        self.executions: dict[int, Execution] = {}
        self.runq: list[tuple[float, int, Execution]] = []
        self.current: Execution | None = None
        self.outbox: list[bytes] = []
        self.last_write = time.monotonic()
        self.inbuf = bytearray()
        self.cache: dict[str, CodeType | list[CompileError]] = {}
        self.regex_cache = RegexCache()
        self.guards = Guards(_Idle(limits))
        self.globals = GlobalsFactory(self.guards, self._printer)
        self.limits_cache: tuple[dict[str, Any], Limits, Regex] | None = None
        self.counter = itertools.count()
        self.runs = 0
        self.retiring = False
        self.idle: list[greenlet.greenlet] = []
        self.resident = ResidentSize()

    # --- output -----------------------------------------------------------------

    def emit(self, message: dict[str, Any]) -> None:
        self.outbox.append(encode_frame(message))

    def flush(self) -> None:
        if not self.outbox:
            return
        data = b"".join(self.outbox)
        self.outbox.clear()
        view = memoryview(data)
        while view:
            written = os.write(self.fd_out, view)
            view = view[written:]
        self.last_write = time.monotonic()

    def retire(self, reason: str) -> None:
        if not self.retiring:
            self.retiring = True
            self.emit({"op": "retire", "reason": reason})

    # --- the CPU clock ------------------------------------------------------------

    def start_clock(self, exe: Execution) -> None:
        self.current = exe
        self.guards.current = exe
        exe.slice_start = time.process_time()
        remaining = exe.limits.cpu_seconds - exe.cpu_used
        first = max(min(self.limits.quantum_seconds, remaining), 0.0005)
        # An interval timer, not a one-shot: if one tick is lost (the handler could
        # not even be called, e.g. one frame below the recursion limit), the next
        # one still comes.
        signal.setitimer(signal.ITIMER_PROF, first, self.limits.quantum_seconds)

    def stop_clock(self, exe: Execution) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0)
        if self.current is exe:
            exe.cpu_used += time.process_time() - exe.slice_start
            self.current = None

    def on_timer(self, signum: int, frame: FrameType | None) -> None:
        # Deliberately flat: only C functions are called here, so the handler works
        # even when the script sits one frame below the recursion limit.
        exe = self.current
        if exe is None or not exe.in_script or exe.in_host_call:
            return
        now = time.process_time()
        if exe.cpu_used + (now - exe.slice_start) >= exe.limits.cpu_seconds:
            # Sticky: keep firing so that nothing the script does can outlive it.
            signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)
            raise LimitExceeded(LimitKind.CPU)
        if (
            self.runq
            or select.select([self.fd_in], [], [], 0)[0]
            or time.monotonic() - self.last_write > _HEARTBEAT_SECONDS
        ):
            signal.setitimer(signal.ITIMER_PROF, 0)
            exe.cpu_used += now - exe.slice_start
            self.current = None
            self.main.switch(_PREEMPT)

    # --- input ----------------------------------------------------------------------

    def pump(self, block: bool) -> bool:
        """Read and handle whatever frames are available; False on EOF."""
        timeout = None if block else 0.0
        readable, _, _ = select.select([self.fd_in], [], [], timeout)
        if not readable:
            return True
        data = os.read(self.fd_in, 1 << 20)
        if not data:
            return False
        self.inbuf += data
        buffer = self.inbuf
        start = 0
        while len(buffer) - start >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer, start)
            end = start + HEADER.size + length
            if len(buffer) < end:
                break
            self.handle(marshal.loads(bytes(buffer[start + HEADER.size : end])))
            start = end
        del buffer[:start]
        return True

    def handle(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "run":
            exe = Execution(self, message, self._limits(message["limits"]))
            self.executions[exe.id] = exe
            self.schedule(exe)
        elif op == "reply":
            exe_or_none = self.executions.get(message["id"])
            if exe_or_none is not None and exe_or_none.greenlet is not None:
                exe_or_none.pending = Reply(
                    value=message.get("value"),
                    failure_status=message.get("failure_status"),
                    failure_reason=message.get("failure_reason"),
                )
                if message.get("end"):
                    exe_or_none.throw = EndScript()
                elif message.get("error") is not None:
                    exe_or_none.throw = ValueError(str(message["error"]))
                self.schedule(exe_or_none)
        elif op == "cancel":
            exe_or_none = self.executions.get(message["id"])
            if exe_or_none is not None:
                reason = message.get("reason")
                exe_or_none.throw = (
                    LimitExceeded(LimitKind.WALL) if reason == "wall" else Cancelled()
                )
                self.schedule(exe_or_none)
        elif op == "compile":
            result = self.compiled(message["source"], message.get("source_bytes", 65536))
            errors = result if isinstance(result, list) else []
            self.emit(
                {
                    "op": "compiled",
                    "id": message["id"],
                    "errors": [[e.line, e.column, e.message] for e in errors],
                }
            )

    def _limits(self, values: dict[str, Any]) -> Limits:
        cached = self.limits_cache
        if cached is not None and cached[0] == values:
            return cached[1]
        limits = self.limits.replace(**{k: values[k] for k in PER_EXECUTION_FIELDS if k in values})
        self.limits_cache = (values, limits, Regex(self.regex_cache, limits))
        return limits

    def _regex(self, limits: Limits) -> Regex:
        cached = self.limits_cache
        if cached is not None and cached[1] is limits:
            return cached[2]
        return Regex(self.regex_cache, limits)

    def _printer(self, _getattr: object) -> Printer:
        # RestrictedPython calls _print_(_getattr_) where a scope uses print().
        current = self.guards.current
        assert isinstance(current, Execution)
        return Printer(current.log)

    def schedule(self, exe: Execution) -> None:
        # Throws (limits, cancellations, host ends) jump the queue; otherwise the
        # execution that has used the least CPU goes first.
        key = -1.0 if exe.throw is not None else exe.cpu_used
        exe.seq = next(self.counter)
        heapq.heappush(self.runq, (key, exe.seq, exe))

    def compiled(self, source: str, source_bytes: int) -> CodeType | list[CompileError]:
        found = self.cache.get(source)
        if found is None:
            result = compile_dialplan(source, source_bytes=source_bytes)
            found = result if isinstance(result, list) else result.code
            if len(self.cache) >= _CACHE_SIZE:
                self.cache.pop(next(iter(self.cache)))
            self.cache[source] = found
        return found

    # --- running ---------------------------------------------------------------------

    def serve(self) -> None:
        self.emit({"op": "ready", "pid": os.getpid()})
        self.flush()
        while True:
            if not self.pump(block=not self.runq and not self.outbox):
                return
            if self.runq:
                _, seq, exe = heapq.heappop(self.runq)
                if exe.seq == seq and exe.id in self.executions:
                    self.run_slice(exe)
                if self.runq and time.monotonic() - self.last_write > _HEARTBEAT_SECONDS:
                    self.emit({"op": "tick"})
            self.flush()

    def run_slice(self, exe: Execution) -> None:
        throw, exe.throw = exe.throw, None
        reply, exe.pending = exe.pending, None
        self.start_clock(exe)
        try:
            if exe.greenlet is None:
                if throw is not None:
                    # Ended before it ever ran (cancelled or out of wall time in the queue).
                    outcome: Any = self.done_message(exe, throw)
                else:
                    # Greenlets are reused: creating one costs ~13 us, switching ~1 us.
                    exe.greenlet = (
                        self.idle.pop()
                        if self.idle
                        else greenlet.greenlet(self._greenlet_body, parent=self.main)
                    )
                    outcome = exe.greenlet.switch(exe)
            elif throw is not None:
                outcome = exe.greenlet.throw(throw)
            else:
                outcome = exe.greenlet.switch(reply)
        finally:
            self.stop_clock(exe)
        if outcome == _PREEMPT:
            self.schedule(exe)
            if exe.lines:
                self.emit({"op": "log", "id": exe.id, "lines": exe.take_lines()})
        elif outcome == _WAIT:
            pass
        else:
            del self.executions[exe.id]
            if exe.greenlet is not None and not exe.greenlet.dead and len(self.idle) < 64:
                self.idle.append(exe.greenlet)
            exe.greenlet = None
            self.emit(outcome)
            self.runs += 1
            if self.runs >= self.limits.worker_max_runs:
                self.retire("max runs")
            elif self.resident.bytes() > self.limits.worker_retire_rss_bytes:
                self.retire("resident size")

    def _greenlet_body(self, exe: Execution) -> None:
        while True:
            result = self.run_script(exe)
            exe = self.main.switch(result)

    def run_script(self, exe: Execution) -> dict[str, Any]:
        code = self.compiled(exe.source, exe.limits.source_bytes)
        if isinstance(code, list):
            return self.done_message(exe, None, compile_errors=code)
        sys_facade = Sys(exe, exe.context)
        exe.sys = sys_facade
        namespace = self.globals.build(
            {"sys": sys_facade, "req": Request(exe.request), "re": self._regex(exe.limits)}
        )
        exe.in_script = True
        # The except clause below must stay free of calls: a timer signal is only
        # handled at calls and backward jumps, so in_script is cleared before any
        # late limit can be raised outside the script.
        try:
            exec(code, namespace)
        except BaseException as exc:  # noqa: B036 - the runner is the error boundary
            exe.in_script = False
            error: BaseException | None = exc
        else:
            exe.in_script = False
            error = None
        signal.setitimer(signal.ITIMER_PROF, 0)
        return self.done_message(exe, error)

    def done_message(
        self,
        exe: Execution,
        error: BaseException | None,
        compile_errors: list[CompileError] | None = None,
    ) -> dict[str, Any]:
        limit: LimitKind | None = None
        info: dict[str, Any] | None = None
        if compile_errors:
            outcome = Outcome.COMPILE_ERROR
            first = compile_errors[0]
            info = {"type": "CompileError", "message": first.message, "line": first.line}
        elif error is None:
            outcome = Outcome.COMPLETED
        elif isinstance(error, LimitExceeded):
            outcome, limit = Outcome.LIMIT_EXCEEDED, error.kind
        elif isinstance(error, EndScript | Cancelled | greenlet.GreenletExit):
            outcome = Outcome.ENDED_BY_HOST
        elif isinstance(error, MemoryError):
            # The heap cap was reached: the guards missed an estimate.  The process
            # is suspect from here on, so it finishes what it holds and retires.
            outcome, limit = Outcome.LIMIT_EXCEEDED, LimitKind.MEMORY
            self.retire("memory")
        elif isinstance(error, ScriptControl):
            outcome = Outcome.ENDED_BY_HOST
        else:
            outcome = Outcome.RUNTIME_ERROR
            info = {
                "type": _error_type(error),
                "message": _error_message(error),
                "line": _script_line(error.__traceback__),
            }
        return {
            "op": "done",
            "id": exe.id,
            "outcome": outcome.value,
            "error": info,
            "limit": None if limit is None else limit.value,
            "trace": exe.sys.trace_enabled() if exe.sys is not None else True,
            # Never negative: the host refuses a negative figure as a malformed frame,
            # and the process CPU clock is not promised to be monotonic to the
            # microsecond.  (Clamped here, on the worker's own shallow stack: the clock
            # code also runs one frame below a script's recursion limit, where even a
            # comparison through max() raises RecursionError.)
            "cpu": round(
                max(
                    exe.cpu_used
                    + (time.process_time() - exe.slice_start if self.current is exe else 0.0),
                    0.0,
                ),
                6,
            ),
            "log": exe.take_lines(),
            "compile_errors": [[e.line, e.column, e.message] for e in compile_errors or ()],
        }


def _error_type(error: BaseException) -> str:
    name = type(error).__name__
    return name if type(error).__module__ == "builtins" else "Error"


def _error_message(error: BaseException) -> str:
    try:
        text = str(error)
    except Exception:  # an exception whose str() fails still needs a message
        text = "error"
    return scrub(text)[:_MAX_MESSAGE]


def _script_line(tb: TracebackType | None) -> int | None:
    """The line of the innermost dialplan frame: host frames are never reported."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# --- process start-up ------------------------------------------------------------------


def _raise_stack_and_reexec(limits: Limits) -> None:
    """Give the main thread a big stack; the kernel only honours it from exec on."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    wanted = limits.stack_bytes
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted and "--stack-set" not in sys.argv:
        resource.setrlimit(resource.RLIMIT_STACK, (wanted, hard))
        os.execv(sys.executable, [sys.executable, "-m", "sandbox.worker", *sys.argv[1:], "--stack-set"])


def _confine(limits: Limits) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_DATA, (limits.memory_bytes, limits.memory_bytes))
    # Last: from here on the process opens nothing, forks nothing, reaches no one.
    try:
        seccomp.install()
    except OSError as exc:
        # A kernel without seccomp (or a container forbidding it) leaves the policy and
        # the rlimits as the walls; say so where the operator looks.
        sys.stderr.write(f"dialspell sandbox worker {os.getpid()}: no seccomp filter: {exc}\n")


def _warm_up(worker: Worker) -> None:
    """Run a dialplan once so every lazy import happens before the rlimits close."""
    exe = Execution(
        worker,
        {"id": 0, "source": _WARM_UP, "request": {"URI": {"User": "1"}}, "context": {}},
        worker.limits,
    )
    worker.guards.current = exe
    worker.run_script(exe)
    worker.outbox.clear()


def main() -> None:
    config = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    limits = Limits().replace(**config)
    _raise_stack_and_reexec(limits)
    fd_in, fd_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Below the server in the OS's eyes: a worker full of spinning scripts must not
    # delay the trio process that answers SIP (measured in docs/sandbox.md).
    os.nice(limits.worker_nice)
    sys.setrecursionlimit(limits.recursion_limit)
    worker = Worker(fd_in, fd_out, limits)
    signal.signal(signal.SIGPROF, worker.on_timer)
    _warm_up(worker)
    gc.collect()
    gc.freeze()
    _confine(limits)
    try:
        worker.serve()
    except BrokenPipeError:
        pass
    # Parked greenlets are simply dropped: os._exit skips their unwinding.
    os._exit(0)


if __name__ == "__main__":
    main()
