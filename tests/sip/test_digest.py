from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.digest import (
    DigestAlgorithm,
    DigestChallenger,
    DigestCredentials,
    DigestVerdict,
    HA1Lookup,
    authorization_for,
    choose_challenge,
    compute_ha1,
    parse_challenge,
    parse_credentials,
)
from sip.errors import SIPParseError

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "example.com"
NOW = 1_800_000_000.0
URI = "sip:example.com"


def store_for(users: dict[str, str]) -> HA1Lookup:
    def lookup(username: str, algorithm: DigestAlgorithm) -> str | None:
        password = users.get(username)
        return None if password is None else compute_ha1(username, REALM, password, algorithm)

    return lookup


LOOKUP = store_for({"alice": "secret"})


def answer(challenger: DigestChallenger, *, algorithm: str = "MD5", user: str = "alice",
           password: str = "secret", nc: int = 1, now: float = NOW, stale: bool = False) -> str:
    values = challenger.challenge(REALM, now, stale=stale)
    value = next(v for v in values if f"algorithm={algorithm}," in v)
    return authorization_for(value, "REGISTER", URI, user, password, nc=nc, cnonce="c0ffee")


def verify(challenger: DigestChallenger, authorization: str, *, now: float = NOW,
           lookup: HA1Lookup = LOOKUP) -> DigestVerdict:
    credentials = parse_credentials(authorization)
    assert credentials is not None
    return challenger.verify(credentials, method="REGISTER", realm=REALM, lookup=lookup, now=now)


def test_client_response_matches_rfc_2617_example() -> None:
    # RFC 2617 section 3.5: Mufasa / "Circle Of Life" -> 6629fae49393a05397450978507c4ef1
    challenge = ('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                 'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    value = authorization_for(challenge, "GET", "/dir/index.html", "Mufasa", "Circle Of Life",
                              nc=1, cnonce="0a4f113b")
    credentials = parse_credentials(value)
    assert credentials is not None
    assert credentials.response == "6629fae49393a05397450978507c4ef1"
    assert credentials.nc == "00000001" and credentials.qop == "auth"
    assert credentials.opaque == "5ccc069c403ebaf9f0171e9517f40e41"


def test_client_response_matches_rfc_7616_sha256_example() -> None:
    # RFC 7616 section 3.9.1.
    challenge = ('Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
                 'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
                 'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')
    value = authorization_for(challenge, "GET", "/dir/index.html", "Mufasa", "Circle of Life",
                              nc=1, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
    credentials = parse_credentials(value)
    assert credentials is not None
    assert credentials.response == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


def test_challenge_offers_sha256_first_then_md5_with_qop_and_opaque() -> None:
    values = DigestChallenger(SECRET).challenge(REALM, NOW)
    assert len(values) == 2
    first, second = (parse_challenge(v) for v in values)
    assert first is not None and second is not None
    assert (first.algorithm, second.algorithm) == ("SHA-256", "MD5")
    assert first.qop == ("auth",) and first.opaque and first.realm == REALM
    assert first.nonce == second.nonce and not first.stale
    # An MD5-only client (SIPp 3.6, sipsak) finds its challenge.
    assert choose_challenge(values, supported=(DigestAlgorithm.MD5,)) == values[1]


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_right_password_is_accepted(algorithm: str) -> None:
    challenger = DigestChallenger(SECRET)
    assert verify(challenger, answer(challenger, algorithm=algorithm)) is DigestVerdict.ACCEPTED


def test_wrong_password_and_unknown_user_fail_alike() -> None:
    challenger = DigestChallenger(SECRET)
    assert verify(challenger, answer(challenger, password="guess")) is DigestVerdict.FAILED
    assert verify(challenger, answer(challenger, user="mallory")) is DigestVerdict.FAILED
    # Even a "right" password for a user the store does not know fails.
    assert verify(challenger, answer(challenger, user="nobody", password="secret")) is DigestVerdict.FAILED


def test_repeated_nonce_count_is_a_replay_and_a_higher_one_is_fine() -> None:
    challenger = DigestChallenger(SECRET)
    value = challenger.challenge(REALM, NOW)[1]
    first = authorization_for(value, "REGISTER", URI, "alice", "secret", nc=1, cnonce="a")
    again = authorization_for(value, "REGISTER", URI, "alice", "secret", nc=1, cnonce="a")
    lower = authorization_for(value, "REGISTER", URI, "alice", "secret", nc=1, cnonce="b")
    higher = authorization_for(value, "REGISTER", URI, "alice", "secret", nc=2, cnonce="a")
    assert verify(challenger, first) is DigestVerdict.ACCEPTED
    assert verify(challenger, again) is DigestVerdict.STALE
    assert verify(challenger, lower) is DigestVerdict.STALE
    assert verify(challenger, higher) is DigestVerdict.ACCEPTED


def test_expired_nonce_is_stale_only_with_the_right_password() -> None:
    challenger = DigestChallenger(SECRET, nonce_lifetime=300.0)
    right = answer(challenger)
    wrong = answer(challenger, password="guess")
    assert verify(challenger, right, now=NOW + 301) is DigestVerdict.STALE
    assert verify(challenger, wrong, now=NOW + 301) is DigestVerdict.FAILED
    assert "stale=true" in challenger.challenge(REALM, NOW, stale=True)[0]


def test_sibling_processes_accept_only_their_own_nonces() -> None:
    # Two processes of one server: one secret, one replay table each.
    first, second = (DigestChallenger(SECRET, issuer=i, issuers=2) for i in (0, 1))
    right = answer(first)
    # A right answer to the other's nonce gets a fresh challenge, marked stale, there:
    # a credential replayed to the process that did not see it fails too.
    assert verify(second, right) is DigestVerdict.STALE
    assert verify(first, right) is DigestVerdict.ACCEPTED
    assert verify(first, right) is DigestVerdict.STALE  # and a replay where it was seen
    assert verify(second, answer(first, password="guess")) is DigestVerdict.FAILED
    # A server of one process keeps its nonces (and those a restart left valid).
    single = DigestChallenger(SECRET)
    assert verify(single, answer(DigestChallenger(SECRET))) is DigestVerdict.ACCEPTED
    assert verify(single, answer(first)) is DigestVerdict.CHALLENGE


def test_nonces_from_another_secret_or_realm_are_rechallenged() -> None:
    ours = DigestChallenger(SECRET)
    theirs = DigestChallenger(b"another secret, another server!")
    assert verify(ours, answer(theirs)) is DigestVerdict.CHALLENGE
    forged = answer(ours).replace('realm="example.com"', 'realm="other.org"')
    assert verify(ours, forged) is DigestVerdict.CHALLENGE


def test_same_secret_accepts_nonces_across_restarts() -> None:
    before = DigestChallenger(SECRET)
    after = DigestChallenger(SECRET)
    assert verify(after, answer(before), now=NOW + 10) is DigestVerdict.ACCEPTED


def test_rfc_2069_credentials_without_qop_work_once_per_nonce() -> None:
    challenger = DigestChallenger(SECRET)
    nonce = challenger.new_nonce(REALM, NOW)
    value = authorization_for(f'Digest realm="{REALM}", nonce="{nonce}"', "REGISTER", URI,
                              "alice", "secret")
    assert "qop" not in value and "nc=" not in value
    assert verify(challenger, value) is DigestVerdict.ACCEPTED
    assert verify(challenger, value) is DigestVerdict.STALE


def test_replay_table_is_bounded_and_evicted_nonces_are_not_replayable() -> None:
    challenger = DigestChallenger(SECRET, max_nonces=3)
    early = answer(challenger, now=NOW)
    assert verify(challenger, early) is DigestVerdict.ACCEPTED
    for i in range(1, 6):
        assert verify(challenger, answer(challenger, now=NOW + i)) is DigestVerdict.ACCEPTED
    assert challenger.statistics()["tracked_nonces"] <= 3
    # The early nonce's record was evicted: replaying it must not be accepted.
    assert verify(challenger, early, now=NOW + 6) is DigestVerdict.STALE


def test_qop_without_nc_or_cnonce_is_malformed() -> None:
    challenger = DigestChallenger(SECRET)
    value = answer(challenger)
    no_nc = value.replace(", nc=00000001", "")
    assert verify(challenger, no_nc) is DigestVerdict.MALFORMED


def test_unknown_scheme_counts_as_no_credentials() -> None:
    # RFC 4475 regaut01.
    assert parse_credentials("NoOneKnowsThisScheme opaque-data=here") is None
    assert parse_credentials("Basic YWxpY2U6c2VjcmV0") is None


def test_digest_without_response_is_a_parse_error() -> None:
    with pytest.raises(SIPParseError):
        parse_credentials('Digest username="alice", realm="x", nonce="n", uri="sip:x"')
    with pytest.raises(SIPParseError):
        parse_credentials('Digest username="a", username="b", realm="x", nonce="n", uri="u", response="r"')
    with pytest.raises(SIPParseError):
        parse_credentials('Digest username="alice" realm="x"')


def test_quoted_strings_are_unescaped() -> None:
    value = ('Digest username="al\\"ice", realm="x, y", nonce="n", uri="sip:x", '
             'response="r", qop=auth, nc=00000001, cnonce="c"')
    credentials = parse_credentials(value)
    assert credentials == DigestCredentials(username='al"ice', realm="x, y", nonce="n",
                                            uri="sip:x", response="r", qop="auth",
                                            nc="00000001", cnonce="c")


def test_dummy_ha1_has_the_algorithms_length_and_matches_no_password() -> None:
    challenger = DigestChallenger(SECRET)
    assert len(challenger.dummy_ha1("bob", REALM, DigestAlgorithm.MD5)) == 32
    assert len(challenger.dummy_ha1("bob", REALM, DigestAlgorithm.SHA256)) == 64


@given(st.text(max_size=300))
def test_parsing_any_text_raises_only_parse_errors(text: str) -> None:
    for parse in (parse_credentials, parse_challenge):
        try:
            parse(text)
        except SIPParseError:
            pass
        try:
            parse("Digest " + text)
        except SIPParseError:
            pass
