"""SDP (RFC 4566): the model, byte-identical round trips, the NAT rewrite, hostile input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sip.errors import SDPError, SIPValueError
from sip.parse import parse_message_untrusted
from sip.sdp import Media, SessionDescription, mentions_private_ipv4, rewrite_connection_addresses

TORTURE = Path(__file__).resolve().parents[2].parent / "shared" / "sip-torture"

OFFER = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844527 IN IP4 192.168.1.20\r\n"
    b"s=Talk\r\n"
    b"i=a session with unknown lines kept in order\r\n"
    b"c=IN IP4 192.168.1.20\r\n"
    b"b=AS:64\r\n"
    b"t=0 0\r\n"
    b"a=tool:phone 1.0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=sendonly\r\n"
    b"m=video 51372/2 RTP/AVP 31 32\r\n"
    b"c=IN IP4 10.0.0.7\r\n"
    b"a=rtcp:53020 IN IP4 10.0.0.7\r\n"
    b"x=an unknown letter\r\n"
)


def test_model_reads_session_and_media_levels() -> None:
    sdp = SessionDescription.parse(OFFER)
    assert sdp.origin is not None
    assert (sdp.origin.username, sdp.origin.sess_version, sdp.origin.address) == (
        "alice", "2890844527", "192.168.1.20",
    )
    assert sdp.session_name == "Talk"
    assert sdp.connection is not None and sdp.connection.address == "192.168.1.20"
    assert sdp.attributes == (("tool", "phone 1.0"),)
    audio, video = sdp.media
    assert (audio.media, audio.port, audio.port_count, audio.proto) == ("audio", 49170, None, "RTP/AVP")
    assert audio.formats == ("0", "8", "101")
    assert audio.connection is None  # the session-level c= applies
    assert audio.attribute("rtpmap") == "0 PCMU/8000"
    assert audio.attribute("fmtp") == "101 0-15"
    assert audio.direction == "sendonly"
    assert (video.port, video.port_count, video.formats) == (51372, 2, ("31", "32"))
    assert video.connection is not None and video.connection.address == "10.0.0.7"
    assert video.direction == "sendrecv"
    assert [line.type for line in video.lines] == ["m", "c", "a", "x"]


@pytest.mark.parametrize(
    "body",
    [
        OFFER,
        OFFER.replace(b"\r\n", b"\n"),  # RFC 4566 5: parsers SHOULD accept bare LF
        OFFER[:-2],  # no line ending on the last line
        OFFER + b"\r\n",  # a trailing blank line
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=\xe9t\xe9\r\nt=0 0\r\n",  # not UTF-8
        b"v=0\r\n",
    ],
    ids=["crlf", "lf", "unterminated", "blank-line", "latin-1", "minimal"],
)
def test_untouched_description_serialises_byte_identically(body: bytes) -> None:
    assert SessionDescription.parse(body).to_bytes() == body


def test_torture_bodies_parse() -> None:
    # The SDP bodies of RFC 4475's well-formed messages read as two media sections.
    for name in ("wsinv", "esc01", "longreq", "baddate"):
        message = parse_message_untrusted((TORTURE / f"{name}.dat").read_bytes())
        sdp = SessionDescription.parse(message.body)
        assert [m.media for m in sdp.media] == ["audio", "video"]
        assert sdp.media[1].attribute("rtpmap") == "31 LPC"
        assert sdp.to_bytes() == message.body


def test_rewrite_replaces_private_addresses_and_nothing_else() -> None:
    out = rewrite_connection_addresses(OFFER, "203.0.113.9")
    expected = (
        OFFER.replace(b"IN IP4 192.168.1.20", b"IN IP4 203.0.113.9")
        .replace(b"c=IN IP4 10.0.0.7", b"c=IN IP4 203.0.113.9")
        .replace(b"a=rtcp:53020 IN IP4 10.0.0.7", b"a=rtcp:53020 IN IP4 203.0.113.9")
    )
    assert out == expected
    assert b"192.168." not in out and b"10.0.0.7" not in out


@pytest.mark.parametrize(
    "address", ["10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.0.1", "100.64.1.1",
                "100.127.255.1", "169.254.10.10"],
)
def test_every_private_range_is_rewritten(address: str) -> None:
    body = f"v=0\r\nc=IN IP4 {address}\r\nm=audio 4000 RTP/AVP 0\r\n".encode()
    sdp = SessionDescription.parse(rewrite_connection_addresses(body, "198.51.100.1"))
    assert sdp.connection is not None and sdp.connection.address == "198.51.100.1"


@pytest.mark.parametrize(
    "address", ["198.51.100.20", "172.32.0.1", "100.128.0.1", "0.0.0.0", "224.2.1.1/127",
                "host.example.com", "2001:db8::1"],
)
def test_public_hold_multicast_and_names_are_kept(address: str) -> None:
    addrtype = "IP6" if ":" in address else "IP4"
    body = f"v=0\r\nc=IN {addrtype} {address}\r\n".encode()
    assert rewrite_connection_addresses(body, "198.51.100.1") is body


def test_unconditional_rewrite_spares_only_hold_and_multicast() -> None:
    body = (
        b"v=0\r\no=- 1 1 IN IP4 198.51.100.20\r\nc=IN IP4 host.example.com\r\n"
        b"m=audio 4000 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n"
        b"m=video 4002 RTP/AVP 31\r\nc=IN IP4 224.2.1.1/127/3\r\n"
    )
    out = rewrite_connection_addresses(body, "2001:db8::5", only_private=False)
    assert out == (
        b"v=0\r\no=- 1 1 IN IP6 2001:db8::5\r\nc=IN IP6 2001:db8::5\r\n"
        b"m=audio 4000 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n"
        b"m=video 4002 RTP/AVP 31\r\nc=IN IP4 224.2.1.1/127/3\r\n"
    )


def test_rewrite_refuses_a_bad_replacement_address() -> None:
    with pytest.raises(SIPValueError):
        rewrite_connection_addresses(OFFER, "not-an-ip")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "v=0"),
        (b"o=- 1 1 IN IP4 192.0.2.1\r\nv=0\r\n", "v=0"),
        (b"v=1\r\n", "v=0"),
        (b"v=0\r\nnot a line\r\n", "line 2"),
        (b"v=0\r\nc=IN IP4\r\n", "c="),
        (b"v=0\r\no=- 1 IN IP4 192.0.2.1\r\n", "o="),
        (b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n", "port"),
        (b"v=0\r\nm=audio RTP/AVP\r\n", "m="),
        (b"v=0\r\ns=a\rb\r\n", "Control"),
        (b"v=0\r\n" + b"a=x\r\n" * 20000, "too large"),
    ],
)
def test_malformed_bodies_raise_sdp_error_naming_the_defect(body: bytes, why: str) -> None:
    with pytest.raises(SDPError, match=why):
        SessionDescription.parse(body)
    with pytest.raises(SDPError):
        rewrite_connection_addresses(body, "192.0.2.1")


_LINES = st.sampled_from(
    [b"v=0", b"o=- 1 2 IN IP4 10.0.0.1", b"s=-", b"c=IN IP4 192.168.0.9", b"t=0 0",
     b"m=audio 4000 RTP/AVP 0 8", b"a=rtpmap:0 PCMU/8000", b"a=rtcp:4001 IN IP4 10.0.0.1",
     b"c=IN IP6 ::1", b"m=video 0/2 RTP/AVP 31", b"a=sendonly", b"", b"x=?"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_LINES, st.binary(max_size=30)), max_size=12),
       st.sampled_from([b"\r\n", b"\n"]))
@example(lines=[b"m=audio 4000 RTP/AVP 0 8", b"o="], eol=b"\r\n")  # o= in a media section
def test_hostile_bodies_raise_only_sdp_error(lines: list[bytes], eol: bytes) -> None:
    body = eol.join(lines)
    for candidate in (body, b"v=0" + eol + body):
        try:
            sdp = SessionDescription.parse(candidate)
        except SDPError:
            continue
        assert sdp.to_bytes() == candidate
        rewritten = rewrite_connection_addresses(candidate, "203.0.113.1")
        # The rewrite's output is itself SDP with no private IPv4 left in c= lines.
        again = SessionDescription.parse(rewritten)
        sections: tuple[SessionDescription | Media, ...] = (again, *again.media)
        for media in sections:
            connection = media.connection
            if connection is not None:
                assert not connection.address.startswith(("10.", "192.168."))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_sdp_error(data: bytes) -> None:
    try:
        SessionDescription.parse(data)
        rewrite_connection_addresses(data, "203.0.113.1")
    except SDPError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_LINES, st.sampled_from([b"c=IN IP4 172.20.1.1", b"o=- 1 1 IN IP4 100.64.0.1",
                                                    b"c=IN IP4 8.8.8.8", b"c=IN IP4 10.1.2.3/127"])),
                max_size=12))
def test_the_private_address_precheck_never_skips_a_body_the_rewrite_would_change(lines: list[bytes]) -> None:
    body = b"\r\n".join([b"v=0", *lines]) + b"\r\n"
    try:
        rewritten = rewrite_connection_addresses(body, "203.0.113.1")
    except SDPError:
        return
    if rewritten != body:
        assert mentions_private_ipv4(body)
    assert not mentions_private_ipv4(b"v=0\r\nc=IN IP4 203.0.113.9\r\nm=audio 4000 RTP/AVP 0\r\n")


def test_only_the_sessions_origin_is_rewritten() -> None:
    # RFC 4566 has no o= in a media description; the parser lets one through, and the
    # rewrite passes it on as it came instead of failing on it.
    body = b"v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\nm=audio 4000 RTP/AVP 0 8\r\no=\r\nc=IN IP4 10.0.0.2\r\n"
    assert rewrite_connection_addresses(body, "203.0.113.1") == (
        b"v=0\r\no=- 1 1 IN IP4 203.0.113.1\r\nm=audio 4000 RTP/AVP 0 8\r\no=\r\nc=IN IP4 203.0.113.1\r\n"
    )
