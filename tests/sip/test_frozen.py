"""The quicker constructors of sip.frozen build what the dataclass constructors build."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from sip.frozen import fast_init, positional_factory
from sip.headers import CSeq, Headers, NameAddr, Via
from sip.message import Request, Response, make_request_from, make_response_from
from sip.uri import URI


def _shape(*, kw_only: bool) -> type:
    # dataclass() called, not written as a decorator: mypy reads a decorator's kw_only
    # only as a literal True or False, and here it is the test's parameter.
    class Shape:
        a: int
        b: str = "b"
        c: list[int] = field(default_factory=list)
        d: tuple[int, ...] = ()
        hidden: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    return dataclass(frozen=True, slots=True, kw_only=kw_only)(Shape)


@pytest.mark.parametrize("kw_only", [True, False])
def test_fast_init_builds_what_the_generated_init_builds(kw_only: bool) -> None:
    plain = _shape(kw_only=kw_only)
    fast = fast_init(_shape(kw_only=kw_only))
    for kwargs in ({"a": 1}, {"a": 2, "b": "x"}, {"a": 3, "c": [1], "d": (4,)}):
        want, got = plain(**kwargs), fast(**kwargs)
        assert repr(got) == repr(want)
        assert dataclasses.astuple(got) == dataclasses.astuple(want)
        assert got.hidden == {}
    # Factories run for each instance: nothing is shared between two of them.
    one, two = fast(a=1), fast(a=1)
    assert one.c is not two.c and one.hidden is not two.hidden
    # The signature is the generated one's.
    with pytest.raises(TypeError):
        fast()
    with pytest.raises(TypeError):
        fast(a=1, hidden={})
    with pytest.raises(TypeError):
        fast(a=1, nope=2)
    if kw_only:
        with pytest.raises(TypeError):
            fast(1)
    else:
        assert dataclasses.astuple(fast(1, "x")) == dataclasses.astuple(plain(1, "x"))
    # Still frozen, still replaceable.
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.a = 5
    assert dataclasses.astuple(dataclasses.replace(one, b="z")) == dataclasses.astuple(plain(a=1, b="z"))


def test_positional_factory_fills_the_rest_with_defaults() -> None:
    shape = _shape(kw_only=True)
    make = positional_factory(shape, "a", "d")
    built = make(7, (1, 2))
    assert built == shape(a=7, d=(1, 2))
    assert built.c == [] and built.hidden == {} and make(7, ()).c is not built.c
    with pytest.raises(TypeError):
        positional_factory(shape, "a", "nope")


def test_only_frozen_slotted_dataclasses_without_post_init() -> None:
    @dataclass(slots=True)
    class Mutable:
        a: int

    @dataclass(frozen=True)
    class Unslotted:
        a: int

    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (Mutable, Unslotted, Checked):
        with pytest.raises(TypeError):
            fast_init(cls)


def test_the_stacks_classes() -> None:
    uri = URI(scheme="sip", user="alice", host="example.com", port=5060, params=(("lr", None),))
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port, uri.params, uri.headers, uri.opaque) == (
        "sip", "alice", None, "example.com", 5060, (("lr", None),), None, None)
    assert URI.parse("sip:alice@example.com:5060;lr") == uri
    assert str(uri) == "sip:alice@example.com:5060;lr"
    assert NameAddr.parse("Alice <sip:alice@example.com:5060;lr>;tag=1") == NameAddr(
        display_name="Alice", uri=uri, params=(("tag", "1"),))
    assert Via.parse("SIP/2.0/UDP h:5062;branch=z9hG4bKx") == Via(
        transport="UDP", host="h", port=5062, params=(("branch", "z9hG4bKx"),))
    assert CSeq(1, "INVITE") == CSeq(number=1, method="INVITE")
    headers = Headers([("Call-ID", "c")])
    request = make_request_from("OPTIONS", uri, headers, b"")
    assert request == Request(method="OPTIONS", uri=uri, headers=headers)
    assert Request(method="OPTIONS", uri=uri).headers == Headers()
    response = make_response_from(200, "OK", headers, b"x")
    assert response == Response(status=200, reason="OK", headers=headers, body=b"x")
    # Each message has a memo of its own.
    assert request._memo is not Request(method="OPTIONS", uri=uri)._memo
    assert response._memo is not make_response_from(200, "OK", headers, b"x")._memo
