"""Header fields: names, multi-value splitting, and the structured values we use.

Header values are kept as text exactly as received (after unfolding) in a
:class:`Headers` tuple; structured views (:class:`NameAddr`, :class:`Via`, CSeq...) are
parsed on demand, so a proxy relays what it does not understand untouched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from sip.errors import SIPParseError
from sip.uri import URI, parse_hostport

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
    lower = name.lower()
    if len(lower) == 1 and lower in COMPACT:
        return COMPACT[lower]
    return _CANONICAL.get(lower, name)


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


def parse_params(text: str) -> tuple[tuple[str, str | None], ...]:
    """Parse ``;name=value;flag`` header parameters (quoted values kept with quotes)."""
    params: list[tuple[str, str | None]] = []
    text = text.strip()
    if not text:
        return ()
    if not text.startswith(";"):
        raise SIPParseError("Junk where header parameters were expected")
    for item in _split_semis(text[1:]):
        name, eq, value = item.partition("=")
        name = name.strip()
        if not name or not TOKEN.match(name):
            raise SIPParseError("Bad header parameter name")
        params.append((name, value.strip() if eq else None))
    return tuple(params)


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
    if quoted:
        raise SIPParseError("Unterminated quoted string in header parameters")
    out.append(text[start:])
    return out


def _param_lookup(params: tuple[tuple[str, str | None], ...], name: str) -> str | None:
    name = name.lower()
    for key, value in params:
        if key.lower() == name:
            return "" if value is None else value
    return None


def _params_text(params: tuple[tuple[str, str | None], ...]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


@dataclass(frozen=True, slots=True, kw_only=True)
class NameAddr:
    """``[display-name] <URI> *(;param)`` or a bare addr-spec (From, To, Contact, Route)."""

    display_name: str | None
    uri: URI
    params: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        display: str | None = None
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
            display = text[1:i].replace('\\"', '"').replace("\\\\", "\\")
            text = text[i + 1 :].lstrip()
            if not text.startswith("<"):
                raise SIPParseError("Quoted display name not followed by <URI>")
        lt = text.find("<")
        if lt != -1:
            before = text[:lt].strip()
            if before:
                if display is not None:
                    raise SIPParseError("Two display names")
                for word in before.split():
                    if not TOKEN.match(word):
                        raise SIPParseError("Non-token characters in unquoted display name")
                display = " ".join(before.split())
            gt = text.find(">", lt)
            if gt == -1:
                raise SIPParseError("Unterminated <URI>")
            uri = URI.parse(text[lt + 1 : gt].strip())
            params = parse_params(text[gt + 1 :])
        else:
            # addr-spec: parameters after ';' belong to the header (RFC 3261 20.10)
            semi = text.find(";")
            uri_text, param_text = (text, "") if semi == -1 else (text[:semi], text[semi:])
            uri_text = uri_text.strip()
            if not uri_text or " " in uri_text or "\t" in uri_text:
                raise SIPParseError("Spaces inside addr-spec")
            uri = URI.parse(uri_text)
            params = parse_params(param_text)
        return cls(display_name=display, uri=uri, params=params)

    def param(self, name: str) -> str | None:
        return _param_lookup(self.params, name)

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def with_tag(self, tag: str) -> NameAddr:
        kept = tuple(p for p in self.params if p[0].lower() != "tag")
        return replace(self, params=kept + (("tag", tag),))

    def with_params(self, **params: str | None) -> NameAddr:
        lowered = {k.lower() for k in params}
        kept = tuple(p for p in self.params if p[0].lower() not in lowered)
        return replace(self, params=kept + tuple(params.items()))

    def replace(self, **changes: object) -> NameAddr:
        return replace(self, **changes)  # type: ignore[arg-type]

    def __str__(self) -> str:
        if self.display_name:
            escaped = self.display_name.replace("\\", "\\\\").replace('"', '\\"')
            head = f'"{escaped}" <{self.uri}>'
        else:
            head = f"<{self.uri}>"
        return head + _params_text(self.params)


_VIA_SENT = re.compile(
    r"\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s+([^;\s]+(?:\s*:\s*\d+)?)\s*(.*)\Z",
    re.DOTALL | re.IGNORECASE,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=...;received=...;rport``."""

    transport: str
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Via:
        m = _VIA_SENT.match(text)
        if not m:
            raise SIPParseError("Malformed Via header")
        host, port = parse_hostport(m.group(2).replace(" ", "").replace("\t", ""))
        return cls(transport=m.group(1).upper(), host=host, port=port, params=parse_params(m.group(3)))

    def param(self, name: str) -> str | None:
        return _param_lookup(self.params, name)

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def sent_by(self) -> tuple[str, int]:
        """sent-by host and port (5060 when absent)."""
        return self.host, self.port or 5060

    def with_params(self, **params: str | None) -> Via:
        lowered = {k.lower() for k in params}
        kept = tuple(p for p in self.params if p[0].lower() not in lowered)
        return replace(self, params=kept + tuple(params.items()))

    def __str__(self) -> str:
        hp = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"SIP/2.0/{self.transport} {hp}{_params_text(self.params)}"


@dataclass(frozen=True, slots=True)
class CSeq:
    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit() or not TOKEN.match(parts[1]):
            raise SIPParseError("Malformed CSeq header")
        number = int(parts[0])
        # RFC 3261 8.1.1.5: the sequence number MUST be expressible as a 32-bit integer.
        if number >= 2**31:
            raise SIPParseError("CSeq number is too large")
        return cls(number, parts[1])

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


class Headers:
    """An immutable ordered list of ``(name, value)`` lines.

    Names are stored in canonical long form; lookups are case-insensitive.  A header that
    came as several values on one line stays one line here; :meth:`get_all` splits
    multi-value headers into their values.
    """

    __slots__ = ("_items", "_index")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: tuple[tuple[str, str], ...] = tuple(
            (canonical_name(n), v) for n, v in items
        )
        index: dict[str, list[str]] = {}
        for name, value in self._items:
            index.setdefault(name.lower(), []).append(value)
        self._index = index

    # -- reading --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical_name(name).lower() in self._index

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def lines(self, name: str) -> list[str]:
        """Every header line of that name, unsplit."""
        return list(self._index.get(canonical_name(name).lower(), ()))

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of a header (the first comma-separated one for multi-value)."""
        lines = self._index.get(canonical_name(name).lower())
        if not lines:
            return default
        if canonical_name(name).lower() in MULTI_VALUE:
            values = split_commas(lines[0])
            return values[0] if values else default
        return lines[0]

    def get_all(self, name: str) -> list[str]:
        """All values of a header, in order, split on commas for multi-value headers."""
        key = canonical_name(name).lower()
        lines = self._index.get(key, ())
        if key in MULTI_VALUE:
            return [v for line in lines for v in split_commas(line)]
        return list(lines)

    # -- building (each returns a new Headers) -------------------------------------------
    def with_added(self, name: str, value: str, *, first: bool = False) -> Headers:
        if first:
            return Headers(((name, value), *self._items))
        return Headers((*self._items, (name, value)))

    def with_replaced(self, name: str, value: str | None) -> Headers:
        """Replace every line of ``name`` with one line (or remove them for None).

        The new line stands where the first old one stood (or at the end)."""
        key = canonical_name(name).lower()
        out: list[tuple[str, str]] = []
        placed = value is None
        for n, v in self._items:
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
        keys = {canonical_name(n).lower() for n in names}
        return Headers((n, v) for n, v in self._items if n.lower() not in keys)

    def with_first_value_removed(self, name: str) -> Headers:
        """Remove the first value of a multi-value header (e.g. the top Via)."""
        key = canonical_name(name).lower()
        out: list[tuple[str, str]] = []
        done = False
        for n, v in self._items:
            if not done and n.lower() == key:
                done = True
                rest = split_commas(v)[1:]
                if rest:
                    out.append((n, ", ".join(rest)))
                continue
            out.append((n, v))
        return Headers(out)
