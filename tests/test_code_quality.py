"""The project's own rules, checked as tests so the README's test command runs them:
ruff (style and common bugs), mypy --strict (types), import-linter (the dependency rule
of docs/architecture.md: sip/ and sandbox/ never import each other or engine/)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "command",
    [
        (sys.executable, "-m", "ruff", "check", "sip", "sandbox", "engine", "tests", "bench"),
        (sys.executable, "-m", "mypy"),
    ],
    ids=["ruff", "mypy"],
)
def test_static_checks(command: tuple[str, ...]) -> None:
    result = _run(*command)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dependency_rule() -> None:
    lint_imports = shutil.which("lint-imports")
    assert lint_imports is not None, "import-linter is missing: pip install -e '.[test]'"
    result = _run(lint_imports)
    assert result.returncode == 0, result.stdout + result.stderr
