"""HTTP Digest authentication for SIP (RFC 3261 section 22, RFC 2617, RFC 7616, RFC 8760).

Pure: no I/O, no clocks (``now`` is passed in), no trio.

Server side, :class:`DigestChallenger` issues challenges and verifies credentials:

- challenges carry one ``WWW-Authenticate``/``Proxy-Authenticate`` value per algorithm,
  SHA-256 first and MD5 second (RFC 7616 section 3.7, RFC 8760 sections 2.3-2.4, in
  substance: a server offering several algorithms sends one challenge for each, most
  preferred first, and a client answers the topmost one it supports, so MD5-only clients
  such as SIPp 3.6 and sipsak still find theirs);
- nonces are stateless tokens: the issue time and a counter, authenticated by a MAC
  (keyed BLAKE2s, a quarter of the work of HMAC-SHA256 here) over them and the realm.
  Nothing is stored per challenge, so a flood of unanswered challenges costs no memory;
  an expired nonce earns a ``stale=true`` challenge;
- replays are refused by nonce count: per nonce the highest ``nc`` accepted so far is
  kept in a bounded table;
- an unknown user is verified against a dummy HA1 on the very same code path, so neither
  the answer nor the work done tells an attacker which accounts exist;
- every secret comparison is constant-time (:func:`hmac.compare_digest`).

Client side, :func:`authorization_for` answers a challenge (used by tests and by
registration towards providers).

Passwords are never kept: the server stores HA1 = H(username ":" realm ":" password) per
realm and per algorithm (:func:`compute_ha1`).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import itertools
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sip.errors import SIPParseError

__all__ = [
    "DigestAlgorithm",
    "DigestChallenge",
    "DigestChallenger",
    "DigestCredentials",
    "DigestVerdict",
    "authorization_for",
    "choose_challenge",
    "compute_ha1",
    "parse_challenge",
    "parse_credentials",
]


class DigestAlgorithm(enum.Enum):
    """The hash algorithms we offer and accept (``algorithm=`` token values)."""

    SHA256 = "SHA-256"
    MD5 = "MD5"

    @classmethod
    def from_token(cls, token: str | None) -> DigestAlgorithm | None:
        """The algorithm named by a challenge/credentials token; None if unsupported.

        RFC 2617 section 3.2.1: "If this is not present it is assumed to be MD5"."""
        if token is None:
            return cls.MD5
        return _ALGORITHM_TOKENS.get(token.upper())

    def hexdigest(self, text: str) -> str:
        """H(text) as lower-case hex (RFC 7616 section 3.4: the representation used)."""
        return _HASHERS[self](text.encode("utf-8")).hexdigest()


_ALGORITHM_TOKENS = {"MD5": DigestAlgorithm.MD5, "SHA-256": DigestAlgorithm.SHA256}
_HASHERS: dict[DigestAlgorithm, Callable[[bytes], hashlib._Hash]] = {
    DigestAlgorithm.MD5: hashlib.md5,
    DigestAlgorithm.SHA256: hashlib.sha256,
}
_HEX_LENGTH = {DigestAlgorithm.MD5: 32, DigestAlgorithm.SHA256: 64}


def compute_ha1(username: str, realm: str, password: str, algorithm: DigestAlgorithm) -> str:
    """HA1 = H(username ":" realm ":" password), what the store keeps instead of passwords."""
    return algorithm.hexdigest(f"{username}:{realm}:{password}")


# -- parsing auth-param lists ------------------------------------------------------------

# auth-param = token "=" ( token / quoted-string ), separated by commas (RFC 7235 2.1,
# RFC 3261 25.1 digest-response).  A lenient scanner: unknown parameters are skipped.
# The quoted-string is written as runs of plain characters between escapes, not as one
# alternation per character: the same language, matched in half the time (8 against
# 17 us for a typical Proxy-Authorization value, once per authenticated request).
_AUTH_PARAM = re.compile(
    r'[ \t]*([A-Za-z0-9!#$%&\'*+\-.^_`|~]+)[ \t]*=[ \t]*("[^"\\]*(?:\\.[^"\\]*)*"|[^\s,"]*)[ \t]*(?:,|\Z)',
    re.DOTALL,
)
_SCHEME = re.compile(r"[ \t]*([A-Za-z0-9!#$%&'*+\-.^_`|~]+)(?:[ \t]+|\Z)")
_MAX_AUTH_VALUE = 4096
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_auth_value(value: str) -> tuple[str, dict[str, str]] | None:
    """Split ``Digest k=v, k="v"`` into ("digest", {lower-cased name: value}).

    Returns None when the scheme is not Digest (other schemes' parameters, e.g. Basic's
    token68, are not ours to judge); raises SIPParseError when a Digest parameter list
    is not well formed.  (On the REGISTER hot path: one regex scan, each
    match must start where the previous one ended, so junk cannot hide between them.)"""
    if len(value) > _MAX_AUTH_VALUE:
        raise SIPParseError("Authorization header value is too long")
    m = _SCHEME.match(value)
    if m is None or m.group(1).lower() != "digest":
        return None
    params: dict[str, str] = {}
    pos = m.end()
    end = len(value.rstrip())
    for pm in _AUTH_PARAM.finditer(value, pos):
        if pm.start() != pos:
            break
        name = pm.group(1).lower()
        if name in params:
            # RFC 7616 3.4: each parameter MUST NOT appear more than once.
            raise SIPParseError(f"Duplicate {name} parameter in an authentication header")
        raw = pm.group(2)
        if raw[:1] == '"':
            raw = raw[1:-1]
            if "\\" in raw:
                raw = _QUOTED_PAIR.sub(r"\1", raw)
        params[name] = raw
        pos = pm.end()
        if pos >= end:
            break
    if pos < end:
        raise SIPParseError("Malformed parameters in an authentication header")
    return "digest", params


# -- credentials (Authorization / Proxy-Authorization) -----------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DigestCredentials:
    """The parameters of a ``Digest`` Authorization value (quotes removed)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str | None = None
    cnonce: str | None = None
    nc: str | None = None
    qop: str | None = None
    opaque: str | None = None


def parse_credentials(value: str) -> DigestCredentials | None:
    """Parse an Authorization/Proxy-Authorization value.

    Returns None for any scheme other than Digest: a server treats those as if no
    credentials had been sent and challenges (RFC 4475 regaut01: a REGISTER whose
    Authorization uses an unknown scheme is to be answered with a challenge).  Raises :class:`SIPParseError` for a
    Digest value that lacks a required parameter or is not well formed."""
    parsed = _parse_auth_value(value)
    if parsed is None or parsed[0] != "digest":
        return None
    params = parsed[1]
    try:
        return DigestCredentials(
            username=params["username"],
            realm=params["realm"],
            nonce=params["nonce"],
            uri=params["uri"],
            response=params["response"],
            algorithm=params.get("algorithm"),
            cnonce=params.get("cnonce"),
            nc=params.get("nc"),
            qop=params.get("qop"),
            opaque=params.get("opaque"),
        )
    except KeyError as exc:
        raise SIPParseError(f"Digest credentials without {exc.args[0]}") from exc


# -- challenges (WWW-Authenticate / Proxy-Authenticate), client side ---------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DigestChallenge:
    """The parameters of one ``Digest`` challenge value."""

    realm: str
    nonce: str
    algorithm: str | None = None
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False


def parse_challenge(value: str) -> DigestChallenge | None:
    """Parse one WWW-Authenticate/Proxy-Authenticate value; None if not Digest."""
    parsed = _parse_auth_value(value)
    if parsed is None or parsed[0] != "digest":
        return None
    params = parsed[1]
    if "realm" not in params or "nonce" not in params:
        raise SIPParseError("Digest challenge without realm or nonce")
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    return DigestChallenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=params.get("algorithm"),
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
    )


def choose_challenge(
    values: Iterable[str],
    supported: tuple[DigestAlgorithm, ...] = (DigestAlgorithm.SHA256, DigestAlgorithm.MD5),
) -> str | None:
    """The first challenge value whose algorithm we support (RFC 8760: the client uses
    the topmost challenge it supports), or None."""
    for value in values:
        try:
            challenge = parse_challenge(value)
        except SIPParseError:
            continue
        if challenge is None:
            continue
        algorithm = DigestAlgorithm.from_token(challenge.algorithm)
        if algorithm is not None and algorithm in supported:
            return value
    return None


def authorization_for(
    challenge_value: str,
    method: str,
    uri: str,
    username: str,
    password: str,
    nc: int = 1,
    cnonce: str | None = None,
) -> str:
    """The Authorization value answering ``challenge_value`` (client side).

    Uses qop=auth when the challenge offers it (with ``nc`` and ``cnonce``), else the
    RFC 2069 form.  Raises :class:`SIPParseError` for a challenge we cannot answer."""
    challenge = parse_challenge(challenge_value)
    if challenge is None:
        raise SIPParseError("Not a Digest challenge")
    algorithm = DigestAlgorithm.from_token(challenge.algorithm)
    if algorithm is None:
        raise SIPParseError(f"Unsupported digest algorithm {challenge.algorithm}")
    ha1 = compute_ha1(username, challenge.realm, password, algorithm)
    ha2 = algorithm.hexdigest(f"{method}:{uri}")
    parts = [
        f"Digest username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
    ]
    if "auth" in challenge.qop:
        nc_text = f"{nc:08x}"
        cnonce = cnonce if cnonce is not None else secrets.token_hex(8)
        response = algorithm.hexdigest(f"{ha1}:{challenge.nonce}:{nc_text}:{cnonce}:auth:{ha2}")
        parts += [f"response={_quote(response)}", f"algorithm={algorithm.value}",
                  f"cnonce={_quote(cnonce)}", "qop=auth", f"nc={nc_text}"]
    else:
        response = algorithm.hexdigest(f"{ha1}:{challenge.nonce}:{ha2}")
        parts += [f"response={_quote(response)}", f"algorithm={algorithm.value}"]
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    return ", ".join(parts)


# -- server side -------------------------------------------------------------------------


class DigestVerdict(enum.Enum):
    """What :meth:`DigestChallenger.verify` concluded."""

    ACCEPTED = "accepted"
    #: the response does not match (wrong password, or no such user: indistinguishable)
    FAILED = "failed"
    #: the response matched but the nonce is expired or was already used with this nc:
    #: send a fresh challenge with stale=true (the client knows the password)
    STALE = "stale"
    #: the credentials do not answer one of our challenges (foreign or forged nonce,
    #: other realm, an algorithm or qop we did not offer): challenge again
    CHALLENGE = "challenge"
    #: the Digest value is unusable (bad nc, qop without cnonce...): 400
    MALFORMED = "malformed"


#: ``lookup(username, algorithm)`` -> the stored HA1, or None for "no such user".
HA1Lookup = Callable[[str, DigestAlgorithm], "str | None"]

_NONCE_PAYLOAD = struct.Struct(">QI")  # issue time in ms, counter
_blake2s = hashlib.blake2s
_NONCE_MAC_BYTES = 12
_NONCE_RAW_BYTES = _NONCE_PAYLOAD.size + _NONCE_MAC_BYTES
_NC = re.compile(r"[0-9A-Fa-f]{8}\Z")


def _nonce_key(secret: bytes, issuer: int | None) -> bytes:
    label = b"dialspell nonce mac" if issuer is None else b"dialspell nonce mac %d" % issuer
    return hmac.digest(secret, label, "sha256")


class DigestChallenger:
    """Issues digest challenges and verifies credentials for any number of realms.

    ``secret`` keys the nonce MAC: nonces issued by a challenger with the same secret
    (for instance after a restart, when the secret is kept in the data directory) are
    accepted.  ``max_nonces`` bounds the replay table (see :meth:`verify`).

    Several processes that share a secret but not a replay table (a server of several
    processes) each pass their ``issuer`` index and the number of ``issuers``: each
    then signs its nonces with a key of its own and accepts only those.  A right
    answer to a sibling's nonce gets a fresh challenge marked stale (the client retries
    without asking anyone), so a credential replayed to another process fails there
    too.
    """

    __slots__ = ("_nonce_key", "_sibling_keys", "_lifetime_ms", "_counter", "_opaque", "_seen",
                 "_max_nonces", "_watermark_ms", "_algorithms", "_md5_first_order", "_dummy_key")

    def __init__(
        self,
        secret: bytes,
        nonce_lifetime: float = 300.0,
        *,
        max_nonces: int = 100_000,
        algorithms: tuple[DigestAlgorithm, ...] = (DigestAlgorithm.SHA256, DigestAlgorithm.MD5),
        issuer: int | None = None,
        issuers: int = 1,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the digest secret must be at least 16 bytes")
        # Keys of 32 bytes, derived from the secret, for keyed BLAKE2s (its longest key).
        self._nonce_key = _nonce_key(secret, issuer)
        self._sibling_keys = tuple(_nonce_key(secret, other) for other in range(issuers)
                                   if issuer is not None and other != issuer)
        self._lifetime_ms = int(nonce_lifetime * 1000)
        self._counter = itertools.count(secrets.randbelow(2**31))
        self._opaque = hmac.digest(secret, b"dialspell opaque", "sha256")[:8].hex()
        self._dummy_key = hmac.digest(secret, b"dialspell dummy ha1", "sha256")
        # nonce -> (highest nc accepted, issue time in ms), oldest first use first.
        self._seen: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._max_nonces = max_nonces
        # Issue time of the newest nonce evicted from _seen: a nonce issued at or before
        # it that is missing from the table may have been used already.
        self._watermark_ms = -1
        self._algorithms = algorithms
        self._md5_first_order = tuple(sorted(algorithms, key=lambda a: a is not DigestAlgorithm.MD5))

    # -- challenges ----------------------------------------------------------------------
    def new_nonce(self, realm: str, now: float) -> str:
        """A fresh nonce for ``realm``, valid for the nonce lifetime from ``now``."""
        payload = _NONCE_PAYLOAD.pack(int(now * 1000), next(self._counter) & 0xFFFFFFFF)
        mac = _blake2s(payload + realm.encode("utf-8"), key=self._nonce_key, digest_size=_NONCE_MAC_BYTES).digest()
        return base64.urlsafe_b64encode(payload + mac).decode("ascii")

    def challenge(self, realm: str, now: float, *, stale: bool = False,
                  md5_first: bool = False) -> tuple[str, ...]:
        """The challenge values for a 401/407, one per algorithm, most preferred first.

        All share one nonce; ``stale`` marks a challenge answering a request whose only
        fault was an old nonce (the client may retry without asking the user again).
        ``md5_first`` moves MD5 to the top for clients that read only the first
        challenge (see :mod:`engine.auth`); it changes no security property, since MD5
        is accepted either way."""
        nonce = self.new_nonce(realm, now)
        tail = ', qop="auth"' + (", stale=true" if stale else "")
        head = f"Digest realm={_quote(realm)}, nonce=\"{nonce}\", opaque=\"{self._opaque}\""
        order = self._md5_first_order if md5_first else self._algorithms
        return tuple(f"{head}, algorithm={a.value}{tail}" for a in order)

    def _nonce_issued_ms(self, nonce: str, realm: str, key: bytes | None = None) -> int | None:
        """The issue time of a nonce we (or the holder of ``key``) made for this realm,
        or None."""
        if len(nonce) != 32:
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _NONCE_RAW_BYTES:
            return None
        payload = raw[: _NONCE_PAYLOAD.size]
        mac = _blake2s(payload + realm.encode("utf-8"), key=key or self._nonce_key,
                       digest_size=_NONCE_MAC_BYTES).digest()
        if not hmac.compare_digest(mac, raw[_NONCE_PAYLOAD.size :]):
            return None
        issued_ms: int = _NONCE_PAYLOAD.unpack(payload)[0]
        return issued_ms

    def dummy_ha1(self, username: str, realm: str, algorithm: DigestAlgorithm) -> str:
        """A per-user HA1 that matches no password: what unknown users are checked against,
        so that they cost the same work and earn the same answer as known ones."""
        digest = _blake2s(f"{username}:{realm}".encode(), key=self._dummy_key).digest()
        return digest.hex()[: _HEX_LENGTH[algorithm]]

    # -- verification --------------------------------------------------------------------
    def verify(
        self,
        credentials: DigestCredentials,
        *,
        method: str,
        realm: str,
        lookup: HA1Lookup,
        now: float,
    ) -> DigestVerdict:
        """Check ``credentials`` sent with a ``method`` request for ``realm``.

        ``lookup`` returns the stored HA1 for (username, algorithm) or None; either way
        the same computation runs.  A response that matches is recorded against its
        nonce so that the same (nonce, nc) is never accepted twice."""
        algorithm = DigestAlgorithm.from_token(credentials.algorithm)
        if algorithm is None or algorithm not in self._algorithms:
            return DigestVerdict.CHALLENGE
        # RFC 3261 22.4: the realm tells the server which credentials were meant; ours
        # differ, so these answer someone else's challenge.
        if credentials.realm != realm:
            return DigestVerdict.CHALLENGE
        if credentials.opaque is not None and not hmac.compare_digest(
            credentials.opaque.encode(), self._opaque.encode()
        ):
            return DigestVerdict.CHALLENGE
        issued_ms = self._nonce_issued_ms(credentials.nonce, realm)
        sibling = False
        if issued_ms is None:
            for key in self._sibling_keys:
                issued_ms = self._nonce_issued_ms(credentials.nonce, realm, key)
                if issued_ms is not None:
                    sibling = True
                    break
            else:
                # Not a nonce of ours: nothing to verify the response against, and no
                # oracle for password guessing.  A fresh challenge.
                return DigestVerdict.CHALLENGE
        qop = credentials.qop
        nc_value = 0
        if qop is not None:
            if qop.lower() != "auth":
                return DigestVerdict.CHALLENGE
            # RFC 2617 3.2.2: with qop the client MUST send cnonce and nc.
            if not credentials.cnonce or credentials.nc is None or not _NC.match(credentials.nc):
                return DigestVerdict.MALFORMED
            nc_value = int(credentials.nc, 16)
            if nc_value == 0:
                return DigestVerdict.MALFORMED
        stored = lookup(credentials.username, algorithm)
        # The dummy is computed for everyone so known and unknown users cost the same.
        dummy = self.dummy_ha1(credentials.username, realm, algorithm)
        ha1 = dummy if stored is None else stored
        ha2 = algorithm.hexdigest(f"{method}:{credentials.uri}")
        if qop is not None:
            expected = algorithm.hexdigest(
                f"{ha1}:{credentials.nonce}:{credentials.nc}:{credentials.cnonce}:{qop}:{ha2}"
            )
        else:
            # RFC 2069 compatibility (RFC 2617 3.2.2.1): response = H(HA1:nonce:HA2).
            expected = algorithm.hexdigest(f"{ha1}:{credentials.nonce}:{ha2}")
        matched = hmac.compare_digest(expected.encode(), credentials.response.lower().encode())
        if not matched or stored is None:
            return DigestVerdict.FAILED
        now_ms = int(now * 1000)
        if sibling:
            return DigestVerdict.STALE  # its replay table is elsewhere: ours from now on
        if now_ms - issued_ms > self._lifetime_ms or issued_ms - now_ms > 60_000:
            # RFC 2617 3.2.1: stale is "a flag, indicating that the previous request from
            # the client was rejected because the nonce value was stale" - the response
            # itself was right, so the client may retry without asking for a password.
            return DigestVerdict.STALE
        return self._check_count(credentials.nonce, nc_value, issued_ms, now_ms)

    def _check_count(self, nonce: str, nc_value: int, issued_ms: int, now_ms: int) -> DigestVerdict:
        """Replay protection.  RFC 2617 3.2.2: nc lets the server "detect request replays
        by maintaining its own copy of this count - if the same nc-value is seen twice,
        then the request is a replay".  We require it to grow.  Without qop there is no
        count: such a nonce is good for one request."""
        seen = self._seen
        entry = seen.get(nonce)
        if entry is not None:
            if nc_value <= entry[0]:
                return DigestVerdict.STALE
            seen[nonce] = (nc_value, issued_ms)
            seen.move_to_end(nonce)
            return DigestVerdict.ACCEPTED
        if issued_ms <= self._watermark_ms:
            # Its record may have been evicted: we cannot prove it is not a replay.
            return DigestVerdict.STALE
        seen[nonce] = (nc_value, issued_ms)
        # Forget nonces that have expired anyway (oldest use first), then enforce the bound.
        oldest_valid = now_ms - self._lifetime_ms
        while seen:
            first_nonce, (_, first_issued) = next(iter(seen.items()))
            if first_issued >= oldest_valid and len(seen) <= self._max_nonces:
                break
            seen.popitem(last=False)
            if first_issued >= oldest_valid:
                self._watermark_ms = max(self._watermark_ms, first_issued)
        return DigestVerdict.ACCEPTED

    def statistics(self) -> dict[str, int]:
        """Sizes for monitoring: nonces tracked in the replay table."""
        return {"tracked_nonces": len(self._seen)}
