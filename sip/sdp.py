"""SDP session descriptions (RFC 4566): a small frozen model and the B2BUA's NAT fix.

A body is kept as its lines, each with its own line ending, so that an untouched
description serialises back byte for byte; the structured views (origin, connection,
media sections with their port, protocol, formats and attributes) are read from those
lines.  Lines this module does not interpret (``i=``, ``b=``, ``t=``, ``k=``, unknown
letters...) stay verbatim and in order.

Bodies come from the network: :meth:`SessionDescription.parse` and
:func:`rewrite_connection_addresses` raise :class:`~sip.errors.SDPError` and nothing else,
whatever the bytes (a hypothesis test holds them to it).  Text is decoded as UTF-8 with
undecodable bytes carried through unchanged (``surrogateescape``): RFC 4566 lets
``a=charset`` select another character set for some fields, and a relay must not mangle
what it does not read.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from sip.errors import SDPError, SIPValueError

MAX_SDP = 64 * 1024
"""The largest body parsed (no SIP message is bigger)."""

# RFC 4566 5: "<type>=<value>", where <type> MUST be exactly one case-significant
# character and no whitespace is allowed on either side of the "=".
_LINE = re.compile(r"[a-zA-Z]=")
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+\Z")  # RFC 4566 9: token-char
_PORT = re.compile(r"([0-9]{1,5})(?:/([0-9]{1,5}))?\Z")

# Where a NATed agent's own address shows through: RFC 1918, RFC 6598 shared address
# space (carrier-grade NAT) and RFC 3927 link-local.
PRIVATE_NETWORKS: tuple[ipaddress.IPv4Network, ...] = tuple(
    ipaddress.IPv4Network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16")
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SDPLine:
    """One line: its type letter, the text after ``=``, and the line ending it had
    (``"\\r\\n"``, ``"\\n"``, or ``""`` for an unterminated last line).  A blank line is
    kept with an empty ``type``."""

    type: str
    value: str
    eol: str = "\r\n"

    def __str__(self) -> str:
        return f"{self.type}={self.value}{self.eol}" if self.type else self.eol


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """``c=<nettype> <addrtype> <connection-address>``; ``suffix`` keeps a multicast
    ``/ttl[/count]`` as given."""

    nettype: str
    addrtype: str
    address: str
    suffix: str = ""

    @classmethod
    def parse(cls, value: str) -> Connection:
        """Parse the value of a ``c=`` line; raise :class:`SDPError`."""
        fields = value.split()
        if len(fields) != 3:
            raise SDPError("Malformed c= line")
        nettype, addrtype, address = fields
        if not (_TOKEN.match(nettype) and _TOKEN.match(addrtype)):
            raise SDPError("Malformed c= line")
        address, slash, suffix = address.partition("/")
        if not address:
            raise SDPError("Empty address in c= line")
        return cls(nettype=nettype, addrtype=addrtype, address=address, suffix=slash + suffix)

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}{self.suffix}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    """``o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>``."""

    username: str
    sess_id: str
    sess_version: str
    nettype: str
    addrtype: str
    address: str

    @classmethod
    def parse(cls, value: str) -> Origin:
        """Parse the value of an ``o=`` line; raise :class:`SDPError`."""
        fields = value.split()
        if len(fields) != 6:
            raise SDPError("Malformed o= line")
        username, sess_id, version, nettype, addrtype, address = fields
        return cls(
            username=username,
            sess_id=sess_id,
            sess_version=version,
            nettype=nettype,
            addrtype=addrtype,
            address=address,
        )

    def __str__(self) -> str:
        return (
            f"{self.username} {self.sess_id} {self.sess_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


def _attributes(lines: tuple[SDPLine, ...]) -> tuple[tuple[str, str | None], ...]:
    out: list[tuple[str, str | None]] = []
    for line in lines:
        if line.type == "a":
            # attribute = (att-field ":" att-value) / att-field
            name, colon, value = line.value.partition(":")
            out.append((name, value if colon else None))
    return tuple(out)


def _first(lines: tuple[SDPLine, ...], kind: str) -> SDPLine | None:
    for line in lines:
        if line.type == kind:
            return line
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Media:
    """One media section: its ``m=`` line first, then every line up to the next ``m=``."""

    lines: tuple[SDPLine, ...]

    def _fields(self) -> list[str]:
        return self.lines[0].value.split()

    def _port(self) -> re.Match[str]:
        m = _PORT.match(self._fields()[1])
        if m is None:
            raise SDPError("Bad port in m= line")
        return m

    @property
    def media(self) -> str:
        """``audio``, ``video``, ``application``..."""
        return self._fields()[0]

    @property
    def port(self) -> int:
        """The transport port (0: a rejected or disabled stream, RFC 3264 6)."""
        return int(self._port().group(1))

    @property
    def port_count(self) -> int | None:
        """The ``/<number of ports>`` of the m= line, if given."""
        count = self._port().group(2)
        return None if count is None else int(count)

    @property
    def proto(self) -> str:
        """``RTP/AVP``, ``RTP/SAVP``, ``udp``..."""
        return self._fields()[2]

    @property
    def formats(self) -> tuple[str, ...]:
        """The format list (RTP payload type numbers for RTP profiles)."""
        return tuple(self._fields()[3:])

    @property
    def connection(self) -> Connection | None:
        """This section's own ``c=`` (None: the session-level one applies)."""
        line = _first(self.lines, "c")
        return None if line is None else Connection.parse(line.value)

    @property
    def attributes(self) -> tuple[tuple[str, str | None], ...]:
        """``a=`` lines in order as (name, value-or-None for a flag)."""
        return _attributes(self.lines)

    def attribute(self, name: str) -> str | None:
        """The first value of an attribute ('' for a flag; None when absent)."""
        for key, value in self.attributes:
            if key == name:
                return "" if value is None else value
        return None

    @property
    def direction(self) -> str:
        """sendrecv / sendonly / recvonly / inactive (RFC 3264 5.1; default sendrecv)."""
        for key, _ in self.attributes:
            if key in ("sendrecv", "sendonly", "recvonly", "inactive"):
                return key
        return "sendrecv"


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionDescription:
    """A parsed SDP body: the session-level lines and the media sections, in order."""

    session_lines: tuple[SDPLine, ...]
    media: tuple[Media, ...] = ()

    @classmethod
    def parse(cls, data: bytes) -> SessionDescription:
        """Parse an SDP body; raise :class:`SDPError` (only) when it is not one."""
        if len(data) > MAX_SDP:
            raise SDPError("SDP body too large")
        text = data.decode("utf-8", "surrogateescape")
        lines: list[SDPLine] = []
        pieces = text.split("\n")
        last = len(pieces) - 1
        for number, piece in enumerate(pieces, start=1):
            if number - 1 == last:
                if not piece:
                    break
                eol = ""
            elif piece.endswith("\r"):
                piece, eol = piece[:-1], "\r\n"
            else:
                eol = "\n"  # RFC 4566 5: parsers SHOULD also accept a bare newline
            if "\r" in piece or "\x00" in piece:
                raise SDPError(f"Control character in SDP line {number}")
            if not piece:
                lines.append(SDPLine(type="", value="", eol=eol))
                continue
            if not _LINE.match(piece):
                raise SDPError(f"SDP line {number} is not <type>=<value>")
            lines.append(SDPLine(type=piece[0], value=piece[2:], eol=eol))
        first = next((line for line in lines if line.type), None)
        # RFC 4566 5: "An SDP session description consists of ... v= (protocol version)"
        # first, and the version is 0.
        if first is None or first.type != "v" or first.value != "0":
            raise SDPError("SDP does not start with v=0")
        session: list[SDPLine] = []
        sections: list[list[SDPLine]] = []
        for line in lines:
            if line.type == "m":
                sections.append([line])
            elif sections:
                sections[-1].append(line)
            else:
                session.append(line)
        result = cls(
            session_lines=tuple(session),
            media=tuple(Media(lines=tuple(section)) for section in sections),
        )
        result._validate()
        return result

    def _validate(self) -> None:
        origins = [line for line in self.session_lines if line.type == "o"]
        if len(origins) > 1:
            raise SDPError("Several o= lines")
        for line in origins:
            Origin.parse(line.value)
        for line in self.session_lines:
            if line.type == "c":
                Connection.parse(line.value)
            elif line.type == "a" and line.value.startswith("rtcp:"):
                _Rtcp.parse(line.value)
        for media in self.media:
            fields = media.lines[0].value.split()
            # m=<media> <port>[/<number of ports>] <proto> <fmt> ...
            if len(fields) < 3 or not _TOKEN.match(fields[0]):
                raise SDPError("Malformed m= line")
            m = _PORT.match(fields[1])
            if m is None or int(m.group(1)) > 65535:
                raise SDPError("Bad port in m= line")
            for line in media.lines[1:]:
                if line.type == "c":
                    Connection.parse(line.value)
                elif line.type == "a" and line.value.startswith("rtcp:"):
                    _Rtcp.parse(line.value)

    # -- views ------------------------------------------------------------------------
    @property
    def origin(self) -> Origin | None:
        line = _first(self.session_lines, "o")
        return None if line is None else Origin.parse(line.value)

    @property
    def session_name(self) -> str | None:
        line = _first(self.session_lines, "s")
        return None if line is None else line.value

    @property
    def connection(self) -> Connection | None:
        """The session-level ``c=`` (media sections may override it)."""
        line = _first(self.session_lines, "c")
        return None if line is None else Connection.parse(line.value)

    @property
    def attributes(self) -> tuple[tuple[str, str | None], ...]:
        """Session-level ``a=`` lines as (name, value-or-None)."""
        return _attributes(self.session_lines)

    @property
    def lines(self) -> tuple[SDPLine, ...]:
        """Every line in order."""
        return self.session_lines + tuple(line for m in self.media for line in m.lines)

    def to_bytes(self) -> bytes:
        """Serialise (byte-identical to the input for an untouched description)."""
        return "".join(str(line) for line in self.lines).encode("utf-8", "surrogateescape")

    def map_lines(self, change: Callable[[SDPLine], SDPLine]) -> SessionDescription:
        """A copy where each line is replaced by ``change(line)`` (same type kept)."""
        return replace(
            self,
            session_lines=tuple(change(line) for line in self.session_lines),
            media=tuple(Media(lines=tuple(change(line) for line in m.lines)) for m in self.media),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Rtcp:
    """``a=rtcp:<port> [<nettype> <addrtype> <connection-address>]`` (RFC 3605)."""

    port: str
    connection: Connection | None

    @classmethod
    def parse(cls, value: str) -> _Rtcp:
        port, _, rest = value[len("rtcp:") :].partition(" ")
        if not port.isdigit():
            raise SDPError("Malformed a=rtcp line")
        return cls(port=port, connection=Connection.parse(rest) if rest else None)


def parse_sdp(data: bytes) -> SessionDescription:
    """Parse an SDP body (:meth:`SessionDescription.parse`)."""
    return SessionDescription.parse(data)


def rewrite_connection_addresses(sdp_bytes: bytes, new_ip: str, *, only_private: bool = True) -> bytes:
    """The NAT fix: replace the agent's own addresses in ``c=`` (session and media),
    ``o=`` and ``a=rtcp`` lines with ``new_ip``, the address its packets really came from.

    With ``only_private`` (the default) only IPv4 addresses in :data:`PRIVATE_NETWORKS`
    are replaced, so an agent that already advertises a public address is left alone.
    Otherwise every unicast address is replaced.  The unspecified address (``0.0.0.0``,
    the RFC 2543 way to put a stream on hold) and multicast groups are never touched.
    The address type follows ``new_ip`` (IP4/IP6).  Untouched lines stay byte for byte;
    a body needing no change is returned as given.

    Raises :class:`SDPError` for a body that is not SDP, and :class:`SIPValueError` when
    ``new_ip`` is not an IP address.
    """
    new_type, new_text = _address_type(new_ip)
    sdp = SessionDescription.parse(sdp_bytes)

    def fix(connection: Connection) -> Connection:
        if connection.nettype.upper() != "IN" or not _should_rewrite(connection, only_private):
            return connection
        return replace(connection, addrtype=new_type, address=new_text)

    def change(line: SDPLine) -> SDPLine:
        if line.type == "c":
            old = Connection.parse(line.value)
            fixed = fix(old)
            return line if fixed is old else replace(line, value=str(fixed))
        if line.type == "o" and id(line) in session_origin:
            # (Only the session's origin: RFC 4566 has no o= in a media description, and
            # one found there is passed on as it came, as the parser lets it through.)
            origin = Origin.parse(line.value)
            as_connection = Connection(
                nettype=origin.nettype, addrtype=origin.addrtype, address=origin.address
            )
            fixed = fix(as_connection)
            if fixed is as_connection:
                return line
            new_origin = replace(origin, addrtype=fixed.addrtype, address=fixed.address)
            return replace(line, value=str(new_origin))
        if line.type == "a" and line.value.startswith("rtcp:"):
            rtcp = _Rtcp.parse(line.value)
            if rtcp.connection is None:
                return line
            fixed = fix(rtcp.connection)
            if fixed is rtcp.connection:
                return line
            return replace(line, value=f"rtcp:{rtcp.port} {fixed}")
        return line

    session_origin = {id(line) for line in sdp.session_lines if line.type == "o"}
    rewritten = sdp.map_lines(change)
    if rewritten == sdp:
        return sdp_bytes
    return rewritten.to_bytes()


@functools.lru_cache(maxsize=256)
def _address_type(ip: str) -> tuple[str, str]:
    """("IP4" or "IP6", the address as SDP writes it) for an IP address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise SIPValueError(f"not an IP address: {ip!r}") from None
    return ("IP4" if address.version == 4 else "IP6"), str(address)


# Every address of PRIVATE_NETWORKS starts with one of these (a cheap first test).
_PRIVATE_PREFIXES = (b"10.", b"172.", b"192.168.", b"100.", b"169.254.")
_DOTTED_QUAD = re.compile(rb"(?<![0-9.])([0-9]{1,3}(?:\.[0-9]{1,3}){3})(?![0-9.])")


def mentions_private_ipv4(sdp_bytes: bytes) -> bool:
    """Whether any address of :data:`PRIVATE_NETWORKS` appears anywhere in the body: a
    cheap test that lets a caller skip :func:`rewrite_connection_addresses` (with
    ``only_private``) when it could change nothing."""
    if not any(prefix in sdp_bytes for prefix in _PRIVATE_PREFIXES):
        return False
    for match in _DOTTED_QUAD.finditer(sdp_bytes):
        if _rewritable(match.group(1).decode("ascii"), True):
            return True
    return False


def _should_rewrite(connection: Connection, only_private: bool) -> bool:
    return _rewritable(connection.address, only_private)


@functools.lru_cache(maxsize=1024)
def _rewritable(text: str, only_private: bool) -> bool:
    # Memoised: a server sees the same few media addresses over and over, and
    # ipaddress takes tens of microseconds per address.
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        # A host name: it cannot be judged private, so only an unconditional rewrite
        # replaces it.
        return not only_private
    if address.is_unspecified or address.is_multicast:
        return False
    if only_private:
        return isinstance(address, ipaddress.IPv4Address) and any(
            address in network for network in PRIVATE_NETWORKS
        )
    return True
