"""The data that crosses the sandbox boundary: results, host replies, the Host protocol."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

PlainValue: TypeAlias = (
    "str | int | float | bool | None | Sequence[PlainValue] | Mapping[str, PlainValue]"
)
"""What may cross the process boundary: JSON-shaped data and nothing else."""


class Outcome(enum.StrEnum):
    """How one execution ended."""

    COMPLETED = "completed"
    """The script ran to its end (or returned)."""
    ENDED_BY_HOST = "ended_by_host"
    """A host reply ended it (Dial answered, Respond >= 300, a callback bridged)."""
    COMPILE_ERROR = "compile_error"
    RUNTIME_ERROR = "runtime_error"
    """An exception escaped the script: ``error`` says which, where."""
    LIMIT_EXCEEDED = "limit_exceeded"
    """A limit ended it: ``limit`` says which."""
    CRASHED = "crashed"
    """The worker died or had to be killed while holding this execution."""


class LimitKind(enum.StrEnum):
    """Which limit ended an execution."""

    CPU = "cpu"
    WALL = "wall"
    MEMORY = "memory"
    OUTPUT = "output"


@dataclass(frozen=True, slots=True, kw_only=True)
class CompileError:
    """One reason a dialplan does not compile, at a 1-based line and column."""

    line: int
    column: int
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorInfo:
    """What the author is told about an error: no host paths, no addresses."""

    type: str
    message: str
    line: int | None

    def as_dict(self) -> dict[str, str | int | None]:
        return {"type": self.type, "message": self.message, "line": self.line}


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionResult:
    """The end of one execution, as the engine sees it."""

    outcome: Outcome
    error: ErrorInfo | None = None
    limit: LimitKind | None = None
    log: tuple[str, ...] = ()
    """Every line the author sees (sys.Log and print), capped and sanitised."""
    trace_enabled: bool = True
    """``sys.Trace`` as the script left it."""
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    compile_errors: tuple[CompileError, ...] = field(default=())


@dataclass(frozen=True, slots=True, kw_only=True)
class HostReply:
    """The host's answer to one facade call.

    ``value`` goes back to the script (plain data only).  ``end`` ends the script at
    once (a successful Dial bridged the call; Respond >= 300 rejected it); nothing the
    script wrote after that call runs.  ``error`` raises a ``ValueError`` with that
    message in the script.  ``failure_status``/``failure_reason`` update
    ``sys.LastFailureStatus``/``sys.LastFailureReason`` (Dial's failures).
    """

    value: PlainValue = None
    end: bool = False
    error: str | None = None
    failure_status: int | None = None
    failure_reason: str | None = None


class Host(Protocol):
    """The host side of ``sys``: what the engine implements for one execution.

    ``call`` is awaited for every facade method that needs the host (Dial, Respond, DB*,
    WebGet, Email, IsAvailable, GetBindings, ...); its arguments have already been
    type-, length- and character-checked in the worker and are plain values.
    ``log`` receives the author's output lines as they arrive (batched; no round trip).
    """

    async def call(self, name: str, args: tuple[PlainValue, ...]) -> HostReply: ...

    def log(self, line: str) -> None: ...
