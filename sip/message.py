"""SIP requests and responses as immutable values, and their serialisation.

Parsing network bytes is :func:`sip.parse.parse_message_untrusted`; this module holds
the model every other part of the stack shares, plus the RFC 3261 constructions that
depend only on a message (8.2.6 responses, 17.1.1.3 ACK for non-2xx, 9.1 CANCEL).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sip.frozen import fast_init, positional_factory
from sip.headers import CSeq, Headers, NameAddr, Via
from sip.uri import URI

MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 8.1.1.7

REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Moved Temporarily", 305: "Use Proxy", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    413: "Request Entity Too Large", 414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 421: "Extension Required",
    423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}


class _Entropy:
    """Random hex for tags, branches and Call-IDs, read from ``os.urandom`` 4 KiB at a
    time: the same bytes ``secrets`` would give, without a system call and four Python
    frames for each of the dozen tokens a call needs.  Each byte is handed out once; a
    forked child starts with an empty buffer."""

    __slots__ = ("_buffer", "_position")

    def __init__(self) -> None:
        self._buffer = b""
        self._position = 0

    def hex(self, nbytes: int) -> str:
        start = self._position
        end = start + nbytes
        if end > len(self._buffer):
            self._buffer = os.urandom(max(4096, nbytes))
            start, end = 0, nbytes
        self._position = end
        return self._buffer[start:end].hex()

    def forget(self) -> None:
        self._buffer = b""
        self._position = 0


_ENTROPY = _Entropy()
os.register_at_fork(after_in_child=_ENTROPY.forget)
random_hex = _ENTROPY.hex


#: What starts every branch and tag this process makes (after the magic cookie): empty
#: for a server of one process; ``q<index>-`` in each process of a server of several,
#: so that a response or an in-dialog request that reached the wrong process names
#: the one that owns its transaction or dialog (see :func:`owner_mark`).
_mark = ""


def mark_identifiers(index: int | None) -> None:
    """Start every branch and tag made from now on with process ``index``'s mark (None:
    no mark).  Called once, before the process sends anything."""
    global _mark
    _mark = "" if index is None else f"q{index}-"


def mark_of(identifier: str) -> int | None:
    """The process index an identifier of ours starts with (:func:`mark_identifiers`),
    or None."""
    if identifier[:1] != "q":
        return None
    number, dash, _ = identifier[1:5].partition("-")
    return int(number) if dash and number.isdigit() else None


def new_branch() -> str:
    """A fresh RFC 3261 branch (magic cookie, this process's mark, 96 random bits)."""
    return MAGIC_COOKIE + _mark + random_hex(12)


def new_tag() -> str:
    return _mark + random_hex(6)


#: What starts every :func:`stateless_tag` and no other tag of ours (those are hex).
STATELESS_TAG_PREFIX = "sl"


def stateless_tag(request: Request) -> str:
    """The To tag of a response sent without a transaction (RFC 3261 8.2.7: "in a manner
    that will generate the same tag for the same request consistently"): a digest of
    what identifies the request, so a retransmission gets the tag its original got.
    Its prefix lets :func:`acks_stateless_answer` know the ACKs of such responses."""
    via = request.top_via
    identity = "\n".join((request.call_id, request.from_.tag or "", str(request.cseq.number),
                           via.branch or "", via.host, str(via.port)))
    return STATELESS_TAG_PREFIX + hashlib.blake2s(identity.encode(), digest_size=6).hexdigest()


_STATELESS_TAG_PARAM = b";tag=" + STATELESS_TAG_PREFIX.encode()


def acks_stateless_answer(data: bytes) -> bool:
    """True when ``data`` is an ACK whose To tag is a :func:`stateless_tag`: the ACK of
    a challenge or refusal sent without a transaction.  Nothing waits for it (RFC
    3261 8.2.7; an ACK is never answered, 17.2.1), so the transport drops it unparsed
    (every challenged call sends one).  Only the common spellings are looked
    for (``To:`` or ``t:`` at the start of a header line, the tag after the
    name-addr's ``>``); anything else is parsed as usual and ignored later."""
    if not data.startswith(b"ACK "):
        return False
    end = data.find(b"\r\n\r\n")
    if end == -1:
        return False
    start = data.find(b"\r\nTo:", 0, end)
    if start == -1:
        start = data.find(b"\r\nt:", 0, end)
        if start == -1:
            return False
    line_end = data.find(b"\r\n", start + 2, end + 2)
    params = data.rfind(b">", start, line_end) + 1 or start
    return data.find(_STATELESS_TAG_PARAM, params, line_end) != -1


_MARKED_BRANCH = re.compile(rb";[ \t]*branch[ \t]*=[ \t]*z9hG4bKq([0-9]{1,3})-", re.IGNORECASE)
_MARKED_TO_TAG = re.compile(rb"\r\n(?:to|t)[ \t]*:[^\r\n]*?;[ \t]*tag[ \t]*=[ \t]*q([0-9]{1,3})-", re.IGNORECASE)


def owner_mark(data: bytes) -> int | None:
    """The process mark (:func:`mark_identifiers`) that says who owns ``data``: for a
    response, its top Via's branch (ours: the first branch in the message); for a
    request, its To tag (ours once a dialog exists).  None when there is none: a new
    request, or a message about something no process of ours started."""
    end = data.find(b"\r\n\r\n")
    head = data if end == -1 else data[: end + 2]
    if head.startswith(b"SIP/2.0 "):
        via = _FIRST_BRANCH.search(head)
        if via is None:
            return None
        mark = _MARKED_BRANCH.match(head, via.start())
    else:
        mark = _MARKED_TO_TAG.search(head)
    return int(mark.group(1)) if mark is not None else None


_FIRST_BRANCH = re.compile(rb";[ \t]*branch[ \t]*=", re.IGNORECASE)


def new_call_id(host: str) -> str:
    return f"{random_hex(12)}@{host}"


class _Common:
    """Accessors shared by requests and responses (parsed on demand)."""

    headers: Headers
    body: bytes
    _memo: dict[str, Any]

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    # The structured views below are read many times per message (transactions,
    # dialogs, the engine): each is parsed once and kept with the message, which is
    # immutable.  ``replace`` builds a new message with an empty memo.
    @property
    def top_via(self) -> Via:
        memo = self._memo
        value = memo.get("via")
        if value is None:
            text = self.headers.get("Via")
            if text is None:
                from sip.errors import SIPParseError

                raise SIPParseError("Missing Via header")
            value = memo["via"] = Via.parse(text)
        return value  # type: ignore[no-any-return]

    @property
    def from_(self) -> NameAddr:
        memo = self._memo
        value = memo.get("from")
        if value is None:
            value = memo["from"] = NameAddr.parse(self._required("From"))
        return value  # type: ignore[no-any-return]

    @property
    def to(self) -> NameAddr:
        memo = self._memo
        value = memo.get("to")
        if value is None:
            value = memo["to"] = NameAddr.parse(self._required("To"))
        return value  # type: ignore[no-any-return]

    @property
    def call_id(self) -> str:
        memo = self._memo
        value = memo.get("call-id")
        if value is None:
            value = memo["call-id"] = self._required("Call-ID").strip()
        return value  # type: ignore[no-any-return]

    @property
    def cseq(self) -> CSeq:
        memo = self._memo
        value = memo.get("cseq")
        if value is None:
            value = memo["cseq"] = CSeq.parse(self._required("CSeq"))
        return value  # type: ignore[no-any-return]

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values (a ``*`` is not a NameAddr: check :attr:`is_contact_star`)."""
        return [NameAddr.parse(v) for v in self.headers.get_all("Contact") if v.strip() != "*"]

    @property
    def is_contact_star(self) -> bool:
        return any(v.strip() == "*" for v in self.headers.get_all("Contact"))

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("Content-Type")
        return None if value is None else value.split(";")[0].strip().lower()

    @property
    def wire(self) -> bytes | None:
        """The bytes this message arrived as (None for one built or changed here)."""
        return self._memo.get("wire")  # type: ignore[no-any-return]

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            from sip.errors import SIPParseError

            raise SIPParseError(f"Missing {name} header")
        return value

    def _snapshot(self, start_line: str) -> bytes:
        # The bytes it arrived as, or went out as, parse back into this message (the
        # latter with a Content-Length line added): no need to write it again.
        memo = self._memo
        known = memo.get("wire") or memo.get("bytes")
        if known is not None:
            return known  # type: ignore[no-any-return]
        parts = [start_line]
        for name, value in self.headers:
            parts.append(f"Content-Length: {len(self.body)}" if name == "Content-Length" else f"{name}: {value}")
        return ("\r\n".join(parts) + "\r\n\r\n").encode("utf-8") + self.body

    def _serialize(self, start_line: str) -> bytes:
        # Kept: a message is immutable, and what is sent is also traced, retransmitted
        # and kept by lingering transactions.
        known = self._memo.get("bytes")
        if known is not None:
            return known  # type: ignore[no-any-return]
        parts = [start_line]
        for name, value in self.headers:
            if name == "Content-Length":
                continue
            parts.append(f"{name}: {value}")
        parts.append(f"Content-Length: {len(self.body)}")
        data = self._memo["bytes"] = ("\r\n".join(parts) + "\r\n\r\n").encode("utf-8") + self.body
        return data


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Request(_Common):
    method: str
    uri: URI
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    _memo: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def to_bytes(self) -> bytes:
        """Serialise; Content-Length is always recomputed from the body."""
        return self._serialize(f"{self.method} {self.uri} SIP/2.0")

    def snapshot(self) -> bytes:
        """Bytes that parse back into an equal message: the bytes it arrived as, or
        those :meth:`to_bytes` sent (which add a Content-Length line); otherwise the
        header list exactly as it is (a Content-Length line keeps its place, with the
        body's real length; none is added).  For keeping a message compactly, not for
        sending."""
        return self._snapshot(f"{self.method} {self.uri} SIP/2.0")

    def replace(self, **changes: object) -> Request:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def branch(self) -> str | None:
        return self.top_via.branch

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("Max-Forwards")
        return None if value is None else int(value)


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Response(_Common):
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    _memo: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def to_bytes(self) -> bytes:
        return self._serialize(f"SIP/2.0 {self.status} {self.reason}")

    def snapshot(self) -> bytes:
        """See :meth:`Request.snapshot`."""
        return self._snapshot(f"SIP/2.0 {self.status} {self.reason}")

    def replace(self, **changes: object) -> Response:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def is_provisional(self) -> bool:
        return self.status < 200

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300


Message = Request | Response

#: ``Request(method=..., uri=..., headers=..., body=...)`` from positional values, and
#: the same for responses: the parser's and the builders' constructors (sip.frozen).
make_request_from: Callable[[str, URI, Headers, bytes], Request] = positional_factory(
    Request, "method", "uri", "headers", "body")
make_response_from: Callable[[int, str, Headers, bytes], Response] = positional_factory(
    Response, "status", "reason", "headers", "body")


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to ``request`` per RFC 3261 8.2.6.2.

    Via, From, To, Call-ID and CSeq are copied; a To tag is added when ``to_tag`` is given
    and the request's To has none (never for 100 Trying, 8.2.6.1).  Record-Route is copied
    for 18x/2xx, which makes a UAS's dialog route set work through proxies (12.1.1).
    """
    copied: list[tuple[str, str]] = []
    for name, value in request.headers:
        if name in ("Via", "From", "Call-ID", "CSeq"):
            copied.append((name, value))
        elif name == "To":
            if to_tag is not None and status != 100 and request.to.tag is None:
                # Appending keeps the sender's spelling of To byte for byte; after an
                # addr-spec or a <URI> alike, ";tag=" starts a header parameter.
                value = f"{value};tag={to_tag}"
            copied.append((name, value))
        elif name == "Record-Route" and 100 < status < 300:
            copied.append((name, value))
        elif name == "Timestamp" and status == 100:
            copied.append((name, value))
    copied.extend(headers)
    response = make_response_from(
        status, reason if reason is not None else REASONS.get(status, "Unknown"), Headers(copied), body
    )
    # The copied headers carry the same values: share what the request already parsed.
    known = request._memo
    for key in _COPIED_VIEWS:
        view = known.get(key)
        if view is not None:
            response._memo[key] = view
    return response


_COPIED_VIEWS = ("via", "from", "call-id", "cseq")


def make_ack_for_error(invite: Request, response: Response) -> Request:
    """The ACK a client transaction sends for a 300-699 to ``invite`` (RFC 3261 17.1.1.3)."""
    items: list[tuple[str, str]] = [("Via", invite._required("Via"))]
    for name in ("Route",):
        items.extend((name, v) for v in invite.headers.lines(name))
    items.append(("Max-Forwards", "70"))
    items.append(("From", invite._required("From")))
    items.append(("To", response._required("To")))
    items.append(("Call-ID", invite.call_id))
    items.append(("CSeq", f"{invite.cseq.number} ACK"))
    return Request(method="ACK", uri=invite.uri, headers=Headers(items))


def make_cancel(invite: Request) -> Request:
    """CANCEL for a pending INVITE (RFC 3261 9.1): same Request-URI, Call-ID, From, To,
    CSeq number, top Via and Route as the INVITE."""
    items: list[tuple[str, str]] = [("Via", invite._required("Via"))]
    items.extend(("Route", v) for v in invite.headers.lines("Route"))
    items.append(("Max-Forwards", "70"))
    items.append(("From", invite._required("From")))
    items.append(("To", invite._required("To")))
    items.append(("Call-ID", invite.call_id))
    items.append(("CSeq", f"{invite.cseq.number} CANCEL"))
    return Request(method="CANCEL", uri=invite.uri, headers=Headers(items))
