"""docs/api.md documents every endpoint of the route table, and nothing that is not in it."""

from __future__ import annotations

import re
from pathlib import Path

from engine.web.routes import ENDPOINTS

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_every_endpoint_in_the_route_table_is_documented() -> None:
    documented = set(re.findall(r"^### `([A-Z]+) (\S+)`$", DOC.read_text(encoding="utf-8"), re.MULTILINE))
    routes = {(ep.method, ep.doc_path) for ep in ENDPOINTS}
    assert routes - documented == set(), "undocumented endpoints"
    assert documented - routes == set(), "documented endpoints that do not exist"


def test_the_cli_session_snippet_is_there_to_copy() -> None:
    text = DOC.read_text(encoding="utf-8")
    snippet = text.split("## CLI session", 1)[1]
    for command in ("dialspell login", "dialspell dialplan push", "dialspell trace list", "dialspell logout"):
        assert command in snippet
