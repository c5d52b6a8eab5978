"""The one entry point for network bytes: :func:`parse_message_untrusted`.

Everything a peer sends reaches the stack through :func:`parse_message_untrusted` (one
datagram, or one message cut out of a stream by :class:`StreamFramer`).  Its contract:

* it returns a :class:`~sip.message.Request` or :class:`~sip.message.Response`, or raises
  :class:`~sip.errors.SIPParseError`, and nothing else (a hypothesis test holds it to that);
* the error's ``status``/``reason`` are the answer a server sends to a bad request
  (``400 Missing Call-ID header``, ``505 ...``, ``513 ...``); ``is_response`` marks a bad
  response, which is dropped, never answered (RFC 3261 18.1.2, RFC 4475 3.1.2.5/3.1.2.19);
* everything the RFC 4475 torture verdicts depend on is validated here, eagerly: the
  start line, the headers every transaction needs (Via, From, To, Call-ID, CSeq), the
  scalars (Content-Length, Max-Forwards, Expires), Contact, Content-Type, and the
  single-value headers that must not repeat.  Other headers stay raw text in
  :class:`~sip.headers.Headers`, parsed only when someone asks for them.

Structured values are validated with the same compiled grammar their lazy accessors use
(:mod:`sip.headers`, :mod:`sip.uri`), so what was accepted here parses again later.

Decisions where RFC 4475 leaves a choice (see ``tests/sip/test_torture.py``):

* baddate (3.1.2.12): Date is never interpreted by this stack, so an odd time zone is
  tolerated; the message is processed.
* badaspec (3.1.2.14): spaces just inside ``<`` and ``>`` are ignored, as the RFC allows a
  liberal element to do; spaces inside the URI itself are still a 400.
* regbadct (3.1.2.13): a Contact/From/To addr-spec whose URI has ``?headers`` but no ``<>``
  is a 400 (RFC 3261 20: such a URI MUST be enclosed in angle brackets).
* A datagram whose header section ends at the end of the datagram without the empty line
  (the archived baddn.dat is such a message) is read as having no body, so the verdict is
  about its real defect rather than the missing CRLF.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from types import MappingProxyType

from sip.errors import SIPParseError
from sip.headers import (
    _CANONICAL,
    COMPACT,
    SINGLE_VALUE,
    TOKEN,
    TOKEN_CHARS,
    CSeq,
    Headers,
    NameAddr,
    Via,
    split_commas,
    validate_name_addr,
    validate_via,
)
from sip.message import Message, make_request_from, make_response_from
from sip.uri import URI

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 * 1024
"""The largest message accepted (datagram or framed stream message), in bytes."""

# RFC 3261 20: the header fields every request and response must carry.
_REQUIRED = ("Via", "From", "To", "Call-ID", "CSeq")
_MAX_DELTA = 2**32 - 1  # delta-seconds beyond this are nonsense (RFC 4475 3.1.2.4)

# lower-case name as received -> (canonical name, index key), for every known name and
# compact form; unknown names are checked against the token grammar and kept as given.
_KNOWN_NAMES = MappingProxyType(
    {
        **{lower: (name, lower) for lower, name in _CANONICAL.items()},
        **{short: (name, name.lower()) for short, name in COMPACT.items()},
    }
)
# The same, also keyed by the spellings seen on the wire almost always (canonical and
# upper-case compact), so the common line needs one dict lookup and no lower().  A plain
# dict, never written to: a read-only proxy costs every header line an indirection.
_EXACT_NAMES: dict[str, tuple[str, str]] = {
    **_KNOWN_NAMES,
    **{name: (name, key) for name, key in _KNOWN_NAMES.values()},
    **{short.upper(): entry for short, entry in _KNOWN_NAMES.items() if len(short) == 1},
}
# The request line as nearly every agent writes it; anything else takes the slow path that
# names the defect.
_REQUEST_LINE = re.compile(rf"([{TOKEN_CHARS}]+) ([^ \t<>]+) [Ss][Ii][Pp]/2\.0\Z")
# SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT (7.1: case-insensitive)
_VERSION = re.compile(r"[Ss][Ii][Pp]/[0-9]+\.[0-9]+\Z")
# Reason-Phrase = *(reserved / unreserved / escaped / UTF8-NONASCII / UTF8-CONT / SP / HTAB)
_REASON_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# media-type = m-type SLASH m-subtype *(SEMI m-parameter)
_MEDIA_TYPE = re.compile(
    rf"[ \t]*[{TOKEN_CHARS}]+[ \t]*/[ \t]*[{TOKEN_CHARS}]+[ \t]*(?:;.*)?\Z", re.DOTALL
)
_DELTA_HEADERS = ("expires", "min-expires", "retry-after")
_EXPIRES_PARAM = re.compile(r";[ \t]*expires[ \t]*=[ \t]*([0-9]+)", re.IGNORECASE)
_CSEQ = re.compile(rf"[ \t]*([0-9]+)[ \t]+([{TOKEN_CHARS}]+)[ \t]*\Z")
_ECHO_MAX = 40  # longest piece of peer text echoed in a reason phrase

_Fail = Callable[[str], SIPParseError]


def parse_message_untrusted(data: bytes) -> Message:
    """Parse one SIP message from a datagram (or a message framed by :class:`StreamFramer`).

    Raises only :class:`SIPParseError`; its ``status`` and ``reason`` are the response to
    send for a bad request, and ``is_response`` is True for a bad response (drop it).
    """
    try:
        return _parse(data)
    except SIPParseError:
        raise
    except Exception as exc:  # noqa: BLE001 - the contract: one error type escapes
        # Reaching this is a parser bug: log it loudly, but hostile bytes must still only
        # ever cost the sender a 400.
        log.exception("internal error while parsing %d bytes", len(data))
        raise SIPParseError(
            f"Internal parser error ({type(exc).__name__})",
            is_response=data[:4].upper() == b"SIP/",
        ) from exc


def is_keepalive(data: bytes) -> bool:
    """True for a CRLF keep-alive (RFC 5626 3.5.1) rather than a message."""
    return len(data) <= 8 and not data.strip(b"\r\n")


def _parse(data: bytes) -> Message:
    is_response = data[:4].upper() == b"SIP/"
    if len(data) > MAX_MESSAGE:
        raise SIPParseError("Message Too Large", status=513, is_response=is_response)
    # RFC 3261 7.5: "Implementations processing SIP messages over stream-oriented
    # transports MUST ignore any CRLF appearing before the start-line"; datagrams get the
    # same courtesy.
    begin = 0
    while data.startswith(b"\r\n", begin):
        begin += 2
    if begin:
        is_response = data[begin : begin + 4].upper() == b"SIP/"
    end = data.find(b"\r\n\r\n", begin)
    if end == -1:
        if begin == len(data):
            raise SIPParseError("Empty message")
        if not data.endswith(b"\r\n"):
            raise SIPParseError("Truncated message: no empty line after the headers",
                                is_response=is_response)
        end = len(data) - 2
        body_start = len(data)
    else:
        body_start = end + 4
    try:
        text = data[begin:end].decode("utf-8")
    except UnicodeDecodeError:
        raise SIPParseError("Header section is not valid UTF-8", is_response=is_response) from None
    crlf = text.count("\r\n")
    if text.count("\n") != crlf or text.count("\r") != crlf:
        # A lone CR or LF would let a value smuggle a line into anything that copies it.
        raise SIPParseError("Bare CR or LF in the header section", is_response=is_response)
    lines = text.split("\r\n")
    if "\r\n " in text or "\r\n\t" in text:
        lines = _unfold(lines, is_response)

    start = lines[0]
    if is_response:
        status, reason = _status_line(start)
    else:
        method, uri = _request_line(start)

    # Header lines: name HCOLON value.  HCOLON = *( SP / HTAB ) ":" SWS, so whitespace
    # before the colon belongs to the separator (RFC 4475 3.1.1.1 "TO :").
    items: list[str] = []  # name, value, name, value...
    add = items.append
    index: dict[str, tuple[str, ...]] = {}
    growing: dict[str, list[str]] = {}
    repeated: list[str] = []
    exact = _EXACT_NAMES
    for line in lines[1:]:
        raw_name, colon, value = line.partition(":")
        entry = exact.get(raw_name)
        if entry is None or not colon:
            entry = _header_name(raw_name, colon, is_response)
        name, key = entry
        value = value.strip(" \t")
        add(name)
        add(value)
        bucket = index.get(key)
        if bucket is None:
            index[key] = (value,)
        else:
            if key not in growing:
                growing[key] = list(bucket)
            growing[key].append(value)
            repeated.append(key)
    for key, values in growing.items():  # (appending to a tuple would be quadratic)
        index[key] = tuple(values)
    headers = Headers._from_parsed(tuple(items), index)

    body = data[body_start:]
    views: dict[str, object] = {}
    body = _check_headers(index, repeated, body, is_response, None if is_response else method, views)
    message: Message
    if is_response:
        message = make_response_from(status, reason, headers, body)
    else:
        message = make_request_from(method, uri, headers, body)
    # What validation built is what the stack reads next: hand it over, with the bytes
    # (a lingering transaction keeps those rather than writing the message again).
    views["wire"] = data if not begin and body_start + len(body) == len(data) else data[begin:body_start] + body
    message._memo.update(views)
    return message


def _header_name(raw_name: str, colon: str, is_response: bool) -> tuple[str, str]:
    """(canonical name, index key) for a header name not spelled the common way."""
    if not colon:
        raise SIPParseError("Header line without a colon", is_response=is_response)
    name = raw_name.rstrip(" \t")
    lower = name.lower()
    entry = _KNOWN_NAMES.get(lower)
    if entry is not None:
        return entry
    if not TOKEN.match(name):
        raise SIPParseError("Header name is not a token", is_response=is_response)
    return name, lower


def _unfold(lines: list[str], is_response: bool) -> list[str]:
    """Join continuation lines: RFC 3261 7.3.1 lets a recipient "replace any linear white
    space with a single SP before interpreting the field value"."""
    out = [lines[0]]
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if len(out) == 1:
                raise SIPParseError("Continuation line before the first header",
                                    is_response=is_response)
            out[-1] = out[-1].rstrip(" \t") + " " + line.strip(" \t")
        else:
            out.append(line)
    return out


def _status_line(start: str) -> tuple[int, str]:
    # Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF
    version, _, rest = start.partition(" ")
    if version.upper() != "SIP/2.0":
        raise SIPParseError("Unsupported SIP version in a response", is_response=True)
    code, _, reason = rest.partition(" ")
    # Status-Code = 3DIGIT; 18.1.2 and RFC 4475 3.1.2.19: anything else is dropped.
    if len(code) != 3 or not (code.isascii() and code.isdigit()):
        raise SIPParseError("Bad status code", is_response=True)
    status = int(code)
    if not 100 <= status <= 699:
        raise SIPParseError("Status code out of range", is_response=True)
    if _REASON_BAD.search(reason):
        raise SIPParseError("Control characters in the reason phrase", is_response=True)
    return status, reason


def _request_line(start: str) -> tuple[str, URI]:
    m = _REQUEST_LINE.match(start)
    if m is not None:
        return m.group(1), _request_uri(m.group(2))
    return _request_line_diagnosed(start)


def _request_uri(uri_text: str) -> URI:
    try:
        uri = URI.parse(uri_text)
    except SIPParseError as exc:
        raise SIPParseError(f"Bad Request-URI: {exc.reason}") from None
    if uri.headers is not None:
        # RFC 3261 19.1.1, table 1: headers are "not allowed" in a Request-URI
        # (RFC 4475 3.1.2.11 escruri).
        raise SIPParseError("Escaped headers are not allowed in the Request-URI")
    return uri


def _request_line_diagnosed(start: str) -> tuple[str, URI]:
    # Request-Line = Method SP Request-URI SP SIP-Version CRLF: exactly one SP between
    # the elements and none anywhere else (RFC 4475 3.1.2.7-3.1.2.10).
    if start != start.rstrip(" \t"):
        raise SIPParseError("Trailing whitespace at the end of the request line")
    if start != start.lstrip(" \t"):
        raise SIPParseError("Leading whitespace before the request line")
    if "\t" in start:
        raise SIPParseError("Tab in the request line")
    parts = start.split(" ")
    if "" in parts:
        raise SIPParseError("Multiple SP between request-line elements")
    if len(parts) < 3:
        raise SIPParseError("Malformed request line")
    version = parts[-1]
    if not _VERSION.match(version):
        raise SIPParseError("Malformed SIP version in the request line")
    if version.upper() != "SIP/2.0":
        # RFC 3261 8.2.2... 21.5.16: 505 Version Not Supported.
        raise SIPParseError(f"Version Not Supported: {version[:_ECHO_MAX]}", status=505)
    if len(parts) > 3:
        raise SIPParseError("Whitespace inside the Request-URI")
    method, uri_text = parts[0], parts[1]
    # Method = INVITEm / ... / extension-method (a token).  Methods are case-sensitive and
    # never unescaped: RE%47IST%45R is not REGISTER (RFC 4475 3.1.1.5).
    if not TOKEN.match(method):
        raise SIPParseError("Method is not a token")
    if uri_text.startswith("<"):
        raise SIPParseError("Request-URI enclosed in <>")
    return method, _request_uri(uri_text)


def _check_headers(
    index: dict[str, tuple[str, ...]],
    repeated: list[str],
    body: bytes,
    is_response: bool,
    method: str | None,
    views: dict[str, object],
) -> bytes:
    """Validate what the verdicts depend on; return the body cut to Content-Length.

    The structured values built on the way (From, To, top Via, CSeq, Call-ID) go into
    ``views``, under the message's memo keys."""

    def fail(reason: str) -> SIPParseError:
        return SIPParseError(reason, is_response=is_response)

    # RFC 4475 3.3.8/3.3.9: several values of a single-value header make the message
    # ambiguous (which CSeq? which body length?).
    if repeated:
        single = {key for key in repeated if key in SINGLE_VALUE}
        if single:
            names = ", ".join(sorted(_CANONICAL[key] for key in single))
            raise fail(f"Multiple values in single-value header fields: {names}")
    try:
        vias = index["via"]
        from_ = index["from"][0]
        to = index["to"][0]
        call_id = index["call-id"][0]
        cseq = index["cseq"][0]
    except KeyError:
        missing = [name for name in _REQUIRED if name.lower() not in index]
        noun = "header" if len(missing) == 1 else "headers"
        raise fail(f"Missing {', '.join(missing)} {noun}") from None

    # Content-Length = 1*DIGIT.  On a datagram, bytes past it are discarded and a value
    # past the end is an error (RFC 3261 18.3); none means "the rest of the datagram".
    cl = index.get("content-length")
    if cl is not None:
        value = cl[0]
        if not (value.isascii() and value.isdigit()):
            if value.startswith("-") and value[1:].isdigit():
                raise fail("Negative Content-Length")
            raise fail("Malformed Content-Length header")
        digits = value.lstrip("0")
        length = int(digits) if digits and len(digits) < 7 else (0 if not digits else -1)
        if length < 0 or length > len(body):
            raise fail("Content-Length larger than the message body")
        if length < len(body):
            body = body[:length]

    if not call_id:
        raise fail("Empty Call-ID header")
    m = _CSEQ.match(cseq)
    if m is None:
        raise fail("Malformed CSeq header")
    number, cseq_method = m.groups()
    # RFC 3261 8.1.1.5: "The sequence number value MUST be expressible as a 32-bit
    # unsigned integer and MUST be less than 2**31" (RFC 4475 3.1.2.4 scalar02).  The
    # length test comes first so a 10,000-digit number costs nothing to refuse.
    if len(number) > 9:
        digits = number.lstrip("0")
        if len(digits) > 10 or int(digits or "0") >= 2**31:
            raise fail("CSeq number is too large")
    if method is not None and cseq_method != method:
        # RFC 3261 8.1.1.5 / 12.2.1.1: the CSeq method MUST match the request's
        # (RFC 4475 3.1.2.17, 3.1.2.18).
        raise fail(
            f"CSeq method {cseq_method[:_ECHO_MAX]} does not match "
            f"request method {method[:_ECHO_MAX]}"
        )
    for name, value in (("from", from_), ("to", to)):
        try:
            views[name] = NameAddr.parse(value)
        except SIPParseError as exc:
            raise fail(f"Malformed {_CANONICAL[name]} header: {exc.reason}") from None
    views["call-id"] = call_id.strip()
    views["cseq"] = CSeq(int(number), cseq_method)
    for line in vias:
        values = split_commas(line) if "," in line else (line,)
        if not values or not values[0]:
            raise fail("Empty Via header")
        for value in values:
            try:
                if "via" in views:
                    validate_via(value)
                else:
                    views["via"] = Via.parse(value)
            except SIPParseError as exc:
                raise fail(f"Malformed Via header: {exc.reason}") from None
    contact_lines = index.get("contact")
    if contact_lines is not None:
        _check_contacts(contact_lines, fail)

    if not is_response:
        mf = index.get("max-forwards")
        if mf is not None:
            # Max-Forwards = 1*DIGIT, "an integer in the range 0-255" (RFC 3261 20.22).
            value = mf[0]
            if not (value.isascii() and value.isdigit()):
                raise fail("Malformed Max-Forwards header")
            if len(value) > 3:
                value = value.lstrip("0")
            if len(value) > 3 or int(value or "0") > 255:
                raise fail("Max-Forwards is larger than 255")
    for key in _DELTA_HEADERS:
        found = index.get(key)
        if found is not None:
            _check_delta(found[0], _CANONICAL[key], fail)
    ctype = index.get("content-type")
    if ctype is not None and not _MEDIA_TYPE.match(ctype[0]):
        raise fail("Malformed Content-Type header")
    return body


def _check_contacts(lines: tuple[str, ...], fail: _Fail) -> None:
    values = [v for line in lines for v in (split_commas(line) if "," in line else (line,))]
    if "*" in values:
        # RFC 3261 10.2.2: "*" is only allowed alone (with Expires: 0).
        if len(values) > 1:
            raise fail("Contact * mixed with other Contact values")
        return
    if not values or not values[0]:
        raise fail("Empty Contact header")
    for value in values:
        try:
            validate_name_addr(value)
        except SIPParseError as exc:
            raise fail(f"Malformed Contact header: {exc.reason}") from None
        if "xpires" in value:
            for expires in _EXPIRES_PARAM.findall(value):
                _check_delta(expires, "Contact expires parameter", fail)


def _check_delta(value: str, what: str, fail: _Fail) -> None:
    """delta-seconds beyond 2**32-1 are refused (RFC 4475 3.1.2.4/3.1.2.5).  Values that
    are not numbers are left to whoever reads them (Expires once carried a date)."""
    if len(value) < 10:
        return
    head = value.split("(", 1)[0].split(";", 1)[0].strip(" \t")
    if head.isascii() and head.isdigit():
        digits = head.lstrip("0")
        if len(digits) > 10 or int(digits or "0") > _MAX_DELTA:
            raise fail(f"{what} value is too large")


# ---------------------------------------------------------------------------------------
# Streams


class StreamFramer:
    """Cut a TCP/TLS byte stream into messages (RFC 3261 18.3).

    ``feed`` returns every complete message buffered so far (start line to the end of the
    body, as bytes for :func:`parse_message_untrusted`).  CRLFs between messages are
    keep-alives and are skipped (RFC 3261 7.5, RFC 5626 3.5.1).  Content-Length is
    mandatory on streams: a message without a valid one, a header section over
    :data:`MAX_MESSAGE`, or a message that would exceed it raises
    :class:`SIPParseError`; the stream cannot be resynchronised after that, so the
    transport closes the connection.
    """

    __slots__ = ("_buffer", "_scan_from", "_pings")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scan_from = 0
        self._pings = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the messages they complete, in order."""
        buf = self._buffer
        buf += data
        out: list[bytes] = []
        while True:
            skipped = 0
            while buf.startswith(b"\r\n", skipped):
                skipped += 2
            if skipped:
                # A double CRLF is a keep-alive ping; the transport answers it with a
                # single CRLF pong (RFC 5626 3.5.1).
                self._pings += skipped // 4
                del buf[:skipped]
                self._scan_from = 0
            if not buf:
                return out
            end = buf.find(b"\r\n\r\n", self._scan_from)
            if end == -1:
                if len(buf) > MAX_MESSAGE:
                    raise SIPParseError("Header section larger than 64 KiB", status=513)
                # Resume the search where an end marker could still begin.
                self._scan_from = max(0, len(buf) - 3)
                return out
            head = bytes(buf[:end])
            length = _stream_content_length(head)
            total = end + 4 + length
            if total > MAX_MESSAGE:
                raise SIPParseError("Message Too Large", status=513,
                                    is_response=head[:4].upper() == b"SIP/")
            if len(buf) < total:
                self._scan_from = end  # header section known; wait for the body
                return out
            out.append(bytes(buf[:total]))
            del buf[:total]
            self._scan_from = 0

    def take_keepalive_pings(self) -> int:
        """How many CRLFCRLF keep-alive pings were seen since the last call."""
        pings, self._pings = self._pings, 0
        return pings

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned message."""
        return len(self._buffer)


def _stream_content_length(head: bytes) -> int:
    is_response = head[:4].upper() == b"SIP/"
    found: list[bytes] = []
    in_length = False
    for line in head.split(b"\r\n")[1:]:
        if line[:1] in (b" ", b"\t"):
            if in_length:  # a folded value continues the header above (RFC 3261 7.3.1)
                found[-1] = (found[-1] + b" " + line.strip(b" \t")).strip(b" \t")
            continue
        name, colon, value = line.partition(b":")
        in_length = bool(colon) and name.rstrip(b" \t").lower() in (b"content-length", b"l")
        if in_length:
            found.append(value.strip(b" \t"))
    if not found:
        # RFC 3261 18.3: "In the case of stream-oriented transports such as TCP, the
        # Content-Length header field indicates the size of the body ... MUST be used".
        raise SIPParseError("Missing Content-Length on a stream transport",
                            is_response=is_response)
    if len(found) > 1:
        raise SIPParseError("Multiple values in single-value header fields: Content-Length",
                            is_response=is_response)
    value = found[0]
    if not value.isdigit() or len(value.lstrip(b"0")) > 6:
        raise SIPParseError("Malformed Content-Length header", is_response=is_response)
    return int(value)


__all__ = [
    "MAX_MESSAGE",
    "StreamFramer",
    "is_keepalive",
    "parse_message_untrusted",
]
