"""Every limit of the sandbox, in one frozen object.

A :class:`Limits` is handed to :class:`sandbox.SandboxPool` (the worker-wide limits come
from that one) and may be overridden per execution in ``pool.run(..., limits=...)`` (only
the per-execution fields are taken from an override; they travel with the ``run`` frame).
Nothing in the sandbox reads a limit from anywhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """The limits of one execution and of the worker processes that run it."""

    # --- per execution (may differ per customer) ---
    cpu_seconds: float = 1.0
    """CPU time of one execution, across all the slices it runs in."""
    wall_seconds: float = 10.0
    """Wall time before the first blocking call; Dial and friends push it out."""
    absolute_wall_seconds: float = 300.0
    """No extension can push the wall deadline past start + this."""
    dial_extension_seconds: float = 70.0
    """Dial / GoogleVoiceCall / HttpCallback set the deadline to now + wait + this."""
    line_bytes: int = 1024
    """One log or print line, UTF-8 encoded; longer lines are cut."""
    output_bytes: int = 16384
    """All log and print output of one execution; past it the execution ends."""
    max_legs: int = 20
    max_callbacks: int = 3
    max_emails: int = 3
    source_bytes: int = 65536
    """A dialplan larger than this (UTF-8) is refused before it is parsed."""
    value_bytes: int = 4 * MIB
    """The largest str/list/tuple one guarded operation may produce (chars or items)."""
    alloc_bytes: int = 64 * MIB
    """What all guarded operations of one execution may produce together."""
    int_bits: int = 65536
    """The largest integer an arithmetic operation may produce."""
    format_width: int = 1024
    """The largest width or precision in a format spec, %-format or f-string."""
    regex_pattern_chars: int = 256
    regex_subject_chars: int = 4096
    arg_chars: int = 4096
    """The longest string any sys method accepts (tighter per-argument caps apply)."""

    # --- per worker process (taken from the pool's Limits only) ---
    memory_bytes: int = 512 * MIB
    """RLIMIT_DATA of a worker: heap and anonymous mappings, not the stack."""
    stack_bytes: int = 1024 * MIB
    """RLIMIT_STACK of a worker, set before it execs (see docs/sandbox.md: gh-154318)."""
    recursion_limit: int = 300
    open_files: int = 16
    """RLIMIT_NOFILE once the worker has started."""
    quantum_seconds: float = 0.002
    """CPU slice after which a running execution yields to waiting ones."""
    worker_max_active: int = 2000
    """Executions one worker holds at once (most of them parked in a host call)."""
    worker_max_runs: int = 50000
    """A worker retires (gracefully) after this many executions."""
    worker_retire_rss_bytes: int = 256 * MIB
    """A worker whose resident size passes this retires once idle of new work."""
    worker_nice: int = 5
    """Niceness added to worker processes (the server stays more urgent than scripts)."""
    stall_seconds: float = 3.0
    """A worker with runnable work that says nothing for this long is killed."""
    spawn_timeout_seconds: float = 20.0

    def per_execution(self) -> dict[str, float | int]:
        """The per-execution fields, as plain data for the ``run`` frame."""
        return {name: getattr(self, name) for name in PER_EXECUTION_FIELDS}

    def replace(self, **changes: float | int) -> Limits:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


PER_EXECUTION_FIELDS: tuple[str, ...] = (
    "cpu_seconds",
    "line_bytes",
    "output_bytes",
    "max_legs",
    "max_callbacks",
    "max_emails",
    "value_bytes",
    "alloc_bytes",
    "int_bits",
    "format_width",
    "regex_pattern_chars",
    "regex_subject_chars",
    "arg_chars",
    "source_bytes",
)

WORKER_FIELDS: tuple[str, ...] = (
    "memory_bytes",
    "stack_bytes",
    "recursion_limit",
    "open_files",
    "quantum_seconds",
    "worker_max_runs",
    "worker_retire_rss_bytes",
    "worker_nice",
)
