"""Header fields: names, multi-value splitting, and the structured values we use.

Header values are kept as text exactly as received (after unfolding) in a
:class:`Headers` tuple; structured views (:class:`NameAddr`, :class:`Via`, CSeq...) are
parsed on demand, so a proxy relays what it does not understand untouched.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import NoReturn

from sip.errors import SIPParseError
from sip.frozen import fast_init, positional_factory
from sip.uri import (
    HOST_RE,
    URI,
    ParseMemo,
    check_host_port,
    parse_hostport,
    sip_uri_pattern,
    validate_uri,
)

# RFC 3261 7.3.3: compact forms.
COMPACT = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "o": "Event",
    "r": "Refer-To",
    "u": "Allow-Events",
    "b": "Referred-By",
    "x": "Session-Expires",
}

_CANONICAL = {
    name.lower(): name
    for name in (
        "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
        "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
        "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
        "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "In-Reply-To",
        "Max-Forwards", "Min-Expires", "MIME-Version", "Organization", "Priority",
        "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "Record-Route",
        "Refer-To", "Referred-By", "Reply-To", "Require", "Retry-After", "Route", "RSeq",
        "RAck", "Server", "Session-Expires", "Subject", "Supported", "Timestamp", "To",
        "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate",
    )
}

# Headers whose grammar allows several comma-separated values (RFC 3261 7.3.1).  The
# others (notably the authentication headers, Date, and anything unknown) are never split.
MULTI_VALUE = frozenset(
    {
        "accept", "accept-encoding", "accept-language", "alert-info", "allow", "allow-events",
        "call-info", "contact", "content-encoding", "content-language", "error-info",
        "in-reply-to", "proxy-require", "record-route", "require", "route", "supported",
        "unsupported", "via", "warning",
    }
)

# Headers that may appear at most once (RFC 3261 table 2, RFC 4475 3.3.8).
SINGLE_VALUE = frozenset(
    {"call-id", "content-length", "content-type", "cseq", "from", "to", "max-forwards",
     "expires", "min-expires"}
)

TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")


def canonical_name(name: str) -> str:
    """The long, conventionally capitalised form of a header name."""
    entry = _SPELLINGS.get(name)
    return (entry if entry is not None else _spelling(name))[0]


def _index_key(name: str) -> str:
    """The key :class:`Headers` indexes a header name under (canonical, lower case)."""
    entry = _SPELLINGS.get(name)
    return (entry if entry is not None else _spelling(name))[1]


# Every spelling of a header name seen so far, with its canonical form and index key: a
# server meets a few dozen names, so lookups stop costing a lower() and two dict probes.
# Bounded, so a stream of invented names cannot grow it.
_NAMES_KEPT = 2048
_SPELLINGS: dict[str, tuple[str, str]] = {}


def _spelling(name: str) -> tuple[str, str]:
    """(canonical name, index key) of a header name, worked out and kept."""
    lower = name.lower()
    if len(lower) == 1 and lower in COMPACT:
        known = COMPACT[lower]
    else:
        known = _CANONICAL.get(lower, name)
    entry = (known, known.lower())
    if len(_SPELLINGS) < _NAMES_KEPT:
        _SPELLINGS[name] = entry
    return entry


def split_commas(value: str) -> list[str]:
    """Split a multi-value header on commas outside quotes and <...>."""
    if "," not in value:
        return [value.strip()]
    out: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            out.append(value[start:i].strip())
            start = i + 1
        i += 1
    out.append(value[start:].strip())
    return [v for v in out if v]


# RFC 3261 25.1 building blocks, written once and shared by validation and lazy access.
TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_LWS = r"[ \t]*"  # after unfolding, LWS is spaces and tabs
# quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
# qdtext = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
# quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
QUOTED_RE = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"'
# gen-value = token / host / quoted-string.  Unquoted values are accepted a little more
# widely than token/host (Via received= may carry a bare IPv6address, and real agents put
# '/', ':' or '=' in tags); what can never appear is anything that would end the value.
_GEN_VALUE = rf"(?:[^\s;,\"<>\\\x00-\x1f\x7f]+|{QUOTED_RE})"
_PARAM = rf"{_LWS};{_LWS}(?P<name>[{TOKEN_CHARS}]+)(?:{_LWS}={_LWS}(?P<value>{_GEN_VALUE}))?"
_PARAMS = rf"(?:{_LWS};{_LWS}[{TOKEN_CHARS}]+(?:{_LWS}={_LWS}{_GEN_VALUE})?)*"
_PARAM_ITEM = re.compile(_PARAM)
_PARAMS_FULL = re.compile(rf"{_PARAMS}{_LWS}\Z")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)

# name-addr = [ display-name ] LAQUOT addr-spec RAQUOT
# display-name = *(token LWS) / quoted-string
# RFC 4475 3.1.2.14 allows a liberal element to ignore spaces inside <...>: we do (the
# URI itself still may not contain any).
_NAME_ADDR = re.compile(
    rf"{_LWS}(?:(?P<quoted>{QUOTED_RE}){_LWS}"
    rf"|(?P<display>[{TOKEN_CHARS}]+(?:[ \t]+[{TOKEN_CHARS}]+)*){_LWS})?"
    rf"<(?P<uri>[^<>]*)>(?P<params>{_PARAMS}){_LWS}\Z"
)
# The common case, a name-addr holding a sip/sips URI, checked in a single match.
_NAME_ADDR_SIP = re.compile(
    rf"{_LWS}(?:{QUOTED_RE}{_LWS}|[{TOKEN_CHARS}]+(?:[ \t]+[{TOKEN_CHARS}]+)*{_LWS})?"
    rf"<[ \t]*{sip_uri_pattern('u_')}[ \t]*>{_PARAMS}{_LWS}\Z"
)
_ADDR_SPEC = re.compile(rf"{_LWS}(?P<uri>[^\s;<>\",]+)(?P<params>{_PARAMS}){_LWS}\Z")

# via-parm = sent-protocol LWS sent-by *( SEMI via-params )
# sent-protocol = protocol-name SLASH protocol-version SLASH transport
_VIA = re.compile(
    rf"{_LWS}(?i:SIP){_LWS}/{_LWS}2\.0{_LWS}/{_LWS}(?P<transport>[{TOKEN_CHARS}]+)[ \t]+"
    rf"(?P<host>{HOST_RE})(?:{_LWS}:{_LWS}(?P<port>[0-9]{{1,5}}))?"
    rf"(?P<params>{_PARAMS}){_LWS}\Z"
)
# CSeq = "CSeq" HCOLON 1*DIGIT LWS Method
_CSEQ = re.compile(rf"{_LWS}(?P<number>[0-9]+)[ \t]+(?P<method>[{TOKEN_CHARS}]+){_LWS}\Z")


def parse_params(text: str) -> tuple[tuple[str, str | None], ...]:
    """Parse ``;name=value;flag`` header parameters (quoted values kept with quotes)."""
    if not text or text.isspace():
        return ()
    if _PARAMS_FULL.match(text) is None:
        _diagnose_params(text)
    return tuple((m.group("name"), m.group("value")) for m in _PARAM_ITEM.finditer(text))


def _diagnose_params(text: str) -> NoReturn:
    """Raise the error naming what is wrong with a header-parameter list."""
    text = text.strip()
    if not text.startswith(";"):
        raise SIPParseError("Junk where header parameters were expected")
    if text.count('"') - text.count('\\"') & 1:
        raise SIPParseError("Unterminated quoted string in header parameters")
    for item in _split_semis(text[1:]):
        name, eq, value = item.partition("=")
        name = name.strip()
        if not name:
            raise SIPParseError("Empty header parameter")
        if not TOKEN.match(name):
            raise SIPParseError("Bad header parameter name")
        if eq and not value.strip():
            raise SIPParseError(f"Empty value for header parameter {name}")
    raise SIPParseError("Bad header parameter value")


def _split_semis(text: str) -> list[str]:
    out: list[str] = []
    quoted = False
    start = 0
    i = 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ";":
            out.append(text[start:i])
            start = i + 1
        i += 1
    out.append(text[start:])
    return out


def _param_lookup(params: tuple[tuple[str, str | None], ...], name: str) -> str | None:
    name = name.lower()
    for key, value in params:
        # (Names nearly always come in lower case already: no lower() for those.)
        if key == name or key.lower() == name:
            return "" if value is None else value
    return None


def _params_text(params: tuple[tuple[str, str | None], ...]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def unquote_string(quoted: str) -> str:
    """The content of a quoted-string without its quotes, quoted-pairs decoded."""
    return _QUOTED_PAIR.sub(r"\1", quoted[1:-1])


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class NameAddr:
    """``[display-name] <URI> *(;param)`` or a bare addr-spec (From, To, Contact, Route).

    ``display_name`` is decoded (quotes removed, quoted-pairs resolved); ``params`` are the
    header parameters (quoted values keep their quotes).
    """

    display_name: str | None
    uri: URI
    params: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        """Parse one name-addr or addr-spec value; raise :class:`SIPParseError`."""
        return _NAME_ADDR_MEMO.parsed(text, cls._parse)

    @classmethod
    def _parse(cls, text: str) -> NameAddr:
        m, in_brackets = _match_name_addr(text)
        if in_brackets:
            quoted = m.group("quoted")
            if quoted is not None:
                display: str | None = unquote_string(quoted)
            else:
                words = m.group("display")
                display = None if words is None else " ".join(words.split())
            uri = URI.parse(m.group("uri").strip(" \t"))
        else:
            display = None
            uri = URI.parse(m.group("uri"))
        params_text = m.group("params")
        params = (
            tuple((p.group("name"), p.group("value")) for p in _PARAM_ITEM.finditer(params_text))
            if params_text
            else ()
        )
        return _make_name_addr(display, uri, params)

    def param(self, name: str) -> str | None:
        """A header parameter's value ('' for a flag, None when absent)."""
        return _param_lookup(self.params, name)

    @property
    def tag(self) -> str | None:
        # (_param_lookup written out: read several times for every message.)
        for key, value in self.params:
            if key == "tag" or key.lower() == "tag":
                return "" if value is None else value
        return None

    # (The copies below call the constructor: dataclasses.replace() looks the fields up
    # on every call, and dialogs make these copies for every call.)
    def with_tag(self, tag: str) -> NameAddr:
        """A copy with this ``tag`` parameter (replacing any)."""
        kept = tuple(p for p in self.params if p[0].lower() != "tag")
        return NameAddr(display_name=self.display_name, uri=self.uri, params=kept + (("tag", tag),))

    def without_tag(self) -> NameAddr:
        """A copy without a ``tag`` parameter."""
        kept = tuple(p for p in self.params if p[0].lower() != "tag")
        return NameAddr(display_name=self.display_name, uri=self.uri, params=kept)

    def with_params(self, **params: str | None) -> NameAddr:
        """A copy with these header parameters set (replacing same-named ones)."""
        lowered = {k.lower() for k in params}
        kept = tuple(p for p in self.params if p[0].lower() not in lowered)
        return NameAddr(display_name=self.display_name, uri=self.uri, params=kept + tuple(params.items()))

    def replace(self, **changes: object) -> NameAddr:
        """A copy with fields replaced (``dataclasses.replace``)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def __str__(self) -> str:
        if self.display_name:
            escaped = self.display_name.replace("\\", "\\\\").replace('"', '\\"')
            head = f'"{escaped}" <{self.uri}>'
        else:
            head = f"<{self.uri}>"
        return head + _params_text(self.params)


def _match_name_addr(text: str) -> tuple[re.Match[str], bool]:
    m = _NAME_ADDR.match(text)
    if m is not None:
        return m, True
    m = _ADDR_SPEC.match(text)
    if m is None:
        _diagnose_name_addr(text)
    # RFC 3261 20: "If the URI contains a comma, question mark or semicolon, the URI MUST
    # be enclosed in angle brackets" (RFC 4475 3.1.2.13, regbadct).
    if "?" in m.group("uri"):
        raise SIPParseError("URI with headers must be enclosed in <>")
    return m, False


def validate_name_addr(text: str) -> None:
    """Check a name-addr / addr-spec value by exactly the rule :meth:`NameAddr.parse`
    applies, without building it (the parser's fast path)."""
    if _NAME_ADDR_MEMO.get(text) is not None or _VALID_NAME_ADDRS.get(text):
        return
    fast = _NAME_ADDR_SIP.match(text)
    if fast is not None:
        check_host_port(fast.group("u_host"), fast.group("u_port"))
        _VALID_NAME_ADDRS.put(text, True)  # (a phone sends the same Contact every time)
        return
    m, in_brackets = _match_name_addr(text)
    validate_uri(m.group("uri").strip(" \t") if in_brackets else m.group("uri"))


def _diagnose_name_addr(text: str) -> NoReturn:
    """Raise the error naming what is wrong with a name-addr / addr-spec value."""
    text = text.strip()
    if not text:
        raise SIPParseError("Empty address")
    rest = text
    if text.startswith('"'):
        i = 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == '"':
                break
            i += 1
        else:
            raise SIPParseError("Unterminated quoted display name")
        rest = text[i + 1 :].lstrip()
        if not rest.startswith("<"):
            raise SIPParseError("Quoted display name not followed by <URI>")
        if not re.fullmatch(QUOTED_RE, text[: i + 1]):
            raise SIPParseError("Control characters in quoted display name")
    lt = rest.find("<")
    if lt != -1:
        if not rest.startswith("<"):
            before = rest[:lt].strip()
            if '"' in before:
                raise SIPParseError("Misplaced quote in display name")
            raise SIPParseError("Non-token characters in unquoted display name")
        gt = rest.find(">", lt)
        if gt == -1:
            raise SIPParseError("Unterminated <URI>")
        if "<" in rest[lt + 1 : gt]:
            raise SIPParseError("Nested < in address")
        URI.parse(rest[lt + 1 : gt].strip(" \t"))
        _diagnose_params(rest[gt + 1 :])
    if ">" in rest:
        raise SIPParseError("Unbalanced > in address")
    semi = rest.find(";")
    uri_text = (rest if semi == -1 else rest[:semi]).strip()
    if any(c in uri_text for c in " \t"):
        # RFC 4475 3.1.2.15: a display name must be quoted unless it is all tokens, and
        # then the URI must be in <>; spaces in a bare addr-spec are never allowed.
        raise SIPParseError("Spaces inside addr-spec")
    if "," in uri_text:
        raise SIPParseError("Several values in a single-value address header")
    URI.parse(uri_text)
    _diagnose_params(rest[semi:] if semi != -1 else "")
    raise SIPParseError("Malformed address")


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=...;received=...;rport``."""

    transport: str
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Via:
        """Parse one via-parm; raise :class:`SIPParseError`."""
        return _VIA_MEMO.parsed(text, cls._parse)

    @classmethod
    def _parse(cls, text: str) -> Via:
        m = _VIA.match(text)
        if m is None:
            _diagnose_via(text)
        transport, host, port_text, params_text = m.groups()
        port = check_host_port(host, port_text, "Bad port")
        params = (
            tuple((p.group("name"), p.group("value")) for p in _PARAM_ITEM.finditer(params_text))
            if params_text
            else ()
        )
        return _make_via(transport.upper(), host, port, params)

    def param(self, name: str) -> str | None:
        """A Via parameter's value ('' for a flag, None when absent)."""
        return _param_lookup(self.params, name)

    @property
    def branch(self) -> str | None:
        for key, value in self.params:  # (as NameAddr.tag)
            if key == "branch" or key.lower() == "branch":
                return "" if value is None else value
        return None

    @property
    def sent_by(self) -> tuple[str, int]:
        """sent-by host and port (5060 when absent)."""
        return self.host, self.port or 5060

    def with_params(self, **params: str | None) -> Via:
        """A copy with these parameters set (replacing same-named ones)."""
        lowered = {k.lower() for k in params}
        kept = tuple(p for p in self.params if p[0].lower() not in lowered)
        return replace(self, params=kept + tuple(params.items()))

    def __str__(self) -> str:
        hp = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"SIP/2.0/{self.transport} {hp}{_params_text(self.params)}"


def sent_via(transport: str, host: str, port: int, branch: str) -> str:
    """The Via line of a request this stack sends (``;rport`` asks for RFC 3581
    symmetric responses), its value filed in the parse memo as it is written: the
    transaction layer reads it back, and every response brings it back verbatim."""
    via = Via(transport=transport.upper(), host=host, port=port, params=(("branch", branch), ("rport", None)))
    text = str(via)
    _VIA_MEMO.put(text, via)
    return text


def validate_via(text: str) -> None:
    """Check one via-parm by exactly the rule :meth:`Via.parse` applies, without
    building it (the parser's fast path)."""
    m = _VIA.match(text)
    if m is None:
        _diagnose_via(text)
    check_host_port(m.group("host"), m.group("port"), "Bad port")


_VIA_HEAD = re.compile(
    rf"{_LWS}(?i:SIP){_LWS}/{_LWS}(?P<version>[^/\s]*){_LWS}/{_LWS}(?P<transport>[^\s;]*)[ \t]*(?P<rest>.*)\Z",
    re.DOTALL,
)


def _diagnose_via(text: str) -> NoReturn:
    """Raise the error naming what is wrong with a via-parm."""
    m = _VIA_HEAD.match(text)
    if m is None:
        raise SIPParseError("Via does not start with SIP/2.0/transport")
    if m.group("version") != "2.0":
        raise SIPParseError("Via protocol version is not 2.0")
    if not TOKEN.match(m.group("transport")):
        raise SIPParseError("Bad transport in Via")
    rest = m.group("rest")
    semi = rest.find(";")
    sent_by = (rest if semi == -1 else rest[:semi]).strip()
    if not sent_by:
        raise SIPParseError("Via has no sent-by host")
    parse_hostport(re.sub(r"[ \t]*:[ \t]*", ":", sent_by))
    _diagnose_params(rest[semi:] if semi != -1 else "")
    raise SIPParseError("Malformed Via header")


# The parser's constructors (see sip.frozen).
_Params = tuple[tuple[str, str | None], ...]
_make_name_addr: Callable[[str | None, URI, _Params], NameAddr] = positional_factory(
    NameAddr, "display_name", "uri", "params")
_make_via: Callable[[str, str, int | None, _Params], Via] = positional_factory(
    Via, "transport", "host", "port", "params")


@fast_init
@dataclass(frozen=True, slots=True)
class CSeq:
    """The CSeq header: a sequence number and a method."""

    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        """Parse ``1*DIGIT LWS Method``; raise :class:`SIPParseError`."""
        return _CSEQ_MEMO.parsed(text, cls._parse)

    @classmethod
    def _parse(cls, text: str) -> CSeq:
        m = _CSEQ.match(text)
        if m is None:
            raise SIPParseError("Malformed CSeq header")
        digits = m.group("number").lstrip("0") or "0"
        # RFC 3261 8.1.1.5: "The sequence number value MUST be expressible as a 32-bit
        # unsigned integer and MUST be less than 2**31" (RFC 4475 3.1.2.4 scalar02).  The
        # length test comes first so a 10,000-digit number costs nothing to refuse.
        if len(digits) > 10 or int(digits) >= 2**31:
            raise SIPParseError("CSeq number is too large")
        return cls(int(digits), m.group("method"))

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


_NAME_ADDR_MEMO: ParseMemo[NameAddr] = ParseMemo()
_VIA_MEMO: ParseMemo[Via] = ParseMemo()
_CSEQ_MEMO: ParseMemo[CSeq] = ParseMemo()
_VALID_NAME_ADDRS: ParseMemo[bool] = ParseMemo()


class Headers:
    """An immutable ordered list of ``(name, value)`` lines.

    Names are stored in canonical long form; lookups are case-insensitive.  A header that
    came as several values on one line stays one line here; :meth:`get_all` splits
    multi-value headers into their values.
    """

    __slots__ = ("_items", "_index")

    _items: tuple[str, ...]
    # Every name then its value, in one flat tuple: a message's lines are one object
    # for the cyclic collector to visit (once: a tuple of strings then drops out of its
    # view), not one per line, and a call has some 150 lines under way at any time.
    _index: dict[str, tuple[str, ...]]

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        # (Every outgoing message is built here: one pass, one lookup per line for its
        # canonical name and index key; a name met again - Via, Record-Route - extends
        # its tuple.)
        spellings = _SPELLINGS
        flat: list[str] = []
        add = flat.append
        index: dict[str, tuple[str, ...]] = {}
        for name, value in items:
            entry = spellings.get(name)
            if entry is None:
                entry = _spelling(name)
            known, key = entry
            add(known)
            add(value)
            bucket = index.get(key)
            index[key] = (value,) if bucket is None else (*bucket, value)
        self._items = tuple(flat)
        self._index = index

    @classmethod
    def _from_parsed(
        cls, items: tuple[str, ...], index: dict[str, tuple[str, ...]]
    ) -> Headers:
        """Build from names already canonical, flat (name, value, name, value...), and
        an index already built (the parser's fast path: it has done both while reading
        the lines)."""
        self = cls.__new__(cls)
        self._items = items
        self._index = index
        return self

    # -- reading --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[str, str]]:
        flat = iter(self._items)
        return zip(flat, flat, strict=True)  # (a name for every value)

    def __len__(self) -> int:
        return len(self._items) // 2

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _index_key(name) in self._index

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def lines(self, name: str) -> list[str]:
        """Every header line of that name, unsplit."""
        return list(self._index.get(_index_key(name), ()))

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of a header (the first comma-separated one for multi-value)."""
        key = _index_key(name)
        lines = self._index.get(key)
        if not lines:
            return default
        if key in MULTI_VALUE:
            values = split_commas(lines[0])
            return values[0] if values else default
        return lines[0]

    def get_all(self, name: str) -> list[str]:
        """All values of a header, in order, split on commas for multi-value headers."""
        key = _index_key(name)
        lines = self._index.get(key, ())
        if key in MULTI_VALUE:
            return [v for line in lines for v in split_commas(line)]
        return list(lines)

    # -- building (each returns a new Headers) -------------------------------------------
    def with_added(self, name: str, value: str, *, first: bool = False) -> Headers:
        if first:
            return Headers(((name, value), *self))
        return Headers((*self, (name, value)))

    def with_replaced(self, name: str, value: str | None) -> Headers:
        """Replace every line of ``name`` with one line (or remove them for None).

        The new line stands where the first old one stood (or at the end)."""
        key = _index_key(name)
        out: list[tuple[str, str]] = []
        placed = value is None
        for n, v in self:
            if n.lower() == key:
                if not placed:
                    out.append((name, value))  # type: ignore[arg-type]
                    placed = True
                continue
            out.append((n, v))
        if not placed:
            out.append((name, value))  # type: ignore[arg-type]
        return Headers(out)

    def without(self, *names: str) -> Headers:
        keys = {_index_key(n) for n in names}
        return Headers((n, v) for n, v in self if n.lower() not in keys)

    def with_first_value_removed(self, name: str) -> Headers:
        """Remove the first value of a multi-value header (e.g. the top Via)."""
        key = _index_key(name)
        out: list[tuple[str, str]] = []
        done = False
        for n, v in self:
            if not done and n.lower() == key:
                done = True
                rest = split_commas(v)[1:]
                if rest:
                    out.append((n, ", ".join(rest)))
                continue
            out.append((n, v))
        return Headers(out)
