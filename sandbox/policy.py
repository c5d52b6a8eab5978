"""Compiling a dialplan: RestrictedPython plus a stricter policy of our own.

RestrictedPython 9 restricts the *language* (no underscore names, no frame attributes,
guarded attribute/item access, default-deny over AST nodes).  Our policy adds what a
sandbox with limits needs (see docs/sandbox.md for the reasoning behind each rule):

* no ``import``, ``class``, ``global``/``nonlocal``, generators (``yield``, generator
  expressions), ``async``, ``with``, decorators: a dialplan needs none of them, and
  each one is a known route out (frames, metaclasses, context managers that run code
  while a limit exception is in flight);
* no bare ``except:`` and no ``finally:``: the limit exceptions derive from
  BaseException and must travel through every frame of the script untouched.  A
  ``finally`` block (or an ``except`` clause whose type expression fails) could replace
  the in-flight limit exception with an ordinary one that an outer ``except`` catches;
* an ``except`` clause names only built-in exception classes, and built-in names
  (and ``sys``, ``req``, ``re``) can never be rebound, for the same reason;
* ``+ * ** << %`` go through size-estimating guards (``_add_`` ...), f-string fields
  through ``_format_`` (bounded widths), so memory bombs are refused before allocating.

Errors are ``CompileError(line, column, message)`` with 1-based positions and wording a
customer can act on.  This module is imported by the worker only: compiling happens
inside the resource-limited worker process, never in the server.
"""

from __future__ import annotations

import ast
import typing
from dataclasses import dataclass
from types import CodeType

from RestrictedPython.transformer import RestrictingNodeTransformer, copy_locations

from sandbox.results import CompileError
from sandbox.tables import BUILTIN_NAMES, EXCEPTION_NAMES, FACADE_NAMES

FILENAME = "<dialplan>"
"""The filename of every compiled dialplan; tracebacks are cut to frames with it."""

_GUARDED_BINOPS: dict[type[ast.operator], str] = {
    ast.Add: "_add_",
    ast.Mult: "_mul_",
    ast.Pow: "_pow_",
    ast.LShift: "_lshift_",
    ast.Mod: "_mod_",
}

_PROTECTED_NAMES = BUILTIN_NAMES | FACADE_NAMES | {"print", "printed"}


class DialplanPolicy(RestrictingNodeTransformer):  # type: ignore[misc]
    """RestrictedPython's transformer with the dialplan rules on top."""

    def __init__(
        self,
        errors: list[str] | None = None,
        warnings: list[str] | None = None,
        used_names: dict[str, bool] | None = None,
    ) -> None:
        super().__init__(errors, warnings, used_names)
        self.problems: list[CompileError] = []

    # RestrictedPython reports 'Line N: ...' strings; keep the column too.
    def error(self, node: ast.AST, info: str) -> None:
        super().error(node, info)
        self.problems.append(
            CompileError(
                line=int(getattr(node, "lineno", 0) or 0),
                column=int(getattr(node, "col_offset", -1) or 0) + 1,
                message=info,
            )
        )

    # --- statements a dialplan never needs ---------------------------------------

    def visit_Import(self, node: ast.Import) -> ast.AST:
        self.error(node, "import is not available: sys, req and re are already there")
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        self.error(node, "import is not available: sys, req and re are already there")
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        self.error(node, "class definitions are not allowed in a dialplan")
        return node

    def visit_Global(self, node: ast.Global) -> ast.AST:
        self.error(node, "global is not allowed; return values from functions instead")
        return node

    def visit_Nonlocal(self, node: ast.Nonlocal) -> ast.AST:
        self.error(node, "nonlocal is not allowed; return values from functions instead")
        return node

    def visit_Yield(self, node: ast.Yield) -> ast.AST:
        self.error(node, "generators (yield) are not allowed; build a list instead")
        return node

    def visit_YieldFrom(self, node: ast.YieldFrom) -> ast.AST:
        self.error(node, "generators (yield from) are not allowed; build a list instead")
        return node

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> ast.AST:
        self.error(
            node, "generator expressions are not allowed; use a list comprehension [...]"
        )
        return node

    def visit_With(self, node: ast.With) -> ast.AST:
        self.error(node, "with statements are not allowed in a dialplan")
        return node

    def visit_Try(self, node: ast.Try) -> ast.AST:
        if node.finalbody:
            self.error(
                node.finalbody[0],
                "finally is not allowed; put the clean-up after the try statement",
            )
        for handler in node.handlers:
            self._check_handler_type(handler)
        return self.node_contents_visit(node)  # type: ignore[no-any-return]

    def _check_handler_type(self, handler: ast.ExceptHandler) -> None:
        kind = handler.type
        if kind is None:
            self.error(
                handler,
                "a bare 'except:' is not allowed; name the error, e.g. 'except ValueError:'",
            )
            return
        names = kind.elts if isinstance(kind, ast.Tuple) else [kind]
        for name in names:
            if not (isinstance(name, ast.Name) and name.id in EXCEPTION_NAMES):
                self.error(
                    handler,
                    "an except clause may only name built-in errors such as "
                    "ValueError, TypeError, KeyError or Exception",
                )
                return

    # --- functions ---------------------------------------------------------------

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        if node.decorator_list:
            self.error(node, "decorators are not allowed in a dialplan")
        if node.name.startswith("__"):
            # RestrictedPython admits a few dunder method names for classes; with
            # classes gone there is no reason to define one.
            self.error(node, f'"{node.name}" is an invalid function name')
        self._check_binding(node, node.name)
        return typing.cast(ast.AST, super().visit_FunctionDef(node))

    def visit_arg(self, node: ast.arg) -> ast.AST:
        self._check_binding(node, node.arg)
        return self.node_contents_visit(node)  # type: ignore[no-any-return]

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        if node.name is not None:
            self._check_binding(node, node.name)
        node = typing.cast(ast.ExceptHandler, super().visit_ExceptHandler(node))
        # Every handler starts with _check_(): catching RecursionError in a loop one
        # frame below the recursion limit would otherwise starve the CPU timer.
        check = ast.Expr(ast.Call(func=ast.Name("_check_", ast.Load()), args=[], keywords=[]))
        copy_locations(check, node)
        node.body.insert(0, check)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            self._check_binding(node, node.id)
        return typing.cast(ast.AST, super().visit_Name(node))

    def _check_binding(self, node: ast.AST, name: str) -> None:
        if name in _PROTECTED_NAMES:
            self.error(node, f'"{name}" is a built-in name and cannot be assigned')

    # --- guarded operators and formatting ----------------------------------------

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        node = self.node_contents_visit(node)
        guard = _GUARDED_BINOPS.get(type(node.op))
        if guard is None:
            return node
        call = ast.Call(
            func=ast.Name(guard, ast.Load()), args=[node.left, node.right], keywords=[]
        )
        copy_locations(call, node)
        return call

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        # f"{value!r:>{width}}" -> f"{_format_(value, 'r', f'>{width}')}": the guard
        # checks the (possibly computed) spec before any allocation happens.
        node = self.node_contents_visit(node)
        spec: ast.expr = node.format_spec if node.format_spec is not None else ast.Constant("")
        conversion = chr(node.conversion) if node.conversion and node.conversion > 0 else ""
        call = ast.Call(
            func=ast.Name("_format_", ast.Load()),
            args=[node.value, ast.Constant(conversion), spec],
            keywords=[],
        )
        copy_locations(call, node)
        new = ast.FormattedValue(value=call, conversion=-1, format_spec=None)
        copy_locations(new, node)
        return new


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledDialplan:
    """A dialplan's code object (module level) ready to exec with fresh globals."""

    code: CodeType


def compile_dialplan(source: str, *, source_bytes: int) -> CompiledDialplan | list[CompileError]:
    """Compile under the dialplan policy, or say why not (line, column, message)."""
    try:
        size = len(source.encode("utf-8", "surrogatepass"))
    except UnicodeError:
        return [CompileError(line=1, column=1, message="the dialplan is not valid text")]
    if size > source_bytes:
        return [
            CompileError(
                line=1,
                column=1,
                message=f"the dialplan is {size} bytes; the limit is {source_bytes}",
            )
        ]
    try:
        tree = ast.parse(source, FILENAME, "exec")
    except SyntaxError as exc:
        return [
            CompileError(
                line=exc.lineno or 1,
                column=exc.offset or 1,
                message=f"{type(exc).__name__}: {exc.msg}",
            )
        ]
    except (RecursionError, MemoryError):
        # ast.parse raises RecursionError (not SyntaxError) on very deep expressions.
        return [CompileError(line=1, column=1, message="the dialplan is nested too deeply")]
    except ValueError as exc:
        return [CompileError(line=1, column=1, message=f"the dialplan cannot be read: {exc}")]
    policy = DialplanPolicy()
    try:
        policy.visit(tree)
    except RecursionError:
        return [CompileError(line=1, column=1, message="the dialplan is nested too deeply")]
    if policy.problems or policy.errors:
        problems = policy.problems or [
            CompileError(line=1, column=1, message=text) for text in policy.errors
        ]
        return sorted(set(problems), key=lambda p: (p.line, p.column, p.message))
    try:
        code = compile(tree, FILENAME, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        line = getattr(exc, "lineno", None) or 1
        return [CompileError(line=line, column=1, message=f"cannot compile: {exc}")]
    return CompiledDialplan(code=code)
