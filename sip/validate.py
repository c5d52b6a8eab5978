"""What a server answers to a request it parsed but must not process, and to bytes it could
not parse at all.

* :func:`check_request` runs the checks of RFC 3261 8.2.2 and 8.2.3 that need only the
  request and what this server supports: 416 for a Request-URI scheme it does not serve,
  420 for unsupported Require/Proxy-Require extensions, 415 for a body it cannot read,
  406 for an INVITE whose Accept it cannot satisfy.
* :func:`build_error_response` / :func:`parse_error_response` turn a
  :class:`~sip.errors.SIPParseError` raised on a request into the ``400 <defect>`` (or
  505, 513) response, copying Via, From, To, Call-ID and CSeq from whatever part of the
  request was readable (RFC 3261 8.2.6.2).  A response, an ACK, or a request without a
  usable Via gets no answer.

Reason phrases name the defect (``416 Unsupported URI Scheme: tel``) so that whoever
debugs the sending side reads the cause in their trace.
"""

from __future__ import annotations

import re

from sip.errors import SIPParseError
from sip.headers import (
    COMPACT,
    TOKEN,
    TOKEN_CHARS,
    Headers,
    NameAddr,
    canonical_name,
    split_commas,
)
from sip.message import Request, Response, make_response, new_tag
from sip.parse import MAX_MESSAGE
from sip.uri import HOST_RE

_ECHO_MAX = 40  # longest piece of the request echoed in a reason phrase
_COPIED = ("Via", "From", "To", "Call-ID", "CSeq")
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ROUTABLE_VIA = re.compile(
    rf"[ \t]*SIP[ \t]*/[ \t]*[0-9.]+[ \t]*/[ \t]*[{TOKEN_CHARS}]+[ \t]+(?:{HOST_RE})"
    r"(?:[ \t]*:[ \t]*[0-9]{1,5})?(?:[ \t;]|\Z)",
    re.IGNORECASE,
)


def check_request(
    request: Request,
    *,
    supported_schemes: frozenset[str] = frozenset({"sip", "sips"}),
    supported_extensions: frozenset[str] = frozenset(),
    accepted_content_types: frozenset[str] | None = frozenset({"application/sdp"}),
    answer_content_types: frozenset[str] = frozenset({"application/sdp"}),
    check_proxy_require: bool = True,
) -> Response | None:
    """The rejection a server should send for ``request``, or None to process it.

    ``supported_schemes``: Request-URI schemes served (lower case).
    ``supported_extensions``: option tags understood (compared case-insensitively).
    ``accepted_content_types``: body types understood (``type/subtype``, lower case);
    None skips the body checks (a B2BUA relaying a request inside a dialog passes the
    parties' bodies on whatever their type).
    ``answer_content_types``: the types this server answers an INVITE with.
    ``check_proxy_require``: also refuse unsupported Proxy-Require tags; a B2BUA is the
    proxy as well as the UAS for the caller, so it is on by default.

    Checks run in RFC 3261 8.2 order: scheme (8.2.2.1), extensions (8.2.2.3), content
    (8.2.3), then Accept.  An ACK is never answered (RFC 3261 17.1.1.3 / 13.2.2.4: it
    completes a transaction rather than starting one), so it always gets None.
    """
    if request.method == "ACK":
        return None
    # RFC 3261 8.2.2.1: "If the Request-URI uses a scheme not supported by the UAS, it
    # SHOULD reject the request with a 416 (Unsupported URI Scheme) response."
    scheme = request.uri.scheme
    if scheme not in supported_schemes:
        return _reject(request, 416, f"Unsupported URI Scheme: {scheme[:_ECHO_MAX]}")

    # RFC 3261 8.2.2.3: an option tag in Require that the UAS does not understand gets a
    # 420 whose Unsupported header lists "those option tags it does not understand".
    # CANCEL is exempt: it is about the INVITE's transaction, whose extensions were
    # checked when the INVITE arrived.
    if request.method != "CANCEL":
        names = ("Require", "Proxy-Require") if check_proxy_require else ("Require",)
        known = {tag.lower() for tag in supported_extensions}
        unsupported: list[str] = []
        for name in names:
            for tag in request.headers.get_all(name):
                if tag and tag.lower() not in known and tag not in unsupported:
                    unsupported.append(tag)
        if unsupported:
            listed = ", ".join(unsupported)
            if len(listed) > _ECHO_MAX * 2:
                listed = f"{unsupported[0][:_ECHO_MAX]} and {len(unsupported) - 1} more"
            return _reject(
                request,
                420,
                f"Bad Extension: {listed}",
                (("Unsupported", ", ".join(unsupported)),),
            )

    # RFC 3261 8.2.3: a body of a type the UAS does not understand gets a 415 that "MUST
    # list the types it understands in the Accept header field".
    if request.body and accepted_content_types is not None:
        ctype = request.content_type
        if ctype is None:
            # RFC 3261 7.4.1: "The Internet media type of the message body MUST be given
            # by the Content-Type header field."
            return _reject(request, 400, "Missing Content-Type header for a message body")
        if ctype not in accepted_content_types:
            return _reject(
                request,
                415,
                f"Unsupported Media Type: {_printable(ctype)}",
                (("Accept", ", ".join(sorted(accepted_content_types))),),
            )
        encoding = request.headers.get("Content-Encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            return _reject(
                request,
                415,
                f"Unsupported Content-Encoding: {_printable(encoding)}",
                (("Accept-Encoding", "identity"),),
            )

    # RFC 3261 20.1 (Accept): an INVITE's answer carries a session description; if the
    # caller accepts none of the types we can answer with, 406 (RFC 4475 3.3.15, sdp01).
    if request.method == "INVITE" and "Accept" in request.headers:
        if not _accepts_any(request.headers.get_all("Accept"), answer_content_types):
            return _reject(
                request,
                406,
                "Not Acceptable: Accept excludes " + ", ".join(sorted(answer_content_types)),
            )
    return None


def _reject(
    request: Request, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    # RFC 3261 8.2.6.2: a UAS adds a To tag to every response but 100.
    return make_response(request, status, reason, to_tag=new_tag(), headers=headers)


def _printable(text: str) -> str:
    return _UNSAFE.sub("", text)[:_ECHO_MAX]


def _accepts_any(accept_values: list[str], offered: frozenset[str]) -> bool:
    """Whether Accept admits one of ``offered`` (``*/*`` and ``type/*`` wildcards; a
    q-value of 0 excludes).  RFC 3261 20.1: "An empty Accept header field means that no
    formats are acceptable"."""
    for entry in accept_values:
        media, _, params = entry.partition(";")
        media = media.strip().lower()
        if not media:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 1.0
        if q <= 0:
            continue
        main, _, sub = media.partition("/")
        for candidate in offered:
            c_main, _, c_sub = candidate.partition("/")
            if media == "*/*" or (main == c_main and sub in ("*", c_sub)):
                return True
    return False


def build_error_response(data: bytes, error: SIPParseError) -> Response | None:
    """The response to a request that failed to parse, or None when there is no one to
    answer (a response, an ACK, no usable Via).

    Only the headers a response needs are taken from the raw bytes, each as leniently as
    possible: the defect may sit in any of them, and the answer should still reach the
    sender (RFC 3261 8.2.6.2, 18.2.2).  The To header gets a tag when it is readable
    and has none."""
    if error.is_response:
        return None
    head = data[:MAX_MESSAGE]
    end = head.find(b"\r\n\r\n")
    if end != -1:
        head = head[:end]
    lines = head.decode("utf-8", "replace").lstrip("\r\n").split("\r\n")
    start = lines[0]
    if start[:4].upper() == "SIP/" or start.split(" ", 1)[0] == "ACK":
        return None
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            # A continuation line belongs to the header before it (RFC 3261 7.3.1).
            if current is not None and not _UNSAFE.search(line):
                current[-1] = current[-1] + " " + line.strip(" \t")
            continue
        current = None
        raw_name, colon, value = line.partition(":")
        name = raw_name.strip(" \t")
        if not colon or not TOKEN.match(name) or _UNSAFE.search(value):
            continue
        name = COMPACT.get(name.lower(), name) if len(name) == 1 else canonical_name(name)
        if name in _COPIED:
            current = found.setdefault(name, [])
            current.append(value.strip(" \t"))
    vias = [v for line in found.get("Via", ()) for v in split_commas(line)]
    if not vias:
        return None
    # RFC 3261 18.2.2: the top Via says where the answer goes, so its sent-by must be
    # readable; the rest of it may be the very defect being reported (RFC 4475 badinv01
    # and badvers carry theirs in the Via).
    if _ROUTABLE_VIA.match(vias[0]) is None:
        return None
    items: list[tuple[str, str]] = [("Via", line) for line in found["Via"]]
    for name in ("From", "To", "Call-ID", "CSeq"):
        values = found.get(name)
        if not values:
            continue
        value = values[0]
        if name == "To" and error.status != 100:
            value = _with_tag(value)
        items.append((name, value))
    items.extend(error.headers)
    reason = _UNSAFE.sub("", error.reason)[:200] or "Bad Request"
    return Response(status=error.status, reason=reason, headers=Headers(items))


def parse_error_response(data: bytes, error: SIPParseError) -> bytes | None:
    """:func:`build_error_response`, serialised for the transport (None: send nothing)."""
    response = build_error_response(data, error)
    return None if response is None else response.to_bytes()


def _with_tag(value: str) -> str:
    try:
        to = NameAddr.parse(value)
    except SIPParseError:
        return value  # the defect may be in To itself: echo it as received
    # Appending keeps the sender's own spelling of the header (only a tag is added).
    return value if to.tag is not None else f"{value};tag={new_tag()}"
