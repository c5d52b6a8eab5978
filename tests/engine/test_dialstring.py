"""Dial strings as a dialplan author writes them: groups, legs, options, substitutions."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.dialstring import (
    MAX_DIAL_STRING,
    MAX_LEGS,
    OPTION_NAMES,
    SUBSTITUTION_NAMES,
    DialStringError,
    LegKind,
    LegOptions,
    classify,
    drop_duplicates,
    parse_dial_string,
)

REQUEST = {
    "dst": "0017476120000",
    "fromname": "Bob & Co | [x], y",
    "fromuriuser": "bob",
    "fromaor": "bob@example.com",
}


def parse(text: str) -> list[list[tuple[str | None, str, int | None, str | None]]]:
    plan = parse_dial_string(text, substitutions=REQUEST)
    return [[(leg.user, leg.host, leg.port, leg.uri) for leg in group] for group in plan.groups]


def test_groups_and_parallel_legs() -> None:
    assert parse("100@prov & 200@prov | 300@local") == [
        [("100", "prov", None, None), ("200", "prov", None, None)],
        [("300", "local", None, None)],
    ]


def test_bare_provider_means_dst_at_provider() -> None:
    assert parse("myprovider") == [[("0017476120000", "myprovider", None, None)]]
    assert parse("${dst}@myprovider") == parse("myprovider")


def test_substitutions() -> None:
    assert parse("${dst:2}@prov") == [[("17476120000", "prov", None, None)]]
    assert parse("${exten:3}@prov") == [[("7476120000", "prov", None, None)]]
    assert parse("${dst:99}x@prov") == [[("x", "prov", None, None)]]
    assert parse("${fromuriuser}@local") == [[("bob", "local", None, None)]]
    assert parse("sip:${fromaor}") == [[("bob", "example.com", None, "sip:bob@example.com")]]


def test_missing_substitution_value_is_empty() -> None:
    plan = parse_dial_string("a${fromname}@prov", substitutions={"dst": "1"})
    assert plan.legs[0].user == "a"


def test_substituted_values_cannot_add_legs_or_options() -> None:
    # The caller chooses their From display name; '&', '|', ',' and ']' in it must stay
    # inside the option value instead of creating a leg, a group or an option.
    plan = parse_dial_string("1@prov[fd=${fromname},cd=30]", substitutions=REQUEST)
    assert len(plan.groups) == 1 and len(plan.legs) == 1
    assert plan.legs[0].options == LegOptions(from_display="Bob & Co | [x], y", duration_limit=30)
    with pytest.raises(DialStringError, match="not allowed"):
        parse_dial_string("${fromname}@prov", substitutions=REQUEST)


def test_substitution_is_not_recursive() -> None:
    plan = parse_dial_string("x[fd=${fromname}]", substitutions={"dst": "1", "fromname": "${dst}"})
    assert plan.legs[0].options.from_display == "${dst}"


def test_options() -> None:
    plan = parse_dial_string(
        "1@prov[dt=120,cd=3600,fd=Front Desk,fu=reception,fh=example.org]", substitutions=REQUEST
    )
    assert plan.legs[0].options == LegOptions(
        delay=120,
        duration_limit=3600,
        from_display="Front Desk",
        from_user="reception",
        from_host="example.org",
    )
    assert (
        parse_dial_string(" 1@prov [ DT = 5 ] ", substitutions=REQUEST).legs[0].options.delay == 5
    )


def test_sip_uris_with_params_and_ipv6() -> None:
    assert parse("sip:alice@Example.COM:5070;transport=tcp[dt=3] & sips:[::1]") == [
        [
            ("alice", "Example.COM", 5070, "sip:alice@example.com:5070;transport=tcp"),
            (None, "[::1]", None, "sips:[::1]"),
        ]
    ]
    assert parse("sip:bob@[2001:db8::1]:5062[cd=5]")[0][0][2] == 5062


def test_host_with_port() -> None:
    assert parse("joe@127.0.0.1:5070") == [[("joe", "127.0.0.1", 5070, None)]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1@prov[dt=abc]", "dial string option 'dt=abc' is not a number"),
        ("1@prov[dt=121]", "out of range"),
        ("1@prov[cd=0]", "out of range"),
        ("1@prov[dt=1,dt=2]", "given twice"),
        ("1@prov[xx=1]", "unknown dial string option 'xx=1'"),
        ("1@prov[]", "empty option list"),
        ("1@prov[dt=1", "without its closing"),
        ("1@prov|", "group 2 of the dial string is empty"),
        ("1@prov&&2@prov", "is empty"),
        ("${nope}@prov", "unknown substitution '${nope}'"),
        ("${dst@prov", "malformed substitution"),
        ("${fromname:2}@prov", "only allowed for dst"),
        ("sip:a b@c", "not a valid SIP URI"),
        ("@prov", "empty user part"),
        ("1@bad_host!", "not a valid host"),
        ("1@prov:70000", "not a valid host"),
        ("1@prov[fu=a b]", "not allowed"),
        ("1@prov\r\nX: y", "control character"),
        ("   ", "empty"),
    ],
)
def test_errors_name_the_defect(text: str, message: str) -> None:
    with pytest.raises(DialStringError, match=message.replace("[", r"\[").replace("$", r"\$")):
        parse_dial_string(text, substitutions=REQUEST)


def test_bare_provider_without_dst_is_an_error() -> None:
    with pytest.raises(DialStringError, match=r"\$\{dst\} is empty"):
        parse_dial_string("prov", substitutions={"dst": ""})


def test_limits() -> None:
    parse_dial_string("&".join(["1@p"] * MAX_LEGS), substitutions=REQUEST)
    with pytest.raises(DialStringError, match=f"more than {MAX_LEGS} legs"):
        parse_dial_string("|".join(["1@p"] * (MAX_LEGS + 1)), substitutions=REQUEST)
    with pytest.raises(DialStringError, match="at most 2048"):
        parse_dial_string("1" * (MAX_DIAL_STRING - 1) + "@p", substitutions=REQUEST)


def test_classify() -> None:
    def served(host: str) -> bool:
        return host == "example.com"

    def kind(text: str) -> LegKind:
        leg = parse_dial_string(text, substitutions=REQUEST).legs[0]
        return classify(leg, provider_names=["MyProv"], is_local_domain=served)

    assert kind("1@myprov") is LegKind.PROVIDER
    assert kind("MYPROV") is LegKind.PROVIDER
    assert kind("joe@local") is LegKind.LOCAL
    assert kind("anything.joe@Example.com") is LegKind.LOCAL
    assert kind("sip:joe@example.com") is LegKind.LOCAL
    assert kind("1@elsewhere.net") is LegKind.URI
    # An explicit URI or a host:port names a network address, never a provider.
    assert kind("sip:1@myprov") is LegKind.URI
    assert kind("1@myprov:5060") is LegKind.URI


def test_duplicates_dropped_across_dials_of_one_execution() -> None:
    seen: set[str] = set()
    first = parse_dial_string("1@prov & 1@PROV & sip:a@h.com", substitutions=REQUEST).legs
    assert [leg.destination for leg in drop_duplicates(first, seen)] == ["1@prov", "sip:a@h.com"]
    second = parse_dial_string("sip:a@H.com & 2@prov", substitutions=REQUEST).legs
    assert [leg.destination for leg in drop_duplicates(second, seen)] == ["2@prov"]


# Characters that matter to the grammar, so that random strings reach deep paths.
GRAMMAR = st.sampled_from(
    list("&|[],=@:;$%{}<> \t\r\n.-_*#")
    + ["sip:", "sips:", "${dst:", "${", "dt=", "cd=", "fd=", "fu=", "fh=", "[::1]"]
)
TEXT = st.lists(st.one_of(GRAMMAR, st.text(max_size=4)), max_size=40).map("".join)


@settings(max_examples=1500, deadline=None)
@given(text=TEXT, values=st.dictionaries(st.sampled_from(sorted(REQUEST)), st.text(max_size=30)))
def test_arbitrary_text_raises_only_dial_string_error(text: str, values: dict[str, str]) -> None:
    try:
        plan = parse_dial_string(text, substitutions=values)
    except DialStringError:
        return
    assert 1 <= len(plan.legs) <= MAX_LEGS
    for leg in plan.legs:
        assert leg.host and 0 <= leg.options.delay <= 120
        assert leg.key.startswith(("sip:", "sips:"))


def test_user_guide_lists_every_option_and_substitution() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "dialstrings.md").read_text()
    for name in OPTION_NAMES:
        assert f"`{name}=" in guide, name
    for name in SUBSTITUTION_NAMES:
        assert f"`${{{name}}}`" in guide, name
