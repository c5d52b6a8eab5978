"""Run-time guards called by compiled dialplans, and the fresh globals of an execution.

The compiler turns ``a.b`` into ``_getattr_(a, "b")``, ``a[b]`` into ``_getitem_``,
writes into ``_write_(a)``, ``x += y`` into ``_inplacevar_``, ``+ * ** << %`` into
``_add_`` ... and f-string fields into ``_format_``.  This module supplies them, bound to
one execution's :class:`Guards` (its allocation budget).  The guards estimate the size
of a result *before* computing it and raise the uncatchable
``LimitExceeded(memory)`` when it would not fit: RLIMIT_DATA on the worker is only the
backstop, because after a MemoryError nothing in the process is trustworthy.
"""

from __future__ import annotations

import operator
import re as stdlib_re
from collections.abc import Callable, Iterable
from time import process_time
from types import MappingProxyType
from typing import Any, NoReturn, Protocol

from sandbox.control import LimitExceeded
from sandbox.facade import Sys
from sandbox.limits import Limits
from sandbox.results import LimitKind
from sandbox.tables import (
    ATTRIBUTES,
    BUILTIN_FUNCTIONS,
    BUILTIN_TYPES,
    EXCEPTION_ATTRIBUTES,
    EXCEPTION_NAMES,
    SIZE_GUARDED_METHODS,
)

_ADDRESS = stdlib_re.compile(r" at 0x[0-9a-fA-F]+")
_PERCENT = stdlib_re.compile(
    r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", stdlib_re.DOTALL
)
_SPEC = stdlib_re.compile(
    r"(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)[_,]?(?:\.(\d+))?[bcdeEfFgGnosxX%]?", stdlib_re.DOTALL
)
_SEQUENCES = (str, list, tuple, bytes)
_UNIT: dict[type, int] = {str: 1, bytes: 1, list: 8, tuple: 8}
_INPLACE: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd,
    "-=": operator.isub,
    "*=": operator.imul,
    "/=": operator.itruediv,
    "//=": operator.ifloordiv,
    "%=": operator.imod,
    "**=": operator.ipow,
    "<<=": operator.ilshift,
    ">>=": operator.irshift,
    "&=": operator.iand,
    "|=": operator.ior,
    "^=": operator.ixor,
}


def scrub(text: str) -> str:
    """Drop CPython's ``at 0x...`` from default reprs (functions, iterators...)."""
    return _ADDRESS.sub("", text) if " at 0x" in text else text


def _kind(value: object) -> str:
    return type(value).__name__


class SafeBuiltin:
    """A builtin replaced by a checked version; its repr looks like any builtin's."""

    __slots__ = ("_name", "_function")
    _name: str
    _function: Callable[..., Any]

    def __init__(self, name: str, function: Callable[..., Any]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_function", function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._function(*args, **kwargs)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise TypeError(f"{self._name} is read-only")

    def __repr__(self) -> str:
        return f"<built-in function {self._name}>"


class GuardedMethod:
    """A size-producing ``str``/``list`` method, checked before it runs."""

    __slots__ = ("_guards", "_target", "_name")
    _guards: Guards
    _target: Any
    _name: str

    def __init__(self, guards: Guards, target: object, name: str) -> None:
        object.__setattr__(self, "_guards", guards)
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_name", name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._guards.call_sized(self._target, self._name, args, kwargs)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise TypeError("methods are read-only")

    def __repr__(self) -> str:
        return f"<built-in method {self._name} of {_kind(self._target)} object>"


def _safe_repr(value: object) -> str:
    return scrub(repr(value))


def _safe_round(number: Any, ndigits: Any = None) -> Any:
    # int.__round__ with a huge negative ndigits computes 10**-ndigits first.
    if ndigits is not None and type(ndigits) is int and not -400 <= ndigits <= 400:
        raise ValueError("round(): ndigits must be between -400 and 400")
    return round(number, ndigits)


def _base_builtins() -> dict[str, Any]:
    import builtins

    table: dict[str, Any] = {}
    for name in BUILTIN_TYPES | BUILTIN_FUNCTIONS | EXCEPTION_NAMES:
        table[name] = getattr(builtins, name)
    table["repr"] = SafeBuiltin("repr", _safe_repr)
    table["round"] = SafeBuiltin("round", _safe_round)
    table["True"] = True
    table["False"] = False
    table["None"] = None
    return table


class Printer:
    """What RestrictedPython's ``print`` support calls (``_print._call_print``)."""

    __slots__ = ("_log",)

    def __init__(self, log: Callable[[str], None]) -> None:
        self._log = log

    def _call_print(self, *objects: object, sep: object = " ", end: object = "\n", **_: object) -> None:
        separator = sep if type(sep) is str else " "
        self._log(separator.join(scrub(str(item)) for item in objects))

    def __call__(self) -> str:
        # ``printed`` (the collected output) is not offered: output goes to the log.
        return ""


class Budgeted(Protocol):
    """What the guards need of the running execution."""

    limits: Limits
    alloc: int
    cpu_used: float
    slice_start: float


class Guards:
    """The guard functions of one worker, charging the execution that is running.

    One instance serves every execution of a worker: the scheduler points ``current``
    at the execution it switches in, so building an execution's globals is one dict
    copy instead of a dozen bound methods.
    """

    __slots__ = ("current",)

    def __init__(self, current: Budgeted) -> None:
        self.current = current

    # --- budget -----------------------------------------------------------------

    def charge(self, size: int, what: str) -> None:
        current = self.current
        limits = current.limits
        if size > limits.value_bytes:
            raise LimitExceeded(LimitKind.MEMORY, f"{what} would need {size} bytes")
        current.alloc += size
        if current.alloc > limits.alloc_bytes:
            raise LimitExceeded(LimitKind.MEMORY, "the execution allocated too much")

    def check(self) -> None:
        """Called first in every except clause: a spent CPU budget ends the script.

        The timer handler cannot run one frame below the recursion limit; a script
        that spins there by catching RecursionError passes through an except clause
        on every round, and this check (plain C calls) stops it.
        """
        current = self.current
        if current.cpu_used + (process_time() - current.slice_start) >= current.limits.cpu_seconds:
            raise LimitExceeded(LimitKind.CPU)

    def _int_result(self, bits: int, what: str) -> None:
        if bits > self.current.limits.int_bits:
            raise LimitExceeded(LimitKind.MEMORY, f"{what} would be a {bits}-bit integer")

    # --- operators ----------------------------------------------------------------

    def _check_add(self, left: Any, right: Any) -> None:
        kind = type(left)
        if kind in _UNIT and type(right) is kind:
            self.charge((len(left) + len(right)) * _UNIT[kind], "+")

    def _check_mul(self, left: Any, right: Any) -> None:
        lk, rk = type(left), type(right)
        if (lk is int or lk is bool) and (rk is int or rk is bool):
            self._int_result(left.bit_length() + right.bit_length(), "*")
        elif lk in _UNIT and (rk is int or rk is bool):
            self.charge(len(left) * max(right, 0) * _UNIT[lk], "*")
        elif rk in _UNIT and (lk is int or lk is bool):
            self.charge(len(right) * max(left, 0) * _UNIT[rk], "*")

    def add(self, left: Any, right: Any) -> Any:
        if type(left) is not int:
            self._check_add(left, right)
        return left + right

    def mul(self, left: Any, right: Any) -> Any:
        self._check_mul(left, right)
        return left * right

    def pow(self, base: Any, exponent: Any) -> Any:
        bk, ek = type(base), type(exponent)
        if (bk is int or bk is bool) and (ek is int or ek is bool) and exponent > 0:
            if base not in (0, 1, -1):
                self._int_result(base.bit_length() * exponent, "**")
        return base**exponent

    def lshift(self, value: Any, count: Any) -> Any:
        if type(value) in (int, bool) and type(count) in (int, bool) and value and count > 0:
            self._int_result(value.bit_length() + count, "<<")
        return value << count

    def mod(self, template: Any, values: Any) -> Any:
        if type(template) is str or type(template) is bytes:
            self._check_percent(template, values)
            result = template % values
            self.charge(len(result), "%")
            return scrub(result) if type(result) is str else result
        return template % values

    def _check_percent(self, template: str | bytes, values: Any) -> None:
        text = template if type(template) is str else template.decode("latin-1")  # type: ignore[union-attr]
        star = False
        for width, precision, _conversion in _PERCENT.findall(text):
            for field in (width, precision):
                if field == "*":
                    star = True
                elif field and int(field) > self.current.limits.format_width:
                    raise LimitExceeded(LimitKind.MEMORY, f"format width {field} is too large")
        if star:
            items = values if type(values) is tuple else (values,)
            for item in items:
                if type(item) is int and abs(item) > self.current.limits.format_width:
                    raise LimitExceeded(LimitKind.MEMORY, f"format width {item} is too large")

    def inplacevar(self, op: str, target: Any, value: Any) -> Any:
        if op == "+=":
            self._check_add(target, value)
        elif op == "*=":
            self._check_mul(target, value)
        elif op == "**=":
            return self.pow(target, value)
        elif op == "<<=":
            return self.lshift(target, value)
        elif op == "%=":
            return self.mod(target, value)
        function = _INPLACE.get(op)
        if function is None:
            raise SyntaxError(f"unsupported operator {op}")
        return function(target, value)

    def format(self, value: Any, conversion: str, spec: Any) -> str:
        if conversion == "r":
            value = scrub(repr(value))
        elif conversion == "s":
            value = scrub(str(value))
        elif conversion == "a":
            value = scrub(ascii(value))
        if type(spec) is not str:
            raise TypeError("invalid format spec")
        if spec:
            found = _SPEC.fullmatch(spec)
            if found is None:
                raise ValueError(f"invalid format spec {spec[:40]!r}")
            for field in found.groups():
                if field and int(field) > self.current.limits.format_width:
                    raise LimitExceeded(LimitKind.MEMORY, f"format width {field} is too large")
        result = format(value, spec)
        kind = type(value)
        return result if kind is str or kind is int or kind is float else scrub(result)

    # --- access -------------------------------------------------------------------

    def getattr(self, obj: Any, name: str, default: Any = None) -> Any:
        kind = type(obj)
        allowed = ATTRIBUTES.get(kind)
        if allowed is None and isinstance(obj, BaseException):
            allowed = EXCEPTION_ATTRIBUTES
        if type(name) is not str or allowed is None or name not in allowed:
            label = "sys" if kind.__name__ == "Sys" else kind.__name__
            raise AttributeError(f"'{label}' object has no attribute '{name}'")
        if (kind, name) in SIZE_GUARDED_METHODS:
            return GuardedMethod(self, obj, name)
        return getattr(obj, name)

    @staticmethod
    def getitem(obj: Any, key: Any) -> Any:
        kind = type(obj)
        if kind in (list, tuple, str, dict, range, bytes):
            return obj[key]
        raise TypeError(f"'{kind.__name__}' object is not subscriptable")

    @staticmethod
    def write(obj: Any) -> Any:
        kind = type(obj)
        if kind is list or kind is dict or kind is Sys:
            # Sys.__setattr__ admits exactly one assignment: sys.Trace = <bool>.
            return obj
        label = "req" if kind.__module__ == "sandbox.facade" else kind.__name__
        raise TypeError(f"{label} objects cannot be modified")

    @staticmethod
    def getiter(obj: Any) -> Any:
        return obj

    @staticmethod
    def unpack_sequence(obj: Any, spec: Any, getiter: Any) -> Any:
        return obj

    @staticmethod
    def apply(function: Any, *args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    # --- size-producing methods -------------------------------------------------------

    def call_sized(self, target: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        method = getattr(target, name)
        if name in ("center", "ljust", "rjust", "zfill"):
            width = args[0] if args else kwargs.get("width", 0)
            if type(width) is int:
                self.charge(max(width, len(target)), f"str.{name}")
        elif name == "expandtabs":
            size = args[0] if args else kwargs.get("tabsize", 8)
            if type(size) is int:
                self.charge(len(target) + target.count("\t") * max(size, 0), "str.expandtabs")
        elif name == "replace" and len(args) >= 2:
            old, new = args[0], args[1]
            if type(old) is str and type(new) is str:
                hits = len(target) + 1 if not old else target.count(old)
                if len(args) > 2 and type(args[2]) is int and args[2] >= 0:
                    hits = min(hits, args[2])
                self.charge(len(target) + hits * max(len(new) - len(old), 0), "str.replace")
        elif name == "join" and args:
            items = list(_bounded(args[0], self.current.limits.value_bytes // 8))
            total = sum(len(item) for item in items if type(item) is str)
            self.charge(total + len(target) * max(len(items) - 1, 0), "str.join")
            return method(items)
        elif name == "extend" and args:
            items = list(_bounded(args[0], self.current.limits.value_bytes // 8))
            self.charge((len(target) + len(items)) * 8, "list.extend")
            return method(items)
        return method(*args, **kwargs)


def _bounded(iterable: Iterable[Any], cap: int) -> Iterable[Any]:
    count = 0
    for item in iterable:
        count += 1
        if count > cap:
            raise LimitExceeded(LimitKind.MEMORY, "too many items")
        yield item


class GlobalsFactory:
    """Builds the fresh globals of every execution from one immutable template."""

    __slots__ = ("_template",)

    def __init__(self, guards: Guards, printer: Callable[[Any], Printer]) -> None:
        namespace = _base_builtins()
        namespace["__builtins__"] = {}
        namespace["__name__"] = "dialplan"
        namespace["__metaclass__"] = None
        namespace["_getattr_"] = guards.getattr
        namespace["_getitem_"] = guards.getitem
        namespace["_write_"] = guards.write
        namespace["_getiter_"] = guards.getiter
        namespace["_iter_unpack_sequence_"] = guards.unpack_sequence
        namespace["_unpack_sequence_"] = guards.unpack_sequence
        namespace["_inplacevar_"] = guards.inplacevar
        namespace["_apply_"] = guards.apply
        namespace["_add_"] = guards.add
        namespace["_mul_"] = guards.mul
        namespace["_pow_"] = guards.pow
        namespace["_lshift_"] = guards.lshift
        namespace["_mod_"] = guards.mod
        namespace["_format_"] = guards.format
        namespace["_check_"] = guards.check
        namespace["_print_"] = printer
        self._template = MappingProxyType(namespace)

    def build(self, facade: dict[str, object]) -> dict[str, Any]:
        """A new globals dict: the template plus this execution's sys, req and re.

        The builtins namespace is empty: every allowed builtin is a global of the
        script's own dict, so nothing is shared between executions but immutable
        objects (types, builtin functions, the guards themselves).
        """
        namespace = dict(self._template)
        namespace.update(facade)
        return namespace
