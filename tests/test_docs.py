"""The documentation lists everything a user can use: every setting, every ``sys`` member
and every CLI command.  Adding one without documenting it fails here."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from engine.cli import build_parser
from engine.config import ServerConfig
from sandbox.facade import Sys

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [f.name for f in dataclasses.fields(ServerConfig) if f"`{f.name}`" not in text]
    assert not missing, f"undocumented settings in docs/configuration.md: {missing}"


def test_every_sys_member_is_documented() -> None:
    text = (DOCS / "dialplan-api.md").read_text()
    missing = sorted(name for name in Sys.PUBLIC if f"`{name}" not in text)
    assert not missing, f"undocumented sys members in docs/dialplan-api.md: {missing}"


def _commands(parser: argparse.ArgumentParser, prefix: str = "dialspell") -> list[str]:
    found: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                command = f"{prefix} {name}"
                children = _commands(sub, command)
                found.extend(children or [command])
    return found


def test_every_cli_command_is_documented() -> None:
    text = (DOCS / "cli.md").read_text()
    missing = [c for c in _commands(build_parser()) if f"`{c}" not in text]
    assert not missing, f"undocumented commands in docs/cli.md: {missing}"


def test_every_cli_command_has_help() -> None:
    parser = build_parser()
    for command in _commands(parser):
        words = command.split()[1:]
        sub = parser
        for word in words:
            sub = next(
                a.choices[word] for a in sub._actions if isinstance(a, argparse._SubParsersAction)
            )
        assert sub.format_help().strip(), command
