"""SIP and other URIs (RFC 3261 sections 19.1 and 25.1), parsed into frozen values.

``URI.parse`` accepts ``sip:``/``sips:`` URIs in full detail and keeps any other scheme
(``tel:``, ``mailto:``, ``http:``...) as an opaque ``absoluteURI``: RFC 3261 section 8.2.2.1
leaves it to the element to decide whether it serves such a scheme (a server that does not
answers 416).

The grammar of RFC 3261 25.1 is written out once as compiled regular expressions: a URI
that matches is built straight from the match (about a microsecond), and one that does not
is handed to :func:`_diagnose`, which only looks for the words to put in the 400 reason
phrase.  There is a single acceptance rule, so a URI accepted while validating a message
is accepted again when a later layer re-parses the same text.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Generic, NoReturn, TypeVar
from urllib.parse import unquote

from sip.errors import SIPParseError
from sip.frozen import fast_init, positional_factory

SIP_SCHEMES = frozenset({"sip", "sips"})

# RFC 3261 25.1, character classes (inside [...]):
#   unreserved      = alphanum / mark;  mark = "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
#   user-unreserved = "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
#   password        = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
#   param-unreserved= "[" / "]" / "/" / ":" / "&" / "+" / "$"
#   hnv-unreserved  = "[" / "]" / "/" / "?" / ":" / "+" / "$"
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_ESCAPED = r"%[0-9A-Fa-f]{2}"
_USER = rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESCAPED})+"
_PASSWORD = rf"(?:[{_UNRESERVED}&=+$,]|{_ESCAPED})*"
_PARAMCHARS = rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESCAPED})+"
_HNVCHARS = rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESCAPED})"
# hostname = *( domainlabel "." ) toplabel [ "." ]; we accept any dotted alphanumeric
# label sequence (IPv4address is a special case of it) and IPv6 references in brackets.
HOST_RE = r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?\.?"



def sip_uri_pattern(prefix: str = "") -> str:
    """The sip/sips URI grammar as a regex source (no anchors), its named groups
    prefixed with ``prefix``: scheme, user, password, host, port, params, headers.
    Embedded in larger header grammars so a whole name-addr validates in one match."""
    return (
        rf"(?P<{prefix}scheme>[Ss][Ii][Pp][Ss]?):"
        rf"(?:(?P<{prefix}user>{_USER})(?::(?P<{prefix}password>{_PASSWORD}))?@)?"
        rf"(?P<{prefix}host>{HOST_RE})"
        rf"(?::(?P<{prefix}port>[0-9]{{1,5}}))?"
        rf"(?P<{prefix}params>(?:;{_PARAMCHARS}(?:={_PARAMCHARS})?)*)"
        # RFC 3261 25.1: headers = "?" header *( "&" header ); header = hname "=" hvalue
        rf"(?:\?(?P<{prefix}headers>{_HNVCHARS}+={_HNVCHARS}*(?:&{_HNVCHARS}+={_HNVCHARS}*)*))?"
    )


_SIP_URI = re.compile(sip_uri_pattern() + r"\Z")
# absoluteURI = scheme ":" ( hier-part / opaque-part ): we keep the part after the colon
# as given, only refusing what would end or break a header value.
_OTHER_URI = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+\-.]*):(?P<rest>[^\s<>\"\x00-\x1f\x7f]+)\Z")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*\Z")
_HOSTPORT = re.compile(rf"(?P<host>{HOST_RE})(?::(?P<port>[0-9]{{1,5}}))?\Z")

_T = TypeVar("_T")


class ParseMemo(Generic[_T]):
    """A bounded map from a header text to its parsed value.

    Every message of a dialog repeats the same From, To, Via and URI texts, and the
    stack reads them several times per message; the values are immutable, so each text
    is parsed once.  Only short texts are kept (a hostile 64 KiB header is parsed, not
    stored), and the map is emptied when full rather than tracking recency: cheap, and
    a working set of a few thousand live dialogs fits.
    """

    __slots__ = ("_values", "_limit", "_longest")

    def __init__(self, limit: int = 4096, longest: int = 512) -> None:
        self._values: dict[str, _T] = {}
        self._limit = limit
        self._longest = longest

    def get(self, text: str) -> _T | None:
        return self._values.get(text)

    def put(self, text: str, value: _T) -> None:
        if len(text) > self._longest:
            return
        if len(self._values) >= self._limit:
            self._values.clear()
        self._values[text] = value

    def parsed(self, text: str, parse: Callable[[str], _T]) -> _T:
        """The value ``parse(text)`` gave before, or its value now (then kept)."""
        known = self._values.get(text)
        if known is None:
            known = parse(text)
            self.put(text, known)
        return known


_URI_MEMO: ParseMemo[URI] = ParseMemo()


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class URI:
    """A URI.  For sip/sips every part is parsed; for other schemes only ``opaque``.

    ``params`` keeps URI parameters in order as (name, value-or-None); names compare
    case-insensitively (RFC 3261 19.1.4), so lookups go through :meth:`param`.
    ``headers`` is the raw text after ``?`` (kept as given: RFC 4475 3.3.14).
    ``user``, ``password`` and parameters keep their %-escapes as received; compare with
    :meth:`equivalent` or read :attr:`unescaped_user`.
    """

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: str | None = None
    opaque: str | None = field(default=None)
    # Its text once written (URIs are shared through the parse memo and written into
    # every message, trace and record that names them).
    _text: str | None = field(default=None, init=False, repr=False, compare=False)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> URI:
        """Parse ``text`` or raise :class:`SIPParseError` naming the defect."""
        return _URI_MEMO.parsed(text, cls._parse)

    @classmethod
    def _parse(cls, text: str) -> URI:
        m = _SIP_URI.match(text)
        if m is None:
            return cls(scheme=_other_scheme(text), opaque=text[text.index(":") + 1 :])
        scheme, user, password, host, port_text, params_text, headers = m.groups()
        port = check_host_port(host, port_text)
        params: tuple[tuple[str, str | None], ...] = ()
        if params_text:
            params = tuple(_split_param(item) for item in params_text[1:].split(";"))
        return _make_uri(scheme.lower(), user, password, host, port, params, headers)

    @classmethod
    def sip(cls, user: str | None, host: str, port: int | None = None, **params: str | None) -> URI:
        """Build a ``sip:`` URI from parts (our own values; not validated as input)."""
        return cls(scheme="sip", user=user, host=host, port=port, params=tuple(params.items()))

    # -- access ---------------------------------------------------------------------------
    @property
    def is_sip(self) -> bool:
        """True for ``sip:`` and ``sips:`` URIs."""
        return self.scheme in SIP_SCHEMES

    @property
    def unescaped_user(self) -> str | None:
        """The user part with %-escapes decoded (RFC 3261 19.1.4 compares it so)."""
        return None if self.user is None else unquote(self.user)

    def param(self, name: str) -> str | None:
        """Value of a URI parameter (case-insensitive name); '' for a flag; None if absent."""
        name = name.lower()
        for key, value in self.params:
            if key.lower() == name:
                return "" if value is None else value
        return None

    def has_param(self, name: str) -> bool:
        """Whether a parameter of that name (case-insensitive) is present."""
        name = name.lower()
        return any(key.lower() == name for key, _ in self.params)

    def with_params(self, **params: str | None) -> URI:
        """A copy with these parameters set (replacing same-named ones)."""
        lowered = {k.lower() for k in params}
        kept = tuple(p for p in self.params if p[0].lower() not in lowered)
        return replace(self, params=kept + tuple(params.items()))

    def without_params(self, *names: str) -> URI:
        """A copy without the named parameters."""
        lowered = {n.lower() for n in names}
        return replace(self, params=tuple(p for p in self.params if p[0].lower() not in lowered))

    def replace(self, **changes: object) -> URI:
        """A copy with fields replaced (``dataclasses.replace``)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def host_port(self) -> str:
        """``host`` or ``host:port``."""
        host = self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def aor(self) -> str:
        """The address-of-record key: ``user@host`` lower-cased host, no port or params."""
        user = self.unescaped_user or ""
        return f"{user}@{self.host.lower()}" if user else self.host.lower()

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = self._write()
            object.__setattr__(self, "_text", text)
        return text

    def _write(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host_port)
        for name, value in self.params:
            out.append(f";{name}" if value is None else f";{name}={value}")
        if self.headers is not None:
            out.append("?" + self.headers)
        return "".join(out)

    def equivalent(self, other: URI) -> bool:
        """RFC 3261 19.1.4 comparison (escapes decoded; scheme/host case-insensitive)."""
        if self.scheme != other.scheme:
            return False
        if self.opaque is not None or other.opaque is not None:
            return self.opaque == other.opaque
        # "Comparison of the userinfo of SIP and SIPS URIs is case-sensitive ...
        # Characters other than those in the "reserved" set are equivalent to their
        # encoding" (19.1.4): compare with escapes decoded.
        if unquote(self.user or "") != unquote(other.user or ""):
            return False
        if unquote(self.password or "") != unquote(other.password or ""):
            return False
        if self.host.lower() != other.host.lower() or self.port != other.port:
            return False
        mine = _decoded_params(self.params)
        theirs = _decoded_params(other.params)
        # "A URI that includes a user, ttl, method, maddr or transport parameter ...
        # never matches a URI without it" (and vice versa).
        for key in ("user", "ttl", "method", "maddr", "transport"):
            if (key in mine or key in theirs) and mine.get(key) != theirs.get(key):
                return False
        # "Any other uri-parameter appearing in only one URI is ignored".
        if not all(theirs[k] == v for k, v in mine.items() if k in theirs):
            return False
        # "URI header components are never ignored ... the headers MUST be present in
        # both URIs and match".
        return _decoded_headers(self.headers) == _decoded_headers(other.headers)


def validate_uri(text: str) -> bool:
    """Check ``text`` by exactly the rule :meth:`URI.parse` applies, without building
    the value (the parser's fast path); raise :class:`SIPParseError` naming the defect.

    Returns True for a sip/sips URI with ``?headers``, False otherwise."""
    m = _SIP_URI.match(text)
    if m is None:
        _other_scheme(text)
        return False
    check_host_port(m.group("host"), m.group("port"))
    return m.group("headers") is not None


def _other_scheme(text: str) -> str:
    """The scheme of a valid non-SIP absoluteURI, or raise naming the defect."""
    other = _OTHER_URI.match(text)
    if other is None:
        _diagnose(text)
    scheme = other.group("scheme").lower()
    if scheme in SIP_SCHEMES:
        _diagnose(text)
    return scheme


# URI(scheme=..., ..., headers=...) from positional values, for the parser (sip.frozen).
_make_uri: Callable[
    [str, str | None, str | None, str, int | None, tuple[tuple[str, str | None], ...], str | None], URI
] = positional_factory(URI, "scheme", "user", "password", "host", "port", "params", "headers")


def check_host_port(host: str, port_text: str | None, bad_port: str = "Bad port in URI") -> int | None:
    """The checks on a matched host and port the grammar regex cannot make (IPv6
    reference syntax, port range); returns the port.  ``bad_port`` is the reason given
    for a port out of range."""
    if host[0] == "[":
        _check_ipv6(host)
    if port_text is None:
        return None
    port = int(port_text)
    if not 0 < port < 65536:
        raise SIPParseError(bad_port)
    return port


def _split_param(item: str) -> tuple[str, str | None]:
    name, eq, value = item.partition("=")
    return name, (value if eq else None)


def _decoded_params(params: tuple[tuple[str, str | None], ...]) -> dict[str, str]:
    return {unquote(k).lower(): unquote(v or "").lower() for k, v in params}


def _decoded_headers(headers: str | None) -> frozenset[tuple[str, str]]:
    if not headers:
        return frozenset()
    out = set()
    for item in headers.split("&"):
        name, _, value = item.partition("=")
        out.add((unquote(name).lower(), unquote(value)))
    return frozenset(out)


def _check_ipv6(ref: str) -> None:
    try:
        ipaddress.IPv6Address(ref[1:-1])
    except ValueError:
        raise SIPParseError("Bad IPv6 reference") from None


def _diagnose(text: str) -> NoReturn:
    """Raise the :class:`SIPParseError` that names why ``text`` is not a URI."""
    colon = text.find(":")
    if colon <= 0:
        raise SIPParseError("URI has no scheme")
    if not _SCHEME.match(text[:colon]):
        raise SIPParseError("URI scheme is not a token")
    rest = text[colon + 1 :]
    if not rest:
        raise SIPParseError("Empty URI after the scheme")
    if any(c in rest for c in " \t\r\n"):
        raise SIPParseError("Whitespace inside a URI")
    if any(c in rest for c in '<>"'):
        raise SIPParseError('Characters <>" inside a URI')
    if text[:colon].lower() not in SIP_SCHEMES:
        raise SIPParseError("Control characters inside a URI")
    q = rest.find("?")
    at = rest.rfind("@", 0, q if q != -1 else len(rest))
    if at == 0 or rest.startswith(":"):
        raise SIPParseError("Empty user part before @ in URI")
    if "%" in text and re.search(r"%(?![0-9A-Fa-f]{2})", text):
        raise SIPParseError("Bad %-escape in URI")
    if q != -1:
        raise SIPParseError("Bad URI headers")
    hostpart = rest[at + 1 :].split(";", 1)
    if not hostpart[0]:
        raise SIPParseError("URI has no host")
    if hostpart[0].startswith("["):
        raise SIPParseError("Bad IPv6 reference")
    if ":" in hostpart[0]:
        port = hostpart[0].rpartition(":")[2]
        if not port.isdigit():
            raise SIPParseError("Bad port in URI")
    if not _HOSTPORT.match(hostpart[0]):
        raise SIPParseError("Bad host in URI")
    if len(hostpart) > 1:
        raise SIPParseError("Bad URI parameter")
    raise SIPParseError("Bad characters in URI user part")


# RFC 3261 25.1: user = 1*( unreserved / escaped / user-unreserved ).
_USER_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()&=+$,;?/")


def escape_user(text: str) -> str:
    """``text`` as the user part of a SIP URI: every character outside the user
    grammar percent-encoded (as UTF-8).  The inverse of :attr:`URI.unescaped_user`."""
    if all(c in _USER_SAFE for c in text):
        return text
    return "".join(c if c in _USER_SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def parse_hostport(text: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (with IPv6 references in brackets); validate both parts."""
    if not text:
        raise SIPParseError("URI has no host")
    m = _HOSTPORT.match(text)
    if m is None:
        raise SIPParseError("Bad IPv6 reference" if text[0] == "[" else "Bad host or port")
    host = m.group("host")
    if host[0] == "[":
        _check_ipv6(host)
    port_text = m.group("port")
    port: int | None = None
    if port_text is not None:
        port = int(port_text)
        if not 0 < port < 65536:
            raise SIPParseError("Bad port")
    return host, port
