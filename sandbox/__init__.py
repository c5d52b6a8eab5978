"""Run untrusted dialplans: restricted Python in worker processes, with limits.

The engine uses exactly this surface::

    async with SandboxPool(workers=2, limits=Limits()) as pool:
        errors = await pool.compile_errors(source)          # [] when it compiles
        result = await pool.run(source, request=..., context=..., host=host)

``host`` implements :class:`Host` (the host side of ``sys``); ``request`` and
``context`` are plain data (docs/sandbox.md lists their keys).  The result is an
:class:`ExecutionResult` whose ``outcome`` is an :class:`Outcome`; a script's failure
is never an exception here.  The package knows nothing of SIP and imports nothing of
``engine`` or ``sip``.

Exceptions raised to the caller::

    SandboxError                 base of everything below
    ├── PoolClosedError          run()/compile_errors() on a pool that is not running
    ├── WorkerStartError         a worker could not start (from __aenter__)
    └── WorkerProtocolError      internal: a worker sent garbage (it is killed; the
                                 executions it held end as ``crashed``)

Errors in the host's own code (``Host.call`` raising, an invalid ``HostReply``)
propagate out of ``run()`` unchanged after the execution has been stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandbox.errors import (
    PoolClosedError,
    SandboxError,
    WorkerProtocolError,
    WorkerStartError,
)
from sandbox.limits import Limits
from sandbox.results import (
    CompileError,
    ErrorInfo,
    ExecutionResult,
    Host,
    HostReply,
    LimitKind,
    Outcome,
    PlainValue,
)

__all__ = [
    "CompileError",
    "ErrorInfo",
    "ExecutionResult",
    "Host",
    "HostReply",
    "LimitKind",
    "Limits",
    "Outcome",
    "PlainValue",
    "PoolClosedError",
    "SandboxError",
    "SandboxPool",
    "WorkerProtocolError",
    "WorkerStartError",
]

if TYPE_CHECKING:
    from sandbox.pool import SandboxPool


def __getattr__(name: str) -> object:
    # The pool (and trio with it) is imported on first use only: worker processes
    # import this package too, and must start fast and small.
    if name == "SandboxPool":
        from sandbox.pool import SandboxPool

        return SandboxPool
    raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
