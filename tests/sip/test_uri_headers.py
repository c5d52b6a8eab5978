"""URIs (RFC 3261 19.1, 25.1) and structured header values (NameAddr, Via, CSeq, Headers)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.errors import SIPParseError
from sip.headers import (
    CSeq,
    Headers,
    NameAddr,
    Via,
    canonical_name,
    parse_params,
    sent_via,
    split_commas,
    validate_name_addr,
    validate_via,
)
from sip.uri import URI, escape_user, parse_hostport


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@atlanta.com",
        "sips:alice:secretword@atlanta.com;transport=tcp",
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
        "sip:alice@192.0.2.4:5061",
        "sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com",
        "sip:alice;day=tuesday@atlanta.com",
        "sip:alice@[2001:db8::10]:5070;maddr=[2001:db8::1];lr",
        "sip:%61lice@atlanta.com;%6C%72",
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
    ],
)
def test_uri_round_trips_as_given(text: str) -> None:
    assert str(URI.parse(text)) == text


def test_uri_parts() -> None:
    uri = URI.parse("SIPS:alice:pw@Atlanta.COM:5061;transport=TLS;lr?subject=x&priority=urgent")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sips", "alice", "pw", "Atlanta.COM", 5061,
    )
    assert uri.params == (("transport", "TLS"), ("lr", None))
    assert uri.param("TRANSPORT") == "TLS" and uri.param("lr") == "" and uri.param("x") is None
    assert uri.headers == "subject=x&priority=urgent"
    assert uri.aor == "alice@atlanta.com"
    ipv6 = URI.parse("sip:[2001:db8::1]")
    assert (ipv6.host, ipv6.port, ipv6.user) == ("[2001:db8::1]", None, None)


@pytest.mark.parametrize(
    ("text", "scheme", "opaque"),
    [("tel:+1-201-555-0123", "tel", "+1-201-555-0123"), ("mailto:a@b.c", "mailto", "a@b.c"),
     ("urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "urn", "uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6")],
)
def test_other_schemes_stay_opaque(text: str, scheme: str, opaque: str) -> None:
    uri = URI.parse(text)
    assert (uri.scheme, uri.opaque, uri.is_sip) == (scheme, opaque, False)
    assert str(uri) == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("alice@atlanta.com", "no scheme"),
        ("sip:", "Empty URI"),
        ("sip:@atlanta.com", "Empty user"),
        ("sip:alice@", "no host"),
        ("sip:alice@atlanta.com:99999", "port"),
        ("sip:alice@atlanta.com:http", "port"),
        ("sip:al ice@atlanta.com", "Whitespace"),
        ("sip:<alice@atlanta.com>", "<>"),
        ("sip:alice@[2001:db8::zz]", "IPv6"),
        ("sip:a%zzb@atlanta.com", "escape"),
        ("sip:alice@atlanta.com;=x", "parameter"),
        ("sip:alice@atlanta.com?noequals", "headers"),
        ("1sip:alice@atlanta.com", "scheme"),
        ("tel:+1 555", "Whitespace"),
    ],
)
def test_bad_uris_are_refused_naming_the_defect(text: str, why: str) -> None:
    with pytest.raises(SIPParseError, match=why):
        URI.parse(text)


# RFC 3261 19.1.4, the examples of equivalent and non-equivalent URIs.
@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
        ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
        ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
         "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"),
        ("sip:alice@atlanta.com?subject=project%20x&priority=urgent",
         "sip:alice@atlanta.com?priority=urgent&subject=project%20x"),
    ],
)
def test_equivalent_uris(a: str, b: str) -> None:
    assert URI.parse(a).equivalent(URI.parse(b))
    assert URI.parse(b).equivalent(URI.parse(a))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
        ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ],
)
def test_non_equivalent_uris(a: str, b: str) -> None:
    assert not URI.parse(a).equivalent(URI.parse(b))


def test_parse_hostport() -> None:
    assert parse_hostport("example.com") == ("example.com", None)
    assert parse_hostport("[::1]:5060") == ("[::1]", 5060)
    for bad in ("", "exa mple.com", "[::1", "host:0", "host:"):
        with pytest.raises(SIPParseError):
            parse_hostport(bad)


# -- NameAddr --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "display", "uri", "params"),
    [
        ('"Alice" <sip:alice@atlanta.com>;tag=1928301774', "Alice", "sip:alice@atlanta.com",
         (("tag", "1928301774"),)),
        ("Bob Smith <sip:bob@biloxi.com>", "Bob Smith", "sip:bob@biloxi.com", ()),
        ('"A \\"quoted\\" \\\\ name" <sip:a@b.c>', 'A "quoted" \\ name', "sip:a@b.c", ()),
        ("<sip:a@b.c;lr>", None, "sip:a@b.c;lr", ()),
        ("sip:a@b.c;lr", None, "sip:a@b.c", (("lr", None),)),
        ('  "x"<sip:a@b.c> ; q = 0.7 ; +sip.instance="<urn:uuid:1>"', "x", "sip:a@b.c",
         (("q", "0.7"), ("+sip.instance", '"<urn:uuid:1>"'))),
        ("<tel:+15551234>;tag=9", None, "tel:+15551234", (("tag", "9"),)),
    ],
)
def test_name_addr(text: str, display: str | None, uri: str, params: tuple[tuple[str, str | None], ...]) -> None:
    value = NameAddr.parse(text)
    assert (value.display_name, str(value.uri), value.params) == (display, uri, params)
    validate_name_addr(text)
    assert NameAddr.parse(str(value)) == value  # serialising keeps the meaning


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('"Alice <sip:alice@atlanta.com>', "Unterminated quoted"),
        ("Bell, Alexander <sip:a@b.c>", "Non-token"),
        ("<sip:a@b.c", "Unterminated <URI>"),
        ("<sip:a@b.c>;;", "Empty header parameter"),
        ("<sip:a@b.c>;tag=", "Empty value"),
        ('"x" sip:a@b.c', "not followed by <URI>"),
        ("sip:a@b.c?x=y", "enclosed in <>"),
        ("sip:a @b.c", "Spaces"),
        ("", "Empty"),
    ],
)
def test_bad_name_addrs(text: str, why: str) -> None:
    with pytest.raises(SIPParseError, match=why):
        NameAddr.parse(text)
    with pytest.raises(SIPParseError, match=why):
        validate_name_addr(text)


def test_name_addr_tags() -> None:
    to = NameAddr.parse("<sip:bob@biloxi.com>")
    assert to.tag is None
    tagged = to.with_tag("abc")
    assert tagged.tag == "abc" and str(tagged) == "<sip:bob@biloxi.com>;tag=abc"
    retagged = NameAddr.parse('"Bob" <sip:bob@biloxi.com>;TAG=old;lr').with_tag("new")
    assert str(retagged) == '"Bob" <sip:bob@biloxi.com>;lr;tag=new'
    untagged = retagged.without_tag()
    assert untagged.tag is None and str(untagged) == '"Bob" <sip:bob@biloxi.com>;lr'


# -- Via, CSeq -----------------------------------------------------------------------------
def test_via() -> None:
    via = Via.parse("SIP/2.0/udp [2001:db8::9]:5070;branch=z9hG4bK77;rport;received=2001:db8::1")
    assert (via.transport, via.host, via.port, via.branch) == ("UDP", "[2001:db8::9]", 5070, "z9hG4bK77")
    assert via.param("rport") == "" and via.param("received") == "2001:db8::1"
    spaced = Via.parse(" SIP / 2.0 / TCP  host.example.com : 5080 ; branch = z9hG4bKx ")
    assert (spaced.host, spaced.port, spaced.branch) == ("host.example.com", 5080, "z9hG4bKx")
    assert Via.parse("SIP/2.0/UDP h.example.com").sent_by == ("h.example.com", 5060)
    assert str(via.with_params(received="192.0.2.1")).endswith(";rport;received=192.0.2.1")


@pytest.mark.parametrize(("transport", "host"), [("udp", "127.0.0.1"), ("TCP", "[2001:db8::9]"), ("UDP", "sip.example.com")])
def test_a_sent_via_is_known_as_it_would_parse(transport: str, host: str) -> None:
    # The value filed with the text is the one the parser gives it (responses bring the
    # text back and are read through the memo).
    text = sent_via(transport, host, 5070, "z9hG4bKab12")
    assert Via.parse(text) == Via._parse(text)
    assert Via.parse(text).branch == "z9hG4bKab12" and Via.parse(text).param("rport") == ""


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("SIP/2.0/UDP", "sent-by"),
        ("SIP/3.0/UDP host", "version"),
        ("HTTP/1.1 host", "SIP/2.0"),
        ("SIP/2.0/UDP host:99999", "port"),
        ("SIP/2.0/UDP host:0", "Bad port"),
        ("SIP/2.0/UDP [::1::2]:5060", "Bad IPv6 reference"),
        ("SIP/2.0/UDP [1:2:3:4:5:6:7:8:9]", "Bad IPv6 reference"),
        ("SIP/2.0/UDP host;;", "Empty header parameter"),
        ("SIP/2.0/UDP host;branch=a b", "parameter"),
    ],
)
def test_bad_vias(text: str, why: str) -> None:
    with pytest.raises(SIPParseError, match=why):
        Via.parse(text)
    with pytest.raises(SIPParseError, match=why):
        validate_via(text)


def test_cseq() -> None:
    assert CSeq.parse("0009 INVITE") == CSeq(9, "INVITE")
    assert CSeq.parse(f"{2**31 - 1} ACK").number == 2**31 - 1
    for bad, why in ((f"{2**31} ACK", "too large"), ("9" * 5000 + " ACK", "too large"),
                     ("INVITE", "Malformed"), ("1 2 3", "Malformed"), ("-1 BYE", "Malformed")):
        with pytest.raises(SIPParseError, match=why):
            CSeq.parse(bad)


# -- Headers and helpers ------------------------------------------------------------------
def test_split_commas_respects_quotes_and_brackets() -> None:
    value = '"Doe, John" <sip:j@x.org;a=1,2>, <sip:k@y.org>,sip:z@w.org'
    assert split_commas(value) == ['"Doe, John" <sip:j@x.org;a=1,2>', "<sip:k@y.org>", "sip:z@w.org"]
    assert split_commas("a,,b , ") == ["a", "b"]


def test_parse_params() -> None:
    assert parse_params(' ; a = 1 ;b; c="x;y"') == (("a", "1"), ("b", None), ("c", '"x;y"'))
    assert parse_params("") == ()
    with pytest.raises(SIPParseError, match="Unterminated"):
        parse_params(';c="x')


def test_headers_lookup_by_any_spelling() -> None:
    headers = Headers([("v", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b"), ("VIA", "SIP/2.0/TCP c"),
                       ("i", "abc@host"), ("X-Custom", "1")])
    assert [name for name, _ in headers] == ["Via", "Via", "Call-ID", "X-Custom"]
    assert headers.get("via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert len(headers.get_all("Via")) == 3 and len(headers.lines("v")) == 2
    assert headers.get("Call-ID") == "abc@host" and "x-custom" in headers
    assert canonical_name("cseq") == "CSeq" and canonical_name("X-Custom") == "X-Custom"
    trimmed = headers.with_first_value_removed("Via")
    assert trimmed.get_all("Via") == ["SIP/2.0/UDP b", "SIP/2.0/TCP c"]
    replaced = headers.with_replaced("Call-ID", "new@host")
    assert replaced.get("i") == "new@host" and [n for n, _ in replaced][2] == "Call-ID"


@given(st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40))
def test_escape_user_gives_a_user_part_that_reads_back_as_the_text(text: str) -> None:
    uri = URI.parse(f"sip:{escape_user(text)}@example.com")
    assert uri.unescaped_user == text and uri.host == "example.com"


def test_escape_user_leaves_the_user_grammar_alone() -> None:
    assert escape_user("alice.smith+1;x=y") == "alice.smith+1;x=y"
    assert escape_user("front desk@1") == "front%20desk%401"
    assert escape_user("100%") == "100%25"
