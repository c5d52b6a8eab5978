"""Frames between the pool and its workers, and the one door for worker output.

A frame is a 4-byte big-endian length followed by that many bytes of payload.  Worker ->
pool frames are UTF-8 JSON (an object).  JSON, not pickle or marshal: a worker runs
hostile code, so everything it says is untrusted, and unpickling would hand it the
parent (``marshal`` is documented as unsafe on crafted data too).  Pool -> worker
frames are trusted and written with ``marshal`` (a dict of plain values, read by the
same interpreter binary): seven times cheaper than JSON for the request snapshot each
run carries, on the server's busiest thread.  Worker -> pool frames enter through
:func:`parse_worker_frame_untrusted`, which either returns a validated frame object or
raises :class:`~sandbox.errors.WorkerProtocolError` and nothing else (a hypothesis test
holds it to that).  Sizes are part of the contract: a frame longer than
``MAX_WORKER_FRAME`` is refused before it is buffered.
"""

from __future__ import annotations

import json
import marshal
import math
import struct
from dataclasses import dataclass

from sandbox.errors import WorkerProtocolError
from sandbox.results import CompileError, ErrorInfo, LimitKind, Outcome, PlainValue

HEADER = struct.Struct(">I")
MAX_WORKER_FRAME = 256 * 1024
"""Worker -> pool.  A call's arguments are a few KB; a log batch is at most 16 KiB."""

MAX_POOL_FRAME = 16 * 1024 * 1024
"""Pool -> worker (a 64 KiB source plus the request snapshot fit with room)."""

MAX_PLAIN_DEPTH = 6
MAX_PLAIN_NODES = 4096
MAX_LOG_LINES_PER_FRAME = 20000
"""16 KiB of output can be 16 Ki one-byte lines (each costs its newline)."""
MAX_ERROR_MESSAGE = 2048
MAX_COMPILE_ERRORS = 100

CALL_NAMES: frozenset[str] = frozenset(
    {
        "Dial",
        "Respond",
        "Callback",
        "GoogleVoiceCall",
        "HttpCallback",
        "ExtendScriptTimeout",
        "SetCustomSIPHeader",
        "RemoveCustomSIPHeader",
        "ClearCustomSIPHeaders",
        "SetFromHeader",
        "ClearFromHeader",
        "DBWrite",
        "DBRead",
        "DBDelete",
        "DBGetKeys",
        "WebGet",
        "Email",
        "IsAvailable",
        "IsMine",
        "DoesSIPAccountExist",
        "GetBindings",
        "GetCurrentCallCount",
    }
)
"""Every sys method that needs the host.  A worker asking for anything else is broken."""


# Built once: json.dumps/json.loads given options build a new encoder/decoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode_frame(message: dict[str, object]) -> bytes:
    """One frame: length prefix + compact JSON."""
    body = _ENCODER.encode(message).encode()
    return HEADER.pack(len(body)) + body


def encode_pool_frame(message: dict[str, object]) -> bytes:
    """One pool -> worker frame: length prefix + ``marshal`` (trusted, read by the same
    interpreter: the worker is started with ``sys.executable``)."""
    body = marshal.dumps(message)
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Splits a byte stream into frame payloads; refuses oversized lengths at once."""

    __slots__ = ("_buffer", "_max")

    def __init__(self, max_frame: int) -> None:
        self._buffer = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer, start)
            if length > self._max:
                raise WorkerProtocolError(f"frame of {length} bytes exceeds {self._max}")
            end = start + HEADER.size + length
            if len(buffer) < end:
                break
            frames.append(bytes(buffer[start + HEADER.size : end]))
            start = end
        if start:
            del buffer[:start]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buffer)


# --- validated worker frames -------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadyFrame:
    pid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TickFrame:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class RetireFrame:
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LogFrame:
    id: int
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CallFrame:
    id: int
    name: str
    args: tuple[PlainValue, ...]
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DoneFrame:
    id: int
    outcome: Outcome
    error: ErrorInfo | None
    limit: LimitKind | None
    trace: bool
    cpu: float
    lines: tuple[str, ...]
    compile_errors: tuple[CompileError, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledFrame:
    id: int
    errors: tuple[CompileError, ...]


WorkerFrame = (
    ReadyFrame | TickFrame | RetireFrame | LogFrame | CallFrame | DoneFrame | CompiledFrame
)


def _reject_constant(name: str) -> object:
    raise ValueError(f"non-finite number {name}")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_worker_frame_untrusted(payload: bytes) -> WorkerFrame:
    """Decode and validate one frame from a worker; raise only WorkerProtocolError."""
    try:
        message = _DECODER.decode(payload.decode("utf-8"))
    except (ValueError, RecursionError, MemoryError) as exc:
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; a deeply nested
        # document is a RecursionError in the C scanner.
        raise WorkerProtocolError("frame is not JSON") from exc
    if type(message) is not dict:
        raise WorkerProtocolError("frame is not an object")
    try:
        return _validate(message)
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise WorkerProtocolError(f"malformed frame: {exc}") from exc


def _validate(message: dict[str, object]) -> WorkerFrame:
    op = message["op"]
    if op == "tick":
        return TickFrame()
    if op == "log":
        return LogFrame(id=_int(message["id"]), lines=_lines(message["lines"]))
    if op == "call":
        name = _str(message["name"], 64)
        if name not in CALL_NAMES:
            raise ValueError(f"unknown call {name!r}")
        args = message["args"]
        if type(args) is not list or len(args) > 16:
            raise ValueError("bad args")
        counter = [0]
        for arg in args:
            _check_plain(arg, 0, counter)
        return CallFrame(
            id=_int(message["id"]),
            name=name,
            args=tuple(args),
            lines=_lines(message.get("log", [])),
        )
    if op == "done":
        error = message.get("error")
        limit = message.get("limit")
        cpu = message.get("cpu", 0.0)
        if not isinstance(cpu, int | float) or type(cpu) is bool:
            raise ValueError(f"bad cpu ({type(cpu).__name__})")
        if not math.isfinite(cpu) or cpu < 0:
            raise ValueError(f"bad cpu ({cpu!r})")
        trace = message.get("trace", True)
        if type(trace) is not bool:
            raise ValueError("bad trace")
        return DoneFrame(
            id=_int(message["id"]),
            outcome=Outcome(_str(message["outcome"], 32)),
            error=None if error is None else _error(error),
            limit=None if limit is None else LimitKind(_str(limit, 32)),
            trace=trace,
            cpu=float(cpu),
            lines=_lines(message.get("log", [])),
            compile_errors=_compile_errors(message.get("compile_errors", [])),
        )
    if op == "compiled":
        return CompiledFrame(
            id=_int(message["id"]), errors=_compile_errors(message["errors"])
        )
    if op == "ready":
        return ReadyFrame(pid=_int(message["pid"]))
    if op == "retire":
        return RetireFrame(reason=_str(message["reason"], 200))
    raise ValueError(f"unknown op {op!r}")


def _int(value: object) -> int:
    if type(value) is not int or not 0 <= value < 2**53:
        raise ValueError("bad integer")
    return value


def _str(value: object, limit: int) -> str:
    if type(value) is not str or len(value) > limit:
        raise ValueError("bad string")
    return value


def _lines(value: object) -> tuple[str, ...]:
    if type(value) is not list or len(value) > MAX_LOG_LINES_PER_FRAME:
        raise ValueError("bad log lines")
    for line in value:
        if type(line) is not str:
            raise ValueError("bad log line")
    return tuple(value)


def _error(value: object) -> ErrorInfo:
    if type(value) is not dict:
        raise ValueError("bad error")
    line = value.get("line")
    if line is not None:
        line = _int(line)
    return ErrorInfo(
        type=_str(value["type"], 64),
        message=_str(value["message"], MAX_ERROR_MESSAGE),
        line=line,
    )


def _compile_errors(value: object) -> tuple[CompileError, ...]:
    if type(value) is not list or len(value) > MAX_COMPILE_ERRORS:
        raise ValueError("bad compile errors")
    errors = []
    for item in value:
        if type(item) is not list or len(item) != 3:
            raise ValueError("bad compile error")
        errors.append(
            CompileError(
                line=_int(item[0]), column=_int(item[1]), message=_str(item[2], 1024)
            )
        )
    return tuple(errors)


def _check_plain(value: object, depth: int, counter: list[int]) -> None:
    """Exact plain types only, bounded depth and size (no subclass ever passes)."""
    counter[0] += 1
    if counter[0] > MAX_PLAIN_NODES or depth > MAX_PLAIN_DEPTH:
        raise ValueError("argument too large or too deep")
    kind = type(value)
    if kind in (str, int, bool) or value is None:
        return
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise ValueError("non-finite float")
        return
    if kind is list:
        for item in value:  # type: ignore[attr-defined]
            _check_plain(item, depth + 1, counter)
        return
    if kind is dict:
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                raise ValueError("non-str key")
            _check_plain(item, depth + 1, counter)
        return
    raise ValueError(f"not plain data: {kind.__name__}")


def check_plain_value(value: object) -> None:
    """Raise ValueError unless ``value`` is plain, bounded data (used for host replies)."""
    _check_plain(value, 0, [0])
