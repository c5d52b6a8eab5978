"""The ``dialspell`` command line: one parser, subcommands contributed by modules.

Each command module exposes a function that registers its subcommands on an argparse
subparsers object and sets ``func(args) -> int`` (the exit code).  Exit codes follow the
usual conventions: 0 success, 1 failure, 2 usage error (argparse's own).

Building the parser imports no more than argparse needs: the command modules import
storage, trio, httpx, the sandbox and the SIP stack inside the commands that use them
(``--help``, ``--version`` and a usage error stay fast), and a command may raise
:class:`CommandFailed` to end with its message and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

# (module, function, where): "root" registers on the top level, "dialplan" on the
# ``dialspell dialplan`` group.  Modules are imported lazily so a missing optional piece
# never breaks the other commands.
_CONTRIBUTORS: tuple[tuple[str, str, str], ...] = (
    ("engine.cli_serve", "add_commands", "root"),
    ("engine.cli_admin", "add_commands", "root"),
    ("engine.cli_dialplan", "add_local_commands", "dialplan"),
    ("engine.cli_calls", "add_commands", "root"),
    ("engine.cli_client", "add_commands", "root"),
    ("engine.cli_client", "add_dialplan_commands", "dialplan"),
)


class CommandFailed(Exception):
    """Ends a command: ``dialspell: error: MESSAGE`` on stderr, exit code 1."""


def fail(message: str) -> int:
    """Print ``dialspell: error: MESSAGE`` on stderr; the exit code 1."""
    print(f"dialspell: error: {message}", file=sys.stderr)
    return 1


def deferred(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """A command that imports ``module`` only when it runs (for modules that bring the
    whole server with them)."""

    def run(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(module), function)(args))

    return run


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (a count, a limit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small: give 1 or more")
    return value


def seconds(text: str) -> float:
    """argparse type: a duration in seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a duration: give 0 or more seconds")
    return value


class _Version(argparse.Action):
    """``--version``, looked up only when asked for (reading the package metadata
    would cost every command ~25 ms)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("dialspell")
        except PackageNotFoundError:
            found = "(not installed)"
        print(f"dialspell {found}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dialspell",
        description="A programmable SIP server: registrar and B2BUA routed by Python dialplans.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    root = parser.add_subparsers(dest="command", metavar="COMMAND")
    dialplan = root.add_parser("dialplan", help="check, run and manage dialplans")
    dialplan_sub = dialplan.add_subparsers(dest="dialplan_command", metavar="ACTION")
    dialplan.set_defaults(func=show_help(dialplan))
    targets = {"root": root, "dialplan": dialplan_sub}
    for module_name, function, where in _CONTRIBUTORS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        getattr(module, function)(targets[where])
    return parser


def show_help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """The ``func`` of a command group called without its action: the group's help on
    stderr, exit code 2 (a usage error)."""

    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except CommandFailed as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
