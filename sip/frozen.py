"""Quicker construction for the stack's frozen, slotted dataclasses.

Every message the server reads or writes builds a dozen or more of them (URIs,
name-addrs, Vias, CSeqs, the messages themselves).  The ``__init__`` that
:func:`dataclasses.dataclass` writes for a frozen class sets each field through
``object.__setattr__`` (a method lookup and a generic attribute store per field), and
keyword-only arguments are matched by name on every call.  The slots' own descriptors
store a value directly, and a positional call skips the matching:

* :func:`fast_init` gives a class an ``__init__`` with the same signature, defaults and
  default factories as the generated one, that fills the slots through their
  descriptors;
* :func:`positional_factory` makes a function that builds an instance from positional
  arguments, for the parser's and the message builders' hot paths.

Both write every field, as the generated ``__init__`` does, and neither calls
``__post_init__`` (the classes given to them must not define one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

_C = TypeVar("_C", bound=type)


def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} defines __post_init__, which these constructors skip")
    return dataclasses.fields(cls)


def _namespace(cls: type, fields: tuple[dataclasses.Field[Any], ...]) -> dict[str, Any]:
    """The names the generated code refers to: each slot's setter, defaults, factories."""
    names: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_FACTORY": _FACTORY}
    for f in fields:
        names[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is not dataclasses.MISSING:
            names[f"_dflt_{f.name}"] = f.default
        if f.default_factory is not dataclasses.MISSING:
            names[f"_fact_{f.name}"] = f.default_factory
    return names


def _default(f: dataclasses.Field[Any]) -> str:
    """The expression for a field's value when it is not passed."""
    if f.default is not dataclasses.MISSING:
        return f"_dflt_{f.name}"
    if f.default_factory is not dataclasses.MISSING:
        return f"_fact_{f.name}()"
    raise TypeError(f"field {f.name} has no default")


class _Factory:
    """Marks a parameter whose default comes from a factory (as dataclasses does)."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()


def fast_init(cls: _C) -> _C:
    """Replace a frozen, slotted dataclass's ``__init__`` by one that stores through the
    slot descriptors (same signature; see the module's docstring)."""
    fields = _fields(cls)
    params: list[str] = []
    keyword_only = False
    body: list[str] = []
    for f in fields:
        if not f.init:
            body.append(f"    _set_{f.name}(self, {_default(f)})")
            continue
        if f.kw_only and not keyword_only:
            params.append("*")
            keyword_only = True
        if f.default is not dataclasses.MISSING:
            params.append(f"{f.name}=_dflt_{f.name}")
            body.append(f"    _set_{f.name}(self, {f.name})")
        elif f.default_factory is not dataclasses.MISSING:
            params.append(f"{f.name}=_FACTORY")
            body.append(f"    _set_{f.name}(self, _fact_{f.name}() if {f.name} is _FACTORY else {f.name})")
        else:
            params.append(f.name)
            body.append(f"    _set_{f.name}(self, {f.name})")
    source = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body or ["    pass"]) + "\n"
    namespace = _namespace(cls, fields)
    exec(source, namespace)  # noqa: S102 - source built above from field names only
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    cls.__init__ = init  # type: ignore[misc]
    return cls


def positional_factory(cls: type, *names: str) -> Callable[..., Any]:
    """A function ``(value, ...) -> instance`` taking the fields ``names`` in that order
    and giving every other field its default."""
    fields = _fields(cls)
    known = {f.name for f in fields}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {unknown[0]}")
    body = ["    self = _new(_cls)"]
    for f in fields:
        value = f.name if f.name in names else _default(f)
        body.append(f"    _set_{f.name}(self, {value})")
    body.append("    return self")
    source = f"def make_{cls.__name__}({', '.join(names)}):\n" + "\n".join(body) + "\n"
    namespace = _namespace(cls, fields)
    exec(source, namespace)  # noqa: S102 - source built above from field names only
    factory: Callable[..., Any] = namespace[f"make_{cls.__name__}"]
    factory.__module__ = cls.__module__
    return factory
