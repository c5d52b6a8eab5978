"""parse_message_untrusted, StreamFramer and sip.validate beyond the torture messages."""

from __future__ import annotations

import time

import pytest

from sip.errors import SIPParseError
from sip.headers import Headers
from sip.message import Request, Response, make_response
from sip.parse import MAX_MESSAGE, StreamFramer, is_keepalive, parse_message_untrusted
from sip.validate import build_error_response, check_request, parse_error_response


def message(start: str = "OPTIONS sip:bob@example.com SIP/2.0", *, drop: tuple[str, ...] = (),
            extra: tuple[str, ...] = (), body: bytes = b"", length: str | None = None,
            cseq: str | None = None) -> bytes:
    method = start.split(" ", 1)[0] if not start.upper().startswith("SIP/") else "INVITE"
    lines = {
        "Via": "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9;rport",
        "Max-Forwards": "70",
        "From": '"Alice" <sip:alice@example.com>;tag=9fxced76sl',
        "To": "<sip:bob@example.com>",
        "Call-ID": "3848276298220188511@example.com",
        "CSeq": cseq or f"1 {method}",
    }
    head = [start] + [f"{k}: {v}" for k, v in lines.items() if k not in drop] + list(extra)
    head.append(f"Content-Length: {len(body) if length is None else length}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def refused(data: bytes, status: int = 400, match: str | None = None) -> SIPParseError:
    with pytest.raises(SIPParseError, match=match) as info:
        parse_message_untrusted(data)
    assert info.value.status == status and not info.value.is_response
    return info.value


def dropped(data: bytes, match: str | None = None) -> None:
    with pytest.raises(SIPParseError, match=match) as info:
        parse_message_untrusted(data)
    assert info.value.is_response


# -- start lines -----------------------------------------------------------------------------
def test_a_plain_request_reads_back() -> None:
    request = parse_message_untrusted(message(extra=("Subject: hi",), body=b"hello"))
    assert isinstance(request, Request)
    assert (request.method, str(request.uri)) == ("OPTIONS", "sip:bob@example.com")
    assert request.from_.display_name == "Alice" and request.from_.tag == "9fxced76sl"
    assert request.top_via.sent_by == ("192.0.2.1", 5060) and request.branch == "z9hG4bK74bf9"
    assert request.max_forwards == 70 and request.body == b"hello"
    assert request.headers.get("subject") == "hi"


def test_version_is_case_insensitive_but_must_be_2_0() -> None:
    assert parse_message_untrusted(message("OPTIONS sip:bob@example.com sip/2.0"))
    refused(message("OPTIONS sip:bob@example.com SIP/2.1"), 505, "Version Not Supported: SIP/2.1")
    refused(message("OPTIONS sip:bob@example.com HTTP/1.1"), 400, "version")


@pytest.mark.parametrize(
    ("start", "why"),
    [
        ("OPTIONS sip:bob@example.com", "Malformed request line"),
        ("OPTIONS\tsip:bob@example.com SIP/2.0", "Tab"),
        (" OPTIONS sip:bob@example.com SIP/2.0", "Leading whitespace"),
        ("OPT(IONS sip:bob@example.com SIP/2.0", "Method is not a token"),
        ("OPTIONS sip:bob@exa mple.com SIP/2.0", "Whitespace inside the Request-URI"),
        ("OPTIONS sip:bob@[::zz] SIP/2.0", "Bad Request-URI: Bad IPv6"),
    ],
)
def test_request_line_strictness(start: str, why: str) -> None:
    refused(message(start, cseq="1 OPTIONS"), 400, why)


def test_methods_are_case_sensitive() -> None:
    refused(message("invite sip:bob@example.com SIP/2.0", cseq="1 INVITE"), 400,
            "CSeq method INVITE does not match request method invite")


def test_ipv6_references() -> None:
    data = message("INVITE sip:bob@[2001:db8::1]:5070;transport=tcp SIP/2.0").replace(
        b"192.0.2.1:5060", b"[2001:db8::9]:5062"
    )
    request = parse_message_untrusted(data)
    assert isinstance(request, Request)
    assert (request.uri.host, request.uri.port) == ("[2001:db8::1]", 5070)
    assert request.top_via.sent_by == ("[2001:db8::9]", 5062)


@pytest.mark.parametrize(
    ("start", "status", "reason"),
    [("SIP/2.0 180 Ringing", 180, "Ringing"), ("SIP/2.0 200 Très bien", 200, "Très bien"),
     ("SIP/2.0 100 ", 100, ""), ("SIP/2.0 486", 486, ""), ("sip/2.0 699 x", 699, "x")],
)
def test_status_lines(start: str, status: int, reason: str) -> None:
    response = parse_message_untrusted(message(start))
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (status, reason)


@pytest.mark.parametrize(
    "start", ["SIP/2.0 099 Early", "SIP/2.0 700 Late", "SIP/2.0 2000 OK", "SIP/2.0 ２００ OK",
              "SIP/3.0 200 OK", "SIP/2.0 200 Bell\x07"],
)
def test_bad_status_lines_are_dropped(start: str) -> None:
    dropped(message(start))


# -- framing of a datagram ------------------------------------------------------------------------
def test_leading_crlf_is_ignored() -> None:
    parsed = parse_message_untrusted(b"\r\n\r\n" + message())
    assert isinstance(parsed, Request) and parsed.method == "OPTIONS"


def test_header_section_ending_at_the_datagram_end() -> None:
    data = message()[:-2]  # no empty line: the headers end with the datagram
    request = parse_message_untrusted(data)
    assert request.body == b""
    refused(data[:-2], 400, "Truncated")


def test_content_length_on_datagrams() -> None:
    assert parse_message_untrusted(message(body=b"abc") + b"junk").body == b"abc"
    assert parse_message_untrusted(message(body=b"abc", length="0003")).body == b"abc"
    refused(message(body=b"abc", length="4"), 400, "larger than the message body")
    refused(message(body=b"abc", length="99999999999999999999"), 400, "larger")
    refused(message(body=b"abc", length="-3"), 400, "Negative Content-Length")
    refused(message(body=b"abc", length="three"), 400, "Malformed Content-Length")
    refused(message(body=b"abc", length="3, 3"), 400, "Malformed Content-Length")
    data = message(body=b"abc").replace(b"Content-Length: 3\r\n", b"")
    assert parse_message_untrusted(data).body == b"abc"  # UDP: the rest of the datagram


def test_messages_keep_the_bytes_they_came_or_went_as() -> None:
    # A received message's snapshot is its datagram, cut to the message: what a
    # lingering transaction keeps.
    data = message(body=b"abc")
    received = parse_message_untrusted(data)
    assert isinstance(received, Request)
    assert received.snapshot() is data and received.wire is data
    for padded in (b"\r\n" + data, data + b"junk"):
        kept = parse_message_untrusted(padded).snapshot()
        assert kept == data and parse_message_untrusted(kept) == received
    # A message built here is written once; its snapshot is what was sent.
    response = make_response(received, 200, to_tag="x1", body=b"v=0\r\n")
    sent = response.to_bytes()
    assert response.to_bytes() is sent and response.snapshot() is sent and response.wire is None
    back = parse_message_untrusted(sent)
    assert back.body == response.body and back.headers.without("Content-Length") == response.headers
    # A changed copy is written anew.
    changed = response.replace(reason="Fine")
    assert changed.to_bytes() != sent and b"200 Fine" in changed.to_bytes()


def test_header_lines_give_the_cyclic_collector_little_to_visit() -> None:
    """A call has some 150 header lines under way at any moment, and the collector's
    young passes visit every container they sit in: a message's lines are one flat
    tuple of strings (name, value, name, value...), not a tuple per line.  Read back,
    they are the same lines in the same order."""
    routed = parse_message_untrusted(message(extra=(
        "Via: SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bKsecond", "Record-Route: <sip:p1;lr>",
        "Record-Route: <sip:p2;lr>")))
    built = Headers(list(routed.headers))

    for headers in (routed.headers, built):
        assert all(type(part) is str for part in headers._items)
    assert built == routed.headers and len(built) == 10
    assert [name for name, _ in built][:3] == ["Via", "Max-Forwards", "From"]
    assert built.lines("Via") == ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9;rport",
                                  "SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bKsecond"]
    assert built.get_all("record-route") == ["<sip:p1;lr>", "<sip:p2;lr>"]
    assert built.with_added("Subject", "hi", first=True).get("subject") == "hi"


def test_size_cap() -> None:
    big = message(body=b"x" * (MAX_MESSAGE - len(message())))
    assert len(big) > MAX_MESSAGE
    error = refused(big, 513, "Too Large")
    assert parse_error_response(big, error) is not None
    dropped(message("SIP/2.0 200 OK", body=b"x" * MAX_MESSAGE), "Too Large")


def test_header_section_bytes_must_be_clean() -> None:
    refused(message(extra=("Subject: a\nInjected: yes",)), 400, "Bare CR or LF")
    refused(message(extra=("Subject: a\rb",)), 400, "Bare CR or LF")
    refused(message(extra=("Subject: caf\xe9",)).replace("é".encode(), b"\xe9"), 400, "UTF-8")
    refused(message(extra=("No colon here",)), 400, "without a colon")
    refused(message(extra=("Bad Name: x",)), 400, "not a token")
    refused(message(extra=(": empty name",)), 400, "not a token")
    refused(message().replace(b"\r\nVia", b"\r\n Via", 1), 400, "Continuation line before")


# -- headers -------------------------------------------------------------------------------------
def test_folding_and_compact_forms() -> None:
    data = (
        b"REGISTER sip:example.com SIP/2.0\r\n"
        b"v: SIP/2.0/UDP 192.0.2.1\r\n"
        b"\t;branch=z9hG4bKx,\r\n"
        b"   SIP/2.0/TCP 192.0.2.2;branch=z9hG4bKy\r\n"
        b"f: <sip:a@example.com>;tag=1\r\nt: <sip:a@example.com>\r\n"
        b"i: id@host\r\nCSeq: 7 REGISTER\r\nm: <sip:a@192.0.2.1>;expires=60\r\n"
        b"k: path,\r\n outbound\r\nl: 0\r\n\r\n"
    )
    request = parse_message_untrusted(data)
    assert [name for name, _ in request.headers] == [
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Supported", "Content-Length",
    ]
    assert [v.branch for v in request.vias] == ["z9hG4bKx", "z9hG4bKy"]
    assert request.headers.get_all("Supported") == ["path", "outbound"]
    assert request.contacts[0].param("expires") == "60"


@pytest.mark.parametrize("name", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_header_is_named(name: str) -> None:
    error = refused(message(drop=(name,)), 400, f"Missing {name} header")
    if name == "Via":
        assert parse_error_response(message(drop=(name,)), error) is None  # nowhere to answer
    else:
        assert parse_error_response(message(drop=(name,)), error) is not None
    dropped(message("SIP/2.0 200 OK", drop=(name,)), f"Missing {name} header")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("Max-Forwards: 256", "larger than 255"),
        ("Max-Forwards: seventy", "Malformed Max-Forwards"),
        ("Expires: 4294967296", "Expires value is too large"),
        ("Min-Expires: 99999999999999", "Min-Expires value is too large"),
        ("Contact: <sip:a@b.c>;expires=4294967296", "Contact expires parameter"),
        ("Contact: *, <sip:a@b.c>", "Contact \\*"),
        ("Contact: <sip:a@b.c>;;", "Malformed Contact header"),
        ("Content-Type: sdp", "Malformed Content-Type"),
        ("Call-ID: again@host", "Multiple values in single-value header fields: Call-ID"),
        ("Via: SIP/2.0/UDP host;branch=a b", "Malformed Via header"),
        ("Via: ,", "Empty Via"),
    ],
)
def test_scalar_and_structure_checks(line: str, why: str) -> None:
    refused(message(extra=(line,), drop=("Max-Forwards",) if "Max-Forwards" in line else ()),
            400, why)


def test_tolerated_values() -> None:
    ok = [
        "Expires: 4294967295", "Expires: Thu, 01 Dec 2044 16:00:00 GMT", "Contact: *",
        "Max-Forwards: 0", "Retry-After: 18000;duration=3600",
        "Contact: <sip:a@b.c>;expires=4294967295, \"B\" <sips:b@[::1]:5061>",
    ]
    for line in ok:
        drop = ("Max-Forwards",) if "Max-Forwards" in line else ()
        assert parse_message_untrusted(message(extra=(line,), drop=drop))


def test_responses_may_exceed_request_only_limits() -> None:
    # Max-Forwards is a request header; a response carrying a silly one is still fine.
    assert parse_message_untrusted(
        message("SIP/2.0 200 OK", extra=("Max-Forwards: 999",), drop=("Max-Forwards",))
    )


def test_hostile_sizes_stay_fast() -> None:
    started = time.perf_counter()
    cases = [
        message(cseq="9" * 60000 + " OPTIONS"),
        message(extra=("From: " + "a " * 30000,), drop=("From",)),
        message(extra=("Via: SIP/2.0/UDP " + "a." * 30000 + ";x",), drop=("Via",)),
        message(extra=("Contact: <sip:" + ";a" * 30000 + ">",)),
        message(extra=("X: y",) * 6000),
        b"\r\n" * 30000,
    ]
    for data in cases:
        try:
            parse_message_untrusted(data[:MAX_MESSAGE])
        except SIPParseError as exc:
            assert not exc.reason.startswith("Internal")
    assert time.perf_counter() - started < 2.0


# -- StreamFramer ------------------------------------------------------------------------------
def test_framer_cuts_messages_by_content_length() -> None:
    first, second = message(body=b"one"), message(body=b"second body")
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n" + first + b"\r\n" + second[:20]) == [first]
    assert framer.take_keepalive_pings() == 1
    assert framer.feed(second[20:]) == [second]
    assert framer.buffered == 0 and framer.take_keepalive_pings() == 0


def test_framer_reads_a_folded_content_length() -> None:
    data = message(body=b"abc").replace(b"Content-Length: 3", b"Content-Length:\r\n 3")
    assert StreamFramer().feed(data + b"rest") == [data]
    assert parse_message_untrusted(data).body == b"abc"


def test_framer_byte_by_byte() -> None:
    stream = message(body=b"abc") + message("SIP/2.0 200 OK") + message(body=b"\r\n\r\n")
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(len(stream)):
        out += framer.feed(stream[i : i + 1])
    assert b"".join(out) == stream and len(out) == 3
    assert [parse_message_untrusted(m).body for m in out] == [b"abc", b"", b"\r\n\r\n"]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (message().replace(b"Content-Length: 0\r\n", b""), "Missing Content-Length"),
        (message(length="x"), "Malformed Content-Length"),
        (message(extra=("l: 0",)), "Multiple values"),
        (message(length=str(MAX_MESSAGE)), "Too Large"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"y" * MAX_MESSAGE, "larger than 64 KiB"),
    ],
)
def test_framer_refuses_what_it_cannot_frame(data: bytes, why: str) -> None:
    with pytest.raises(SIPParseError, match=why):
        StreamFramer().feed(data)


def test_keepalive_helper() -> None:
    assert is_keepalive(b"\r\n\r\n") and is_keepalive(b"\r\n")
    assert not is_keepalive(message())


# -- sip.validate ---------------------------------------------------------------------------------
def request(*extra: str, start: str = "INVITE sip:bob@example.com SIP/2.0", body: bytes = b"") -> Request:
    parsed = parse_message_untrusted(message(start, extra=extra, body=body))
    assert isinstance(parsed, Request)
    return parsed


def test_check_request_accepts_an_ordinary_invite() -> None:
    assert check_request(request("Content-Type: application/sdp", "Accept: application/sdp",
                                 body=b"v=0\r\n")) is None


def test_extensions() -> None:
    assert check_request(request("Require: 100rel"), supported_extensions=frozenset({"100REL"})) is None
    response = check_request(request("Require: 100rel, timer", "Proxy-Require: foo"))
    assert response is not None and response.status == 420
    assert response.headers.get_all("Unsupported") == ["100rel", "timer", "foo"]
    assert check_request(request("Proxy-Require: foo"), check_proxy_require=False) is None
    cancel = request("Require: 100rel", start="CANCEL sip:bob@example.com SIP/2.0")
    assert check_request(cancel) is None
    ack = request("Require: x", start="ACK tel:+1555 SIP/2.0")
    assert check_request(ack) is None  # an ACK is never answered


@pytest.mark.parametrize(
    ("accept", "status"),
    [("*/*", None), ("application/*", None), ("text/html, application/sdp;q=0.5", None),
     ("application/sdp;q=0", 406), ("text/plain", 406), ("", 406)],
)
def test_accept(accept: str, status: int | None) -> None:
    response = check_request(request(f"Accept: {accept}"))
    assert (None if response is None else response.status) == status
    assert check_request(request(f"Accept: {accept}", start="OPTIONS sip:bob@example.com SIP/2.0")) is None


def test_bodies() -> None:
    response = check_request(request("Content-Type: application/sdp", "Content-Encoding: gzip",
                                     body=b"\x1f\x8b"))
    assert response is not None and response.status == 415
    assert response.headers.get("Accept-Encoding") == "identity"
    response = check_request(request(body=b"v=0\r\n"))
    assert response is not None and (response.status, response.reason) == (
        400, "Missing Content-Type header for a message body",
    )
    response = check_request(request("Content-Type: text/plain", body=b"hi"),
                             accepted_content_types=frozenset({"text/plain", "application/sdp"}))
    assert response is None
    # None: any body passes (a B2BUA relaying inside a dialog), the other checks still hold.
    assert check_request(request("Content-Type: application/dtmf-relay", body=b"Signal=5"),
                         accepted_content_types=None) is None
    response = check_request(request("Require: 100rel", body=b"v=0\r\n"), accepted_content_types=None)
    assert response is not None and response.status == 420


def test_rejections_copy_the_dialog_headers_and_tag_the_to() -> None:
    original = request()
    response = check_request(original, supported_schemes=frozenset({"sips"}))
    assert response is not None and (response.status, response.reason) == (
        416, "Unsupported URI Scheme: sip",
    )
    for name in ("Via", "From", "Call-ID", "CSeq"):
        assert response.headers.get(name) == original.headers.get(name)
    assert (response.headers.get("To") or "").startswith("<sip:bob@example.com>;tag=")


def test_error_response_for_unparseable_requests() -> None:
    data = message(extra=("Max-Forwards: 300",), drop=("Max-Forwards",))
    error = refused(data, 400, "Max-Forwards")
    answer = build_error_response(data, error)
    assert answer is not None
    assert (answer.status, answer.reason) == (400, "Max-Forwards is larger than 255")
    assert answer.headers.get("Via") == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9;rport"
    assert answer.to.tag and answer.from_.tag == "9fxced76sl"
    raw = parse_error_response(data, error)
    assert raw is not None
    sent = parse_message_untrusted(raw)
    assert isinstance(sent, Response) and (sent.status, sent.reason) == (400, answer.reason)
    # Each answer gets its own To tag; everything else is the same.
    assert sent.headers.without("Content-Length", "To") == answer.headers.without("To")
    assert sent.to.tag and sent.to.uri == answer.to.uri
    # Nothing to answer: an ACK, a response, garbage without a Via.
    ack = message("ACK sip:bob@example.com SIP/2.0", extra=("Max-Forwards: 300",), drop=("Max-Forwards",))
    assert parse_error_response(ack, refused(ack, 400)) is None
    assert parse_error_response(b"\x00\xff garbage", SIPParseError("x")) is None
    assert parse_error_response(message("SIP/2.0 200 OK"), SIPParseError("x", is_response=True)) is None


def test_make_response_appends_the_to_tag_verbatim() -> None:
    original = request().replace(headers=request().headers.with_replaced("To", "Bob <sip:bob@example.com>"))
    response = make_response(original, 486, to_tag="abc")
    assert response.headers.get("To") == "Bob <sip:bob@example.com>;tag=abc"
    assert make_response(original, 100, to_tag="abc").headers.get("To") == "Bob <sip:bob@example.com>"
    assert isinstance(response.headers, Headers)
