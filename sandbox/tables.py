"""Default-deny, declared once: every name and attribute a dialplan may touch.

Anything not listed here does not exist for a script.  The AST node allow-list is
RestrictedPython's (a node without a ``visit_`` method is rejected) narrowed by
``sandbox.policy``; this module lists the run-time side:

* ``BUILTIN_FUNCTIONS`` / ``BUILTIN_TYPES`` / ``EXCEPTION_NAMES``: the whole builtins
  namespace.  Left out on purpose: ``type``, ``getattr``/``setattr``/``hasattr``, ``id``,
  ``hash``, ``pow``, ``vars``, ``dir``, ``globals``, ``open``, ``iter``/``next``,
  ``format``, ``object``, ``super``, ``__import__``, ``BaseException``, ``SystemExit``,
  ``KeyboardInterrupt``, ``GeneratorExit``, ``bytes``/``bytearray``/``memoryview`` and
  every module (``random``, ``math``, ``string``, the real ``re``...).
* ``ATTRIBUTES``: per *exact* type, the attribute names a script may read.  Not listed:
  ``str.format``/``format_map`` (they walk attributes in C), ``str.translate``/
  ``maketrans`` and ``encode``, ``dict.fromkeys`` (allocation bombs), every attribute of
  functions, methods, generators, frames, types and exception objects except ``args``.
* ``SIZE_GUARDED_METHODS``: methods whose result size is estimated before they run.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from sandbox.facade import (
    FromHeader,
    Headers,
    Match,
    Regex,
    Request,
    Sys,
    ToHeader,
    Uri,
)

FACADE_NAMES: frozenset[str] = frozenset({"sys", "req", "re"})

EXCEPTION_NAMES: frozenset[str] = frozenset(
    {
        "Exception",
        "ArithmeticError",
        "AssertionError",
        "AttributeError",
        "IndexError",
        "KeyError",
        "LookupError",
        "NameError",
        "NotImplementedError",
        "OverflowError",
        "RecursionError",
        "RuntimeError",
        "TypeError",
        "UnicodeError",
        "ValueError",
        "ZeroDivisionError",
    }
)
"""Catchable and raisable.  All derive from Exception, never from BaseException alone."""

BUILTIN_TYPES: frozenset[str] = frozenset(
    {"bool", "dict", "float", "frozenset", "int", "list", "range", "set", "str", "tuple"}
)

BUILTIN_FUNCTIONS: frozenset[str] = frozenset(
    {
        "abs",
        "all",
        "any",
        "bin",
        "chr",
        "divmod",
        "enumerate",
        "filter",
        "hex",
        "isinstance",
        "len",
        "map",
        "max",
        "min",
        "oct",
        "ord",
        "repr",
        "reversed",
        "round",
        "sorted",
        "sum",
        "zip",
    }
)
"""``repr`` and ``round`` are wrapped (address scrubbing; bounded ``ndigits``)."""

BUILTIN_NAMES: frozenset[str] = BUILTIN_TYPES | BUILTIN_FUNCTIONS | EXCEPTION_NAMES

_STR_ATTRIBUTES = frozenset(
    {
        "capitalize",
        "casefold",
        "center",
        "count",
        "endswith",
        "expandtabs",
        "find",
        "index",
        "isalnum",
        "isalpha",
        "isascii",
        "isdecimal",
        "isdigit",
        "islower",
        "isnumeric",
        "isprintable",
        "isspace",
        "istitle",
        "isupper",
        "join",
        "ljust",
        "lower",
        "lstrip",
        "partition",
        "removeprefix",
        "removesuffix",
        "replace",
        "rfind",
        "rindex",
        "rjust",
        "rpartition",
        "rsplit",
        "rstrip",
        "split",
        "splitlines",
        "startswith",
        "strip",
        "swapcase",
        "title",
        "upper",
        "zfill",
    }
)

_SEQUENCE_ATTRIBUTES = frozenset({"count", "index"})

ATTRIBUTES: Mapping[type, frozenset[str]] = MappingProxyType(
    {
        str: _STR_ATTRIBUTES,
        list: frozenset(
            {
                "append",
                "clear",
                "copy",
                "count",
                "extend",
                "index",
                "insert",
                "pop",
                "remove",
                "reverse",
                "sort",
            }
        ),
        tuple: _SEQUENCE_ATTRIBUTES,
        range: _SEQUENCE_ATTRIBUTES | {"start", "stop", "step"},
        dict: frozenset(
            {"clear", "copy", "get", "items", "keys", "pop", "popitem", "setdefault",
             "update", "values"}
        ),
        set: frozenset(
            {"add", "clear", "copy", "difference", "discard", "intersection", "isdisjoint",
             "issubset", "issuperset", "pop", "remove", "symmetric_difference", "union",
             "update"}
        ),
        frozenset: frozenset(
            {"copy", "difference", "intersection", "isdisjoint", "issubset", "issuperset",
             "symmetric_difference", "union"}
        ),
        int: frozenset({"bit_length"}),
        bool: frozenset(),
        float: frozenset({"is_integer"}),
        # Facade objects: exactly their documented members (docs/dialplan-api.md).
        Sys: Sys.PUBLIC,
        Request: Request.PUBLIC,
        Headers: Headers.PUBLIC,
        Uri: Uri.PUBLIC,
        FromHeader: FromHeader.PUBLIC,
        ToHeader: ToHeader.PUBLIC,
        Regex: Regex.PUBLIC,
        Match: Match.PUBLIC,
    }
)

EXCEPTION_ATTRIBUTES: frozenset[str] = frozenset({"args"})
"""Readable on any exception object the script caught (never ``obj``, ``name`` ...)."""

SIZE_GUARDED_METHODS: frozenset[tuple[type, str]] = frozenset(
    {
        (str, "center"),
        (str, "ljust"),
        (str, "rjust"),
        (str, "zfill"),
        (str, "expandtabs"),
        (str, "replace"),
        (str, "join"),
        (list, "extend"),
    }
)
