"""Properties of the untrusted-bytes boundary (hypothesis).

* Nothing but SIPParseError escapes parse_message_untrusted or StreamFramer, for arbitrary
  bytes, for mutated RFC 4475 messages and for huge inputs; none of those reaches the
  parser's internal-error safety net.
* What the parser accepts, the lazy accessors parse again (validation and access share
  one grammar), and the answer to what it refuses can always be built.
* parse(to_bytes(message)) == message for generated valid messages.
"""

from __future__ import annotations

import csv
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip.errors import SIPParseError
from sip.headers import Headers, NameAddr, Via, validate_name_addr, validate_via
from sip.message import Message, Request, Response
from sip.parse import MAX_MESSAGE, StreamFramer, parse_message_untrusted
from sip.uri import URI, validate_uri
from sip.validate import parse_error_response

TORTURE = Path(__file__).resolve().parents[2].parent / "shared" / "sip-torture"


def _valid_messages() -> list[bytes]:
    with (TORTURE / "MANIFEST.tsv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    names = [r[0] for r in rows if r and r[1] in ("valid", "semantic", "compat")]
    return [(TORTURE / name).read_bytes() for name in names]


def _accepted(data: bytes) -> bool:
    try:
        parse_message_untrusted(data)
    except SIPParseError:
        return False
    return True


VALID = _valid_messages()
ACCEPTED = [m for m in VALID if _accepted(m)]  # semantic cases like insuf are refused
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_everything(message: Message) -> None:
    """Touch every accessor a later layer uses; none may raise for an accepted message."""
    _ = (message.from_, message.to, message.call_id, message.cseq, message.top_via)
    _ = (message.vias, message.contacts, message.is_contact_star, message.content_type)
    if isinstance(message, Request):
        _ = (message.max_forwards, message.branch, str(message.uri))
    message.to_bytes()


def parse_or_refuse(data: bytes) -> Message | None:
    try:
        message = parse_message_untrusted(data)
    except SIPParseError as exc:
        assert not exc.reason.startswith("Internal"), exc.reason
        assert "\r" not in exc.reason and "\n" not in exc.reason
        answer = parse_error_response(data, exc)
        assert answer is None or answer.startswith(b"SIP/2.0 ")
        return None
    read_everything(message)
    return message


# -- arbitrary and mutated bytes --------------------------------------------------------------
@FAST
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    parse_or_refuse(data)


_SIP_ALPHABET = st.sampled_from(
    list(b" \t\r\n:;,=<>\"\\/?@%[]") + list(b"SIPsipVvFfTt0123456789.-") + [0, 0x7F, 0xC3, 0xFF]
)


@FAST
@given(st.lists(_SIP_ALPHABET, max_size=400).map(bytes))
def test_bytes_made_of_sip_punctuation(data: bytes) -> None:
    parse_or_refuse(b"INVITE sip:a@b SIP/2.0\r\n" + data)
    parse_or_refuse(b"SIP/2.0 200 OK\r\n" + data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from([b" ", b"\r\n", b"\r\n ", b",", b";", b":", b"\"",
                                                b"<", b">", b"%", b"\x00", b"\xff", b"9" * 12]))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[at:]
        else:
            end = min(len(data), at + draw(st.integers(1, 80)))
            data[at:at] = data[at:end]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_torture_messages(data: bytes) -> None:
    parse_or_refuse(data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([b"a", b"\r\n", b"v: SIP/2.0/UDP h\r\n", b"To: <sip:a@b>;x=y\r\n", b";", b"\""]),
       st.integers(MAX_MESSAGE // 2, MAX_MESSAGE + 10))
def test_huge_inputs(chunk: bytes, size: int) -> None:
    body = (chunk * (size // len(chunk) + 1))[:size]
    parse_or_refuse(b"OPTIONS sip:a@b SIP/2.0\r\n" + body)
    parse_or_refuse(VALID[0][:200] + body)


# -- the stream framer -------------------------------------------------------------------------
@FAST
@given(st.lists(st.one_of(st.binary(max_size=60), st.sampled_from(VALID), st.just(b"\r\n")),
                max_size=6),
       st.integers(1, 97))
def test_framer_on_arbitrary_streams(pieces: list[bytes], chunk: int) -> None:
    stream = b"".join(pieces)
    framer = StreamFramer()
    try:
        for i in range(0, len(stream), chunk):
            for framed in framer.feed(stream[i : i + chunk]):
                parse_or_refuse(framed)
    except SIPParseError as exc:
        assert not exc.reason.startswith("Internal")


@FAST
@given(st.lists(st.sampled_from(ACCEPTED), min_size=1, max_size=5),
       st.integers(1, 300))
def test_framer_returns_each_framed_message_whole(messages: list[bytes], chunk: int) -> None:
    framed = []
    for m in messages:
        parsed = parse_message_untrusted(m)
        framed.append(parsed.to_bytes())  # recomputed Content-Length: frameable as is
    stream = b"\r\n\r\n".join(framed)
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        out += framer.feed(stream[i : i + chunk])
    assert out == framed


# -- one grammar for validation and access ------------------------------------------------------
_HEADERISH = st.text(alphabet=st.sampled_from(list(' \t"\\<>;:=,?@%[]/.+-_~*') + list("sipSIPabc0129é")),
                     max_size=40)


@FAST
@given(st.one_of(_HEADERISH, st.sampled_from(["sip:a@b", "<sip:a@b>", '"x" <sip:a@b>;tag=1',
                                             "SIP/2.0/UDP h;branch=z9hG4bK1", "tel:+1"]).flatmap(
    lambda base: _HEADERISH.map(lambda noise: base + noise))))
def test_validators_agree_with_parsers(text: str) -> None:
    for validate, parse in ((validate_name_addr, NameAddr.parse), (validate_via, Via.parse),
                            (validate_uri, URI.parse)):
        try:
            validate(text)
            valid = True
        except SIPParseError:
            valid = False
        try:
            parse(text)
            parsed = True
        except SIPParseError:
            parsed = False
        assert valid == parsed, (validate.__name__, text)


# -- round trip ------------------------------------------------------------------------------
TOKEN = st.text(alphabet=st.sampled_from(list("abcXYZ019-.!%*_+`'~")), min_size=1, max_size=12)
LABEL = st.text(alphabet=st.sampled_from(list("abcxyz019-")), min_size=1, max_size=8).map(
    lambda label: "a" + label.strip("-") + "z"
)
HOST = st.one_of(
    st.lists(LABEL, min_size=1, max_size=3).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.sampled_from(["[2001:db8::1]", "[::1]"]),
)
WORD = st.text(alphabet=st.sampled_from(list("abcz019.")), min_size=1, max_size=8)
PARAM = st.tuples(st.sampled_from(["lr", "transport", "x-y", "maddr", "ob", "user"]),
                  st.one_of(st.none(), WORD))


def _escape_user(user: str) -> str:
    # A '%' must start an escape; keep the generated text inside the user grammar.
    return user.replace("%", "%25")


@st.composite
def sip_uris(draw: st.DrawFn) -> URI:
    return URI(
        scheme=draw(st.sampled_from(["sip", "sips"])),
        user=draw(st.one_of(st.none(), st.text(alphabet=st.sampled_from(list("aZ09+.-_%;&=")),
                                               min_size=1, max_size=10).map(_escape_user))),
        host=draw(HOST),
        port=draw(st.one_of(st.none(), st.integers(1, 65535))),
        params=tuple(draw(st.lists(PARAM, max_size=3))),
    )


@st.composite
def headers_for(draw: st.DrawFn, method: str) -> list[tuple[str, str]]:
    display = draw(st.one_of(st.none(), st.text(alphabet=st.sampled_from(list('abc XYZ"\\é,<>;')), max_size=12)))
    from_ = NameAddr(display_name=display or None, uri=draw(sip_uris()), params=(("tag", draw(TOKEN)),))
    vias = [f"SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP', 'TLS']))} {draw(HOST)};branch=z9hG4bK{draw(TOKEN)}"
            for _ in range(draw(st.integers(1, 3)))]
    items = [("Via", v) for v in vias]
    items += [
        ("Max-Forwards", str(draw(st.integers(0, 255)))),
        ("From", str(from_)),
        ("To", str(NameAddr(display_name=None, uri=draw(sip_uris())))),
        ("Call-ID", f"{draw(TOKEN)}@{draw(HOST)}"),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
        ("Contact", str(NameAddr(display_name=None, uri=draw(sip_uris()),
                                 params=tuple(draw(st.lists(PARAM, max_size=2)))))),
        ("X-Note", draw(st.text(alphabet=st.sampled_from(list("ab c;,=\"é大")), max_size=15)).strip(" ")),
    ]
    return items


@FAST
@given(st.data())
def test_round_trip_requests(data: st.DataObject) -> None:
    method = data.draw(TOKEN)
    body = data.draw(st.binary(max_size=40))
    items = data.draw(headers_for(method)) + [("Content-Length", str(len(body)))]
    request = Request(method=method, uri=data.draw(sip_uris()), headers=Headers(items), body=body)
    assert parse_message_untrusted(request.to_bytes()) == request


@FAST
@given(st.data())
def test_round_trip_responses(data: st.DataObject) -> None:
    body = data.draw(st.binary(max_size=40))
    items = data.draw(headers_for(data.draw(TOKEN))) + [("Content-Length", str(len(body)))]
    response = Response(status=data.draw(st.integers(100, 699)),
                        reason=data.draw(st.text(alphabet=st.sampled_from(list("OK okü \t-")), max_size=20)),
                        headers=Headers(items), body=body)
    assert parse_message_untrusted(response.to_bytes()) == response


def test_torture_messages_normalise_in_one_step() -> None:
    # Serialising unfolds and canonicalises; a second trip changes nothing more.
    assert len(ACCEPTED) >= 25
    for data in ACCEPTED:
        once = parse_message_untrusted(data)
        twice = parse_message_untrusted(once.to_bytes())
        assert parse_message_untrusted(twice.to_bytes()) == twice
        assert twice.body == once.body and twice.headers.without("Content-Length") == (
            once.headers.without("Content-Length")
        )
