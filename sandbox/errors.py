"""The sandbox's exception tree (drawn in ``sandbox/__init__.py``).

Script failures are never exceptions on the host side: they are an
:class:`~sandbox.results.ExecutionResult`.  These are the host's own errors.
"""

from __future__ import annotations


class SandboxError(Exception):
    """Base of every error the sandbox raises to its caller."""


class PoolClosedError(SandboxError):
    """The pool is not running (not entered yet, or already closed)."""


class WorkerStartError(SandboxError):
    """A worker process could not be started or did not report ready in time."""


class WorkerProtocolError(SandboxError):
    """A worker sent something that is not a valid frame.

    Internal: the pool kills that worker and ends its executions as ``crashed``;
    this error never reaches ``run()``'s caller.
    """
