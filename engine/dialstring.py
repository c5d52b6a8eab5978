"""Dial strings: the text a dialplan hands to ``sys.Dial``, parsed into frozen values.

The grammar (docs/dialplan-api.md, "Dial strings"; the user guide is docs/dialstrings.md)::

    dialstring  := group ( '|' group )*
    group       := leg ( '&' leg )*
    leg         := destination [ '[' option ( ',' option )* ']' ]
    destination := user@host | sip:/sips: URI | provider
    option      := dt=N | cd=N | fd=text | fu=user | fh=host

Decisions this module makes (and the user guide repeats):

* ``|`` and ``&`` always separate groups and legs, even inside a ``sip:`` URI.  SIP URIs
  almost never carry them unescaped; a user who needs one writes ``%7C`` / ``%26``.
* Substitutions (``${dst}``, ``${dst:N}``, ``${exten}``, ``${fromname}``,
  ``${fromuriuser}``, ``${fromaor}``) are applied inside each destination and option value
  *after* the string has been split into groups, legs and options.  The substituted values
  come from the caller's request (the From display name is the caller's to choose), so
  this order guarantees that a caller can never add a leg, a group or an option by putting
  ``&``, ``|``, ``[`` or ``,`` into their From header.
* A provider name only applies to the ``user@host`` and bare forms; an explicit ``sip:``
  URI means that exact URI.  A served domain (or ``local``) applies to both forms, so a
  URI to one of our own domains is handled locally instead of looping out to the network.

The only exception :func:`parse_dial_string` raises is :class:`DialStringError` (a
``ValueError``) with a message meant for the dialplan's author; a property test holds it
to that for arbitrary text.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from sip.errors import SIPParseError
from sip.uri import URI, parse_hostport

MAX_DIAL_STRING = 2048
"""Longest dial string accepted (characters, before substitution)."""
MAX_LEGS = 20
"""Most legs one dial string may hold (the same number caps a whole execution)."""
MAX_DELAY = 120
"""Largest ``dt=`` value in seconds."""
MAX_DURATION = 86400
"""Largest ``cd=`` value in seconds (one day)."""
MAX_FIELD = 256
"""Longest destination part or option value after substitution."""

LOCAL_ALIAS = "local"
"""The host that always means "an account on this server"."""

SUBSTITUTION_NAMES = frozenset({"dst", "exten", "fromname", "fromuriuser", "fromaor"})
"""Names that may appear as ``${name}``; ``exten`` is another name for ``dst``."""

# Every "${" starts a substitution; its inside must be "name" or "name:N" (checked below).
_SUBSTITUTION = re.compile(r"\$\{([^}]*)(\}?)")
_SUBSTITUTION_BODY = re.compile(r"([A-Za-z]+)(?::([0-9]{1,4}))?\Z")
# RFC 3261 25.1: user = 1*( unreserved / escaped / user-unreserved ).  The characters of
# the grammar, with '%' checked for a full escape separately.
_USER = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+\Z")
_ESCAPE_OK = re.compile(r"%(?![0-9A-Fa-f]{2})")
_IPV6_BODY = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
OPTION_NAMES = ("dt", "cd", "fd", "fu", "fh")
"""The leg options, as written before "="."""


class DialStringError(ValueError):
    """A dial string the dialplan author must fix; the message says what and where."""


class LegKind(enum.Enum):
    """Where a leg goes (see :func:`classify`)."""

    PROVIDER = "provider"
    """Through one of the owner's SIP providers (its server, credentials, From...)."""
    LOCAL = "local"
    """To an account served here (its In dialplan or its current bindings)."""
    URI = "uri"
    """A plain SIP URI, located with RFC 3263 and called directly."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LegOptions:
    """The bracketed options of one leg; ``None`` means "not given"."""

    delay: int = 0
    """``dt=N``: start this leg N seconds after the group starts (0-120)."""
    duration_limit: int | None = None
    """``cd=N``: hang up N seconds after the leg answers."""
    from_display: str | None = None
    """``fd=``: From display name for this leg."""
    from_user: str | None = None
    """``fu=``: From user for this leg."""
    from_host: str | None = None
    """``fh=``: From host for this leg."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Leg:
    """One destination of a dial string, substitutions applied.

    ``destination`` is the leg's text as the user wrote it after substitution (for log
    lines).  For the ``user@host`` and bare forms ``user``/``host``/``port`` are filled and
    ``uri`` is None; for a ``sip:``/``sips:`` destination ``uri`` is the URI text and
    ``user``/``host``/``port`` are its parts (the host lower-cased in ``uri``).
    """

    destination: str
    user: str | None
    host: str
    port: int | None = None
    uri: str | None = None
    options: LegOptions = LegOptions()

    @property
    def key(self) -> str:
        """The leg's identity for duplicate detection: its URI with the host lower-cased."""
        if self.uri is not None:
            return self.uri
        host = self.host.lower() if self.port is None else f"{self.host.lower()}:{self.port}"
        return f"sip:{self.user}@{host}" if self.user else f"sip:{host}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DialString:
    """A parsed dial string: groups tried in order, the legs of a group rung in parallel."""

    groups: tuple[tuple[Leg, ...], ...]

    @property
    def legs(self) -> tuple[Leg, ...]:
        """Every leg, in order."""
        return tuple(leg for group in self.groups for leg in group)


def parse_dial_string(text: str, *, substitutions: Mapping[str, str]) -> DialString:
    """Parse ``text`` (the argument of ``sys.Dial``) or raise :class:`DialStringError`.

    ``substitutions`` maps ``dst``, ``fromname``, ``fromuriuser`` and ``fromaor`` to the
    request's values; a name missing from the mapping substitutes as the empty string.
    """
    if not isinstance(text, str):
        raise DialStringError("the dial string must be a str")
    if len(text) > MAX_DIAL_STRING:
        raise DialStringError(
            f"the dial string is {len(text)} characters long; at most {MAX_DIAL_STRING} allowed"
        )
    if _CONTROL.search(text):
        raise DialStringError("the dial string contains a control character (CR, LF, tab...)")
    if not text.strip():
        raise DialStringError("the dial string is empty")
    groups: list[tuple[Leg, ...]] = []
    count = 0
    for group_number, group_text in enumerate(text.split("|"), start=1):
        if not group_text.strip():
            raise DialStringError(f"group {group_number} of the dial string is empty ('||'?)")
        legs: list[Leg] = []
        for leg_text in group_text.split("&"):
            count += 1
            if count > MAX_LEGS:
                raise DialStringError(f"the dial string has more than {MAX_LEGS} legs")
            if not leg_text.strip():
                raise DialStringError(f"leg {count} of the dial string is empty ('&&'?)")
            legs.append(_parse_leg(leg_text.strip(), substitutions))
        groups.append(tuple(legs))
    return DialString(groups=tuple(groups))


def substitute(text: str, substitutions: Mapping[str, str]) -> str:
    """Replace every ``${name}`` / ``${dst:N}`` in ``text``; unknown names are errors."""

    def one(match: re.Match[str]) -> str:
        body = _SUBSTITUTION_BODY.match(match.group(1))
        if not match.group(2) or body is None:
            raise DialStringError(
                f"malformed substitution '{match.group(0)[:20]}' (expected '${{name}}' or "
                "'${dst:N}')"
            )
        name = body.group(1).lower()
        if name not in SUBSTITUTION_NAMES:
            raise DialStringError(f"unknown substitution '${{{body.group(1)}}}'")
        value = substitutions.get("dst" if name == "exten" else name, "")
        if body.group(2) is not None:
            if name not in ("dst", "exten"):
                raise DialStringError(f"'${{{name}:N}}' is only allowed for dst and exten")
            value = value[int(body.group(2)) :]
        return value

    # Each match is replaced once, left to right; a value that itself contains "${...}"
    # is not expanded again (re.sub never rescans its replacement).
    return _SUBSTITUTION.sub(one, text)


def _parse_leg(text: str, substitutions: Mapping[str, str]) -> Leg:
    destination_text, options = _split_options(text)
    options_value = _parse_options(options, substitutions, text)
    destination = substitute(destination_text.strip(), substitutions)
    if not destination:
        raise DialStringError(f"leg '{text}' has an empty destination")
    if len(destination) > MAX_FIELD:
        raise DialStringError(f"destination '{destination[:40]}...' is too long")
    if destination[:4].lower() == "sip:" or destination[:5].lower() == "sips:":
        try:
            uri = URI.parse(destination)
        except SIPParseError as exc:
            raise DialStringError(
                f"destination '{destination}' is not a valid SIP URI: {exc}"
            ) from exc
        return Leg(
            destination=destination,
            user=uri.user,
            host=uri.host,
            port=uri.port,
            # RFC 3261 19.1.4: hosts compare case-insensitively; keep one spelling.
            uri=str(uri.replace(host=uri.host.lower())),
            options=options_value,
        )
    if "@" in destination:
        user, _, hostport = destination.rpartition("@")
        if not user:
            raise DialStringError(f"destination '{destination}' has an empty user part")
    else:
        # A bare provider name means ${dst}@provider.
        user, hostport = substitutions.get("dst", ""), destination
        if not user:
            raise DialStringError(
                f"destination '{destination}' has no user part and the request has no "
                "user to dial (${dst} is empty)"
            )
    _check_user(user, destination)
    host, port = _parse_hostport(hostport, destination)
    return Leg(destination=destination, user=user, host=host, port=port, options=options_value)


def _split_options(text: str) -> tuple[str, str | None]:
    """Separate ``destination[options]``; an IPv6 reference ``[::1]`` is not options."""
    if not text.endswith("]"):
        if "[" in text and "]" not in text[text.rindex("[") :]:
            raise DialStringError(f"leg '{text}' has a '[' without its closing ']'")
        return text, None
    start = text.rfind("[")
    if start == -1:
        raise DialStringError(f"leg '{text}' has a ']' without its opening '['")
    inside = text[start + 1 : -1]
    if _IPV6_BODY.match(inside):
        return text, None
    return text[:start], inside


def _parse_options(text: str | None, substitutions: Mapping[str, str], leg: str) -> LegOptions:
    if text is None:
        return LegOptions()
    if not text.strip():
        raise DialStringError(f"leg '{leg}' has an empty option list '[]'")
    values: dict[str, str] = {}
    for item in text.split(","):
        name, eq, raw = item.partition("=")
        name = name.strip().lower()
        if not eq or name not in OPTION_NAMES:
            raise DialStringError(
                f"unknown dial string option '{item.strip()}' in leg '{leg}' "
                "(expected dt=, cd=, fd=, fu= or fh=)"
            )
        if name in values:
            raise DialStringError(f"dial string option '{name}' is given twice in leg '{leg}'")
        value = substitute(raw.strip(), substitutions)
        if len(value) > MAX_FIELD or _CONTROL.search(value):
            raise DialStringError(
                f"dial string option '{name}' is too long or contains control characters"
            )
        values[name] = value
    return LegOptions(
        delay=_number(values, "dt", 0, MAX_DELAY) or 0,
        duration_limit=_number(values, "cd", 1, MAX_DURATION),
        from_display=values.get("fd"),
        from_user=_from_user(values.get("fu")),
        from_host=_from_host(values.get("fh")),
    )


def _number(values: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    if name not in values:
        return None
    text = values[name]
    if not text.isascii() or not text.isdigit():
        raise DialStringError(f"dial string option '{name}={text}' is not a number")
    number = int(text)
    if not low <= number <= high:
        raise DialStringError(
            f"dial string option '{name}={text}' is out of range ({low} to {high} seconds)"
        )
    return number


def _from_user(value: str | None) -> str | None:
    if value is not None:
        _check_user(value, f"fu={value}")
    return value


def _from_host(value: str | None) -> str | None:
    if value is not None:
        _parse_hostport(value, f"fh={value}")
    return value


def _check_user(user: str, where: str) -> None:
    if len(user) > MAX_FIELD or not _USER.match(user) or _ESCAPE_OK.search(user):
        raise DialStringError(
            f"user part '{user[:40]}' in '{where[:80]}' contains characters not allowed in a "
            "SIP URI (escape them as %XX)"
        )


def _parse_hostport(text: str, where: str) -> tuple[str, int | None]:
    try:
        return parse_hostport(text)
    except SIPParseError as exc:
        raise DialStringError(
            f"'{text[:40]}' in '{where[:80]}' is not a valid host[:port] ({exc})"
        ) from exc


def classify(
    leg: Leg,
    *,
    provider_names: Collection[str],
    is_local_domain: Callable[[str], bool],
) -> LegKind:
    """Where ``leg`` goes.

    A host equal (case-insensitively) to one of ``provider_names`` is a provider call,
    but only for the ``user@host``/bare forms without a port: an explicit ``sip:`` URI or
    a ``host:port`` names a network address.  The host ``local`` or a served domain
    (``is_local_domain(host)``, given the lower-cased host) is a local account in every
    form.  Anything else is a plain URI call.
    """
    host = leg.host.lower()
    if host == LOCAL_ALIAS or is_local_domain(host):
        return LegKind.LOCAL
    if leg.uri is None and leg.port is None:
        if any(host == name.lower() for name in provider_names):
            return LegKind.PROVIDER
    return LegKind.URI


def drop_duplicates(legs: Iterable[Leg], seen: set[str]) -> list[Leg]:
    """The legs whose :attr:`Leg.key` is not yet in ``seen``, adding their keys to it.

    ``seen`` belongs to one execution: a leg whose URI an earlier ``Dial`` (or an earlier
    leg of the same string) already tried is dropped, which is what stops two legs ringing
    the same phone twice and a dialplan re-dialling one URI in a loop.
    """
    kept: list[Leg] = []
    for leg in legs:
        key = leg.key
        if key not in seen:
            seen.add(key)
            kept.append(leg)
    return kept
