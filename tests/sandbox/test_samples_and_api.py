"""Sample dialplans behave as their comments say; the script-visible API; the frame door."""

from __future__ import annotations

import json
import re
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from engine.simulator import CallOutcome, CallSpec, simulate
from sandbox import Outcome, SandboxPool
from sandbox.errors import WorkerProtocolError
from sandbox.facade import Sys
from sandbox.framing import CallFrame, encode_frame, parse_worker_frame_untrusted
from tests.sandbox.conftest import CONTEXT, REQUEST, RecordingHost

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_dialplans"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text(encoding="utf-8")


async def test_every_sample_compiles_and_says_what_it_does() -> None:
    files = sorted(SAMPLES.glob("*.py"))
    assert len(files) >= 4
    async with SandboxPool(workers=1) as pool:
        for path in files:
            assert path.read_text().startswith("# "), f"{path.name} has no leading comment"
            assert await pool.compile_errors(path.read_text()) == [], path.name


async def test_samples_behave_as_documented() -> None:
    db: dict[str, str] = {}
    async with SandboxPool(workers=1) as pool:
        regex = await simulate(pool, sample("webcallback_regex_test.py"), CallSpec(to="555*1234"), db)
        assert regex.log[-1] == "555*1234 matched /\\*1234$/"
        no_match = await simulate(pool, sample("webcallback_regex_test.py"), CallSpec(to="5551234"), db)
        assert no_match.log[-1] == "No match"

        direct = await simulate(
            pool, sample("in_like_direct.py"),
            CallSpec(username="joe", answer=re.compile("^joe@local$")), db,
        )
        assert direct.outcome is CallOutcome.ANSWERED and direct.answered_by == "joe@local"
        assert direct.log == ("call from sip:alice@example.com to 1234.",)

        blacklist = sample("blacklist.py")
        added = await simulate(pool, blacklist, CallSpec(to="*66bob"), db)
        assert (added.outcome, added.status) == (CallOutcome.REJECTED, 486)
        blocked = await simulate(pool, blacklist, CallSpec(from_uri="sip:bob@example.org"), db)
        assert (blocked.outcome, blocked.status, blocked.reason) == (CallOutcome.REJECTED, 603, "Decline")
        other = await simulate(pool, blacklist, CallSpec(from_uri="sip:carol@example.org"), db)
        assert other.outcome is CallOutcome.COMPLETED and other.status == 480
        assert other.legs == ("owner@local", "vm-owner@voicemail-provider")

        routing = sample("number_routing.py")
        intl = await simulate(
            pool, routing, CallSpec(to="0044123456", direction="out", answer=re.compile("backup")), db
        )
        assert intl.answered_by == "44123456@intl-backup"
        assert intl.legs == ("44123456@intl-cheap", "44123456@intl-backup")
        busy = await simulate(pool, routing, CallSpec(to="5550100", direction="out"), db)
        assert (busy.status, busy.reason) == (480, "All routes busy")


async def test_req_is_a_readable_frozen_snapshot() -> None:
    source = "\n".join(
        [
            "sys.Log(req.Method + ' ' + req.URI.User + ' ' + req.URI.Host)",
            "sys.Log(str(req.URI) + ' ' + req.URI.ToString())",
            "sys.Log(req.Header.From.FromURI.ToString() + ' ' + req.Header.From.FromName)",
            "sys.Log(str(req.Header.Get('x-account')) + ' ' + str(req.Header.Get('Nope')))",
            "sys.Log(repr(req.Header.UnknownHeaders) + ' ' + req.Header.CallId)",
            "m = re.search(r'(\\d)(\\d)', req.URI.User)",
            "sys.Log('%s %s %s %s' % (m.group(0), m.groups(), m.span(2), re.sub(r'\\d', 'x', '12')))",
            "sys.Log('%s %s' % (re.findall(r'\\d', 'a1b2'), re.split(',', 'a,b')))",
            "sys.Trace = False",
            "sys.Log('%s %s %s' % (sys.Username, sys.In, sys.Out))",
        ]
    )
    async with SandboxPool(workers=1) as pool:
        result = await pool.run(source, request=REQUEST, context=CONTEXT, host=RecordingHost())
    assert result.outcome is Outcome.COMPLETED, result.error
    assert result.log == (
        "INVITE 1234 example.com",
        "sip:1234@example.com sip:1234@example.com",
        "sip:alice@example.org Alice",
        "77 None",
        "('X-Account: 77',) abc@host",
        "12 ('1', '2') (1, 2) xx",
        "['1', '2'] ['a', 'b']",
        "joe True False",
    )
    assert result.trace_enabled is False


async def test_sys_methods_reject_wrong_types_with_author_messages() -> None:
    source = "\n".join(
        [
            "for thunk in (lambda: sys.Dial(5), lambda: sys.Respond('x'), lambda: sys.DBRead(None),",
            "              lambda: sys.Log(3), lambda: sys.WebGet('http://x', 'soon')):",
            "    try:",
            "        thunk()",
            "    except (TypeError, ValueError) as e:",
            "        sys.Log(str(e))",
        ]
    )
    async with SandboxPool(workers=1) as pool:
        result = await pool.run(source, request=REQUEST, context=CONTEXT, host=RecordingHost())
    assert result.log == (
        "sys.Dial(): dialstring must be a str, not int",
        "sys.Respond(): statusCode must be an int, not str",
        "sys.DBRead(): key must be a str, not None",
        "sys.Log(): message must be a str, not int",
        "sys.WebGet(): timeoutSeconds must be a number, not str",
    )


def test_the_docs_describe_every_sys_member() -> None:
    docs = (ROOT / "docs" / "sandbox.md").read_text()
    missing = [name for name in sorted(Sys.PUBLIC) if f"`{name}" not in docs]
    assert not missing


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_worker_frames_raise_only_the_protocol_error(payload: bytes) -> None:
    try:
        parse_worker_frame_untrusted(payload)
    except WorkerProtocolError:
        pass


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["op", "id", "name", "args", "lines", "log", "outcome",
                                         "error", "limit", "cpu", "trace", "errors", "pid"]),
                       plain, max_size=8))
def test_json_shaped_garbage_raises_only_the_protocol_error(message: dict[str, object]) -> None:
    try:
        parse_worker_frame_untrusted(json.dumps(message).encode())
    except WorkerProtocolError:
        pass


def test_a_valid_call_frame_is_accepted() -> None:
    frame = encode_frame({"op": "call", "id": 3, "name": "Dial", "args": ["1@x", 0, 0], "log": ["a"]})
    parsed = parse_worker_frame_untrusted(frame[4:])
    assert isinstance(parsed, CallFrame)
    assert parsed.name == "Dial" and parsed.args == ("1@x", 0, 0)


@pytest.mark.parametrize(
    "payload",
    [b"[1]", b'{"op": "call", "id": 1, "name": "System", "args": []}',
     b'{"op": "done", "id": -1, "outcome": "completed"}', b"[" * 100000],
)
def test_specific_garbage_is_refused(payload: bytes) -> None:
    with pytest.raises(WorkerProtocolError):
        parse_worker_frame_untrusted(payload)
