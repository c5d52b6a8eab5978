"""The exceptions that end a script from the inside (worker side only).

They derive from BaseException and none of their bases is reachable from a dialplan
(BaseException, SystemExit, KeyboardInterrupt and GeneratorExit are not builtins there,
bare ``except:`` and ``finally:`` are refused at compile time), so once raised they
travel through every script frame to the worker's runner.  They are also *sticky*: the
execution records the first one, and every later guard call or timer tick raises it
again, so even a path we did not foresee cannot outlive a limit.
"""

from __future__ import annotations

from sandbox.results import LimitKind


class ScriptControl(BaseException):
    """Base of the exceptions that stop a script; never visible to it by name."""


class LimitExceeded(ScriptControl):
    """A limit was hit: the execution ends with ``limit_exceeded: <kind>``.

    No Python-level ``__init__``: the timer handler may raise it one frame below the
    recursion limit, where calling any Python function would itself fail.
    """

    @property
    def kind(self) -> LimitKind:
        return LimitKind(self.args[0])


class EndScript(ScriptControl):
    """The host ended the script (Dial answered, Respond >= 300 ...)."""


class Cancelled(ScriptControl):
    """The caller went away (the trio task awaiting run() was cancelled)."""
