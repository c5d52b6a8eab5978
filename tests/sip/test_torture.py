"""RFC 4475 torture messages: every verdict of shared/sip-torture/MANIFEST.tsv holds.

Each message has one check below, named after its file.  Valid messages must parse and
read back specific facts; invalid requests must be refused with the listed status and a
reason phrase naming the defect (and the transport's answer must carry it); invalid
responses must be dropped; semantic cases get the answer :func:`check_request` gives.

Choices where RFC 4475 allows either (documented in :mod:`sip.parse`):
baddate (3.1.2.12) and badaspec (3.1.2.14) are tolerated; regbadct (3.1.2.13) is a 400.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest

from sip.errors import SIPParseError
from sip.message import Request, Response
from sip.parse import parse_message_untrusted
from sip.uri import URI
from sip.validate import check_request, parse_error_response

TORTURE = Path(__file__).resolve().parents[2].parent / "shared" / "sip-torture"


def _manifest() -> list[tuple[str, str, str, str]]:
    with (TORTURE / "MANIFEST.tsv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["file", "class", "rfc4475", "what a conforming server does with it"]
    return [(r[0], r[1], r[2], r[3]) for r in rows[1:] if r]


MANIFEST = _manifest()


def _data(name: str) -> bytes:
    return (TORTURE / f"{name}.dat").read_bytes()


# -- verdict helpers ------------------------------------------------------------------------
def parsed_request(name: str) -> Request:
    message = parse_message_untrusted(_data(name))
    assert isinstance(message, Request)
    return message


def parsed_response(name: str) -> Response:
    message = parse_message_untrusted(_data(name))
    assert isinstance(message, Response)
    return message


def refused(name: str, status: int, *words: str) -> SIPParseError:
    """The request is refused with ``status``; the reason names the defect; the answer the
    transport sends is that status line."""
    data = _data(name)
    with pytest.raises(SIPParseError) as info:
        parse_message_untrusted(data)
    error = info.value
    assert not error.is_response
    assert error.status == status
    for word in words:
        assert word in error.reason
    answer = parse_error_response(data, error)
    assert answer is not None
    assert answer.startswith(f"SIP/2.0 {status} {error.reason}\r\n".encode())
    return error


def dropped(name: str) -> None:
    data = _data(name)
    with pytest.raises(SIPParseError) as info:
        parse_message_untrusted(data)
    assert info.value.is_response
    assert parse_error_response(data, info.value) is None


def rejected_after_parse(name: str, status: int, *words: str) -> Response:
    response = check_request(parsed_request(name))
    assert response is not None
    assert response.status == status
    for word in words:
        assert word in response.reason
    assert response.to.tag  # RFC 3261 8.2.6.2
    return response


def processed(request: Request) -> None:
    assert check_request(request) is None


# -- valid (3.1.1) ----------------------------------------------------------------------
def wsinv() -> None:
    request = parsed_request("wsinv")
    assert request.method == "INVITE"
    assert request.uri.param("unknownparam") == ""
    assert request.to.uri.user == "vivekg" and request.to.tag == "1918181833n"
    assert request.from_.display_name == 'J Rosenberg \\"'
    assert request.from_.tag == "98asjd8"
    assert request.max_forwards == 68  # "0068": leading zeros
    assert (request.cseq.number, request.cseq.method) == (9, "INVITE")
    vias = request.vias
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert request.headers.get("Subject") == ""
    assert request.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert request.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    (contact,) = request.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.param("newparam") == "newvalue"
    assert contact.param("secondparam") == "" and contact.param("q") == "0.33"
    assert request.headers.get("Route") == (
        "<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"
    )
    assert len(request.body) == 150 and request.body.startswith(b"v=0\r\n")
    processed(request)


def intmeth() -> None:
    request = parsed_request("intmeth")
    assert request.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert request.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert request.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert request.uri.host == "example.com"
    assert request.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert request.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert request.from_.param("fromParam''~+*_!.-%") == '"работающий"'
    assert request.from_.tag == "_token~1'+`*%!-."
    assert request.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert request.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    # An unknown method is the application's 405/501, never a 400.
    processed(request)


def esc01() -> None:
    request = parsed_request("esc01")
    assert request.uri.unescaped_user == "sips:user@example.com"
    assert request.uri.host == "example.net"
    assert request.to.uri.equivalent(URI.parse("sip:user@example.com"))
    assert request.from_.uri.unescaped_user == "I have spaces"
    (contact,) = request.contacts
    assert contact.uri.unescaped_user == "caller"
    assert contact.uri.equivalent(URI.parse("sip:caller@host5.example.net;lr;name=value%2541"))
    assert not contact.uri.equivalent(URI.parse("sip:caller@host5.example.net;lr;name=valueA"))
    assert request.content_type == "application/sdp"


def escnull() -> None:
    request = parsed_request("escnull")
    assert request.to.uri.unescaped_user == "null-\x00-null"
    assert [c.uri.unescaped_user for c in request.contacts] == ["\x00", "\x00\x00"]


def esc02() -> None:
    request = parsed_request("esc02")
    assert request.method == "RE%47IST%45R" and request.method != "REGISTER"
    assert request.cseq.method == "RE%47IST%45R"
    assert request.to.display_name == "%Z%45"
    assert request.top_via.branch == "z9hG4bK209%fzsnel234"
    # Header names are not unescaped either: C%6Fntact is an extension header, so there
    # are two Contact values (RFC 4475 3.1.1.5), not three.
    assert [c.uri.host for c in request.contacts] == ["host1.example.com", "host3.example.com"]
    assert request.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    processed(request)


def lwsdisp() -> None:
    request = parsed_request("lwsdisp")
    assert request.from_.display_name == "caller"
    assert request.from_.uri.user == "caller"


def longreq() -> None:
    request = parsed_request("longreq")
    vias = request.vias
    assert len(vias) == 34
    assert vias[0].host == "sip33.example.com" and vias[-1].param("received") == "192.0.2.5"
    assert request.to.display_name is not None
    assert request.to.display_name.startswith("I have a user name of extremeextreme")
    assert request.to.uri.port == 6000
    assert request.to.uri.has_param("verylonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglongParameterNameWithNoValue")
    assert len(request.from_.uri.user or "") == 5 * len("amazinglylongcallername")
    assert len(request.body) == 150


def dblreq() -> None:
    request = parsed_request("dblreq")
    assert request.method == "REGISTER"
    assert request.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"
    assert request.body == b""  # the INVITE after Content-Length is discarded


def semiuri() -> None:
    request = parsed_request("semiuri")
    assert request.uri.user == "user;par=u%40example.net"
    assert request.uri.unescaped_user == "user;par=u@example.net"
    assert request.uri.host == "example.com" and request.uri.params == ()
    assert len(request.headers.get_all("Accept")) == 6


def transports() -> None:
    request = parsed_request("transports")
    assert [v.transport for v in request.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert request.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def mpart01() -> None:
    data = _data("mpart01")
    request = parsed_request("mpart01")
    assert request.method == "MESSAGE"
    assert request.content_type == "multipart/mixed"
    assert len(request.body) == 553 and data.endswith(request.body)


def unreason() -> None:
    response = parsed_response("unreason")
    assert response.status == 200
    assert response.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"


def noreason() -> None:
    response = parsed_response("noreason")
    assert (response.status, response.reason) == (100, "")


# -- invalid (3.1.2) -------------------------------------------------------------------------
def badinv01() -> None:
    refused("badinv01", 400, "Via")


def clerr() -> None:
    refused("clerr", 400, "Content-Length larger")


def ncl() -> None:
    refused("ncl", 400, "Negative Content-Length")


def scalar02() -> None:
    refused("scalar02", 400, "CSeq", "too large")


def scalarlg() -> None:
    dropped("scalarlg")


def quotbal() -> None:
    refused("quotbal", 400, "To", "Unterminated quoted")


def ltgtruri() -> None:
    refused("ltgtruri", 400, "Request-URI", "<>")


def lwsruri() -> None:
    refused("lwsruri", 400, "Whitespace inside the Request-URI")


def lwsstart() -> None:
    refused("lwsstart", 400, "Multiple SP")


def trws() -> None:
    refused("trws", 400, "Trailing whitespace")


def escruri() -> None:
    refused("escruri", 400, "headers", "Request-URI")


def baddate() -> None:
    # Tolerated: the Date header is never interpreted, so the call proceeds.
    request = parsed_request("baddate")
    assert request.headers.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"
    processed(request)


def regbadct() -> None:
    # RFC 3261 20: a URI with ?headers MUST be in <>; we take the 400 RFC 4475 allows
    # rather than guess where the brackets were meant to be.
    refused("regbadct", 400, "Contact", "<>")


def badaspec() -> None:
    # Tolerated: the spaces inside < > are ignored (RFC 4475 3.1.2.14 allows it).
    request = parsed_request("badaspec")
    assert request.to.display_name == "Watson, Thomas"
    assert request.to.uri == URI.parse("sip:t.watson@example.org")
    processed(request)


def baddn() -> None:
    refused("baddn", 400, "From", "display name")


def badvers() -> None:
    refused("badvers", 505, "SIP/7.0")


def mismatch01() -> None:
    refused("mismatch01", 400, "CSeq method INVITE", "request method OPTIONS")


def mismatch02() -> None:
    refused("mismatch02", 400, "CSeq method INVITE", "request method NEWMETHOD")


def bigcode() -> None:
    dropped("bigcode")


# -- semantic (3.2, 3.3) and compat (3.4) ------------------------------------------------------
def badbranch() -> None:
    request = parsed_request("badbranch")
    assert request.branch == "z9hG4bK"  # only the cookie: RFC 2543-style matching applies
    processed(request)


def insuf() -> None:
    error = refused("insuf", 400, "Missing", "Call-ID", "From", "To")
    answer = parse_error_response(_data("insuf"), error)
    assert answer is not None
    assert b"\r\nVia: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf\r\n" in answer
    assert b"\r\nCSeq: 193942 INVITE\r\n" in answer


def unkscm() -> None:
    rejected_after_parse("unkscm", 416, "Unsupported URI Scheme", "nobodyknowsthisscheme")


def novelsc() -> None:
    rejected_after_parse("novelsc", 416, "Unsupported URI Scheme", "soap.beep")


def unksm2() -> None:
    request = parsed_request("unksm2")
    assert (request.to.uri.scheme, request.to.uri.opaque) == ("isbn", "2983792873")
    assert request.from_.uri.scheme == "http"
    assert [c.uri.scheme for c in request.contacts] == ["name"]
    processed(request)


def bext01() -> None:
    response = rejected_after_parse("bext01", 420, "Bad Extension")
    assert response.headers.get_all("Unsupported") == [
        "nothingSupportsThis",
        "nothingSupportsThisEither",
        "noProxiesSupportThis",
        "norDoAnyProxiesSupportThis",
    ]


def invut() -> None:
    response = rejected_after_parse("invut", 415, "application/unknownformat")
    assert response.headers.get("Accept") == "application/sdp"


def regaut01() -> None:
    # Parsed and passed on: the registrar challenges it as if it had no credentials.
    request = parsed_request("regaut01")
    assert request.headers.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"
    processed(request)


def multi01() -> None:
    refused("multi01", 400, "Multiple values", "Call-ID", "CSeq", "From", "To", "Max-Forwards")


def mcl01() -> None:
    refused("mcl01", 400, "Multiple values", "Content-Length")


def bcast() -> None:
    response = parsed_response("bcast")
    assert response.vias[1].host == "255.255.255.255"


def zeromf() -> None:
    request = parsed_request("zeromf")
    assert request.max_forwards == 0
    processed(request)


def cparam01() -> None:
    (contact,) = parsed_request("cparam01").contacts
    assert str(contact.uri) == "sip:+19725552222@gw1.example.net"
    assert contact.uri.params == ()
    assert contact.params == (("unknownparam", None),)


def cparam02() -> None:
    (contact,) = parsed_request("cparam02").contacts
    assert contact.uri.params == (("unknownparam", None),)
    assert contact.params == ()


def regescrt() -> None:
    (contact,) = parsed_request("regescrt").contacts
    assert contact.uri.headers == "Route=%3Csip:sip.example.com%3E"
    assert str(contact.uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    assert contact.params == ()


def sdp01() -> None:
    rejected_after_parse("sdp01", 406, "Not Acceptable")


def inv2543() -> None:
    data = _data("inv2543")
    request = parsed_request("inv2543")
    assert request.branch is None and request.max_forwards is None
    assert "Content-Length" not in request.headers
    # No Content-Length on a datagram: the body is the rest of it (RFC 3261 18.3).
    assert request.body == data[data.index(b"\r\n\r\n") + 4 :]
    assert request.body.endswith(b"m=audio 49217 RTP/AVP 0\r\n")
    processed(request)


CHECKS: dict[str, Callable[[], None]] = {
    f.__name__: f
    for f in (
        wsinv, intmeth, esc01, escnull, esc02, lwsdisp, longreq, dblreq, semiuri,
        transports, mpart01, unreason, noreason, badinv01, clerr, ncl, scalar02,
        scalarlg, quotbal, ltgtruri, lwsruri, lwsstart, trws, escruri, baddate,
        regbadct, badaspec, baddn, badvers, mismatch01, mismatch02, bigcode, badbranch,
        insuf, unkscm, novelsc, unksm2, bext01, invut, regaut01, multi01, mcl01, bcast,
        zeromf, cparam01, cparam02, regescrt, sdp01, inv2543,
    )
}


@pytest.mark.parametrize(
    ("filename", "klass", "section", "verdict"), MANIFEST, ids=[row[0] for row in MANIFEST]
)
def test_verdict(filename: str, klass: str, section: str, verdict: str) -> None:
    CHECKS[filename.removesuffix(".dat")]()


def test_every_manifest_entry_has_a_check() -> None:
    assert {row[0].removesuffix(".dat") for row in MANIFEST} == set(CHECKS)
    assert {path.stem for path in TORTURE.glob("*.dat")} == set(CHECKS)


def test_invalid_class_is_never_silently_accepted() -> None:
    """Every "invalid" message is refused, dropped, or one of the documented tolerances."""
    tolerated = {"baddate.dat", "badaspec.dat"}
    for filename, klass, _, _ in MANIFEST:
        if klass != "invalid" or filename in tolerated:
            continue
        with pytest.raises(SIPParseError):
            parse_message_untrusted((TORTURE / filename).read_bytes())
