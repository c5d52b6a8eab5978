"""SIP and other URIs (RFC 3261 sections 19.1 and 25.1), parsed into frozen values.

``URI.parse`` accepts ``sip:``/``sips:`` URIs in full detail and keeps any other scheme
(``tel:``, ``mailto:``, ``http:``...) as an opaque ``absoluteURI``: RFC 3261 section 8.2.2.1
leaves it to the element to decide whether it serves such a scheme (a server that does not
answers 416).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from urllib.parse import unquote

from sip.errors import SIPParseError

# RFC 3261 25.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*\Z")
# Characters that may appear unescaped in a user part (unreserved / user-unreserved /
# escaped); anything else (notably whitespace and '<' '>') makes the URI invalid.
_USER_OK = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]*\Z")
_PASSWORD_OK = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,%]*\Z")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?\.?\Z|[A-Za-z0-9]\Z")
_IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\Z")
_IPV6_BODY = re.compile(r"[0-9A-Fa-f:.]+\Z")
_PARAM_OK = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]*\Z")
_URI_HEADERS_OK = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/?:+$%=&@,;]*\Z")

SIP_SCHEMES = frozenset({"sip", "sips"})


def _check_escapes(text: str, what: str) -> None:
    i = text.find("%")
    while i != -1:
        if len(text) < i + 3 or not all(c in "0123456789abcdefABCDEF" for c in text[i + 1 : i + 3]):
            raise SIPParseError(f"Bad %-escape in URI {what}")
        i = text.find("%", i + 3)


@dataclass(frozen=True, slots=True, kw_only=True)
class URI:
    """A URI.  For sip/sips every part is parsed; for other schemes only ``opaque``.

    ``params`` keeps URI parameters in order as (name, value-or-None); names compare
    case-insensitively (RFC 3261 19.1.4), so lookups go through :meth:`param`.
    ``headers`` is the raw text after ``?`` (kept as given: RFC 4475 3.3.14).
    """

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: str | None = None
    opaque: str | None = field(default=None)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> URI:
        """Parse ``text`` or raise :class:`SIPParseError` naming the defect."""
        colon = text.find(":")
        if colon <= 0:
            raise SIPParseError("URI has no scheme")
        scheme = text[:colon]
        if not _SCHEME.match(scheme):
            raise SIPParseError("URI scheme is not a token")
        scheme = scheme.lower()
        rest = text[colon + 1 :]
        if any(c in rest for c in " \t\r\n<>\""):
            raise SIPParseError("Whitespace or <>\" inside a URI")
        if scheme not in SIP_SCHEMES:
            if not rest:
                raise SIPParseError("Empty URI after the scheme")
            return cls(scheme=scheme, opaque=rest)
        headers: str | None = None
        q = rest.find("?")
        if q != -1:
            headers = rest[q + 1 :]
            rest = rest[:q]
            if not _URI_HEADERS_OK.match(headers):
                raise SIPParseError("Bad characters in URI headers")
        user: str | None = None
        password: str | None = None
        at = rest.rfind("@")
        if at != -1:
            userinfo = rest[:at]
            rest = rest[at + 1 :]
            pc = userinfo.find(":")
            if pc != -1:
                user, password = userinfo[:pc], userinfo[pc + 1 :]
                if not _PASSWORD_OK.match(password):
                    raise SIPParseError("Bad characters in URI password")
            else:
                user = userinfo
            if user == "":
                raise SIPParseError("Empty user part before @ in URI")
            if not _USER_OK.match(user):
                raise SIPParseError("Bad characters in URI user part")
            _check_escapes(user, "user part")
        # hostport *( ";" uri-parameter )
        if rest.startswith("["):
            end = rest.find("]")
            if end == -1:
                raise SIPParseError("Unterminated IPv6 reference in URI")
            hostport, params_text = rest[: end + 1], rest[end + 1 :]
            semi = params_text.find(";")
            if semi != -1:
                hostport += params_text[:semi]
                params_text = params_text[semi:]
            else:
                hostport += params_text
                params_text = ""
        else:
            semi = rest.find(";")
            hostport, params_text = (rest, "") if semi == -1 else (rest[:semi], rest[semi:])
        host, port = parse_hostport(hostport)
        params: list[tuple[str, str | None]] = []
        if params_text:
            for item in params_text[1:].split(";"):
                if not item:
                    raise SIPParseError("Empty URI parameter")
                name, eq, value = item.partition("=")
                if not name or not _PARAM_OK.match(name) or (eq and not _PARAM_OK.match(value)):
                    raise SIPParseError("Bad URI parameter")
                _check_escapes(item, "parameter")
                params.append((name, value if eq else None))
        return cls(
            scheme=scheme,
            user=user,
            password=password,
            host=host,
            port=port,
            params=tuple(params),
            headers=headers,
        )

    @classmethod
    def sip(cls, user: str | None, host: str, port: int | None = None, **params: str | None) -> URI:
        """Build a ``sip:`` URI from parts (our own values; not validated as input)."""
        return cls(scheme="sip", user=user, host=host, port=port, params=tuple(params.items()))

    # -- access ---------------------------------------------------------------------------
    @property
    def is_sip(self) -> bool:
        return self.scheme in SIP_SCHEMES

    @property
    def unescaped_user(self) -> str | None:
        return None if self.user is None else unquote(self.user)

    def param(self, name: str) -> str | None:
        """Value of a URI parameter (case-insensitive name); '' for a flag; None if absent."""
        name = name.lower()
        for key, value in self.params:
            if key.lower() == name:
                return "" if value is None else value
        return None

    def has_param(self, name: str) -> bool:
        name = name.lower()
        return any(key.lower() == name for key, _ in self.params)

    def with_params(self, **params: str | None) -> URI:
        """A copy with these parameters set (replacing same-named ones)."""
        lowered = {k.lower() for k in params}
        kept = tuple(p for p in self.params if p[0].lower() not in lowered)
        return replace(self, params=kept + tuple(params.items()))

    def without_params(self, *names: str) -> URI:
        lowered = {n.lower() for n in names}
        return replace(self, params=tuple(p for p in self.params if p[0].lower() not in lowered))

    def replace(self, **changes: object) -> URI:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def host_port(self) -> str:
        host = self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def aor(self) -> str:
        """The address-of-record key: ``user@host`` lower-cased host, no port or params."""
        user = self.unescaped_user or ""
        return f"{user}@{self.host.lower()}" if user else self.host.lower()

    def __str__(self) -> str:
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
        if unquote(self.user or "") != unquote(other.user or ""):
            return False
        if self.password != other.password or self.host.lower() != other.host.lower():
            return False
        if self.port != other.port:
            return False
        mine = {k.lower(): (v or "").lower() for k, v in self.params}
        theirs = {k.lower(): (v or "").lower() for k, v in other.params}
        for key in ("user", "ttl", "method", "maddr", "transport"):
            if (key in mine or key in theirs) and mine.get(key) != theirs.get(key):
                return False
        return all(theirs[k] == v for k, v in mine.items() if k in theirs)


def parse_hostport(text: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (with IPv6 references in brackets); validate both parts."""
    if not text:
        raise SIPParseError("URI has no host")
    if text.startswith("["):
        end = text.find("]")
        if end == -1 or not _IPV6_BODY.match(text[1:end]) or ":" not in text[1:end]:
            raise SIPParseError("Bad IPv6 reference")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise SIPParseError("Junk after IPv6 reference")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_ = text.partition(":")
        port_text = port_text_ if sep else None
        if not (_IPV4.match(host) or _HOSTNAME.match(host)):
            raise SIPParseError("Bad host in URI")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
            raise SIPParseError("Bad port")
        port = int(port_text)
    return host, port
