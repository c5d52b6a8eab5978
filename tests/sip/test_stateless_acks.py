"""The ACK of a response sent without a transaction is known by its To tag and dropped
before parsing; every other message goes on to the parser."""

from __future__ import annotations

import pytest

from sip.message import (
    Request,
    acks_stateless_answer,
    make_ack_for_error,
    make_response,
    new_tag,
    stateless_tag,
)
from sip.parse import parse_message_untrusted

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK-st-1\r\n"
    b"From: <sip:alice@example.com>;tag=a1\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"Call-ID: st-1@192.0.2.7\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def _invite() -> Request:
    message = parse_message_untrusted(INVITE)
    assert isinstance(message, Request)
    return message


def _ack(to_tag: str) -> bytes:
    invite = _invite()
    return make_ack_for_error(invite, make_response(invite, 407, to_tag=to_tag)).to_bytes()


def test_the_ack_of_a_stateless_answer_is_known() -> None:
    tag = stateless_tag(_invite())
    assert tag == stateless_tag(_invite())  # the same request, the same tag
    assert acks_stateless_answer(_ack(tag))
    # The compact form, and a tag among other header parameters.
    compact = _ack(tag).replace(b"\r\nTo:", b"\r\nt:")
    assert acks_stateless_answer(compact)
    assert acks_stateless_answer(_ack(tag).replace(b";tag=", b";x=1;tag="))


def test_an_ack_in_a_dialog_is_not() -> None:
    # Dialog tags of ours are hex: they never look like a stateless answer's.
    assert not acks_stateless_answer(_ack(new_tag()))


@pytest.mark.parametrize(
    "data",
    [
        # Not an ACK.
        INVITE.replace(b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com>;tag=sl0123456789ab"),
        # The look-alike is a parameter of the URI, inside <>, not the To tag.
        _ack(new_tag()).replace(b"<sip:bob@example.com>", b"<sip:bob@example.com;tag=sl01>"),
        # The look-alike is in the body, past the header section.
        _ack(new_tag()).replace(b"Content-Length: 0\r\n\r\n", b"Content-Length: 24\r\n\r\n")
        + b"\r\nTo: <x>;tag=sl01234\r\n\r\n",
        # A spelling the quick look does not read: left to the parser.
        _ack("sl0123").replace(b"\r\nTo:", b"\r\nTO :"),
        # No end of the header section.
        _ack("sl0123").split(b"\r\n\r\n")[0],
    ],
    ids=["invite", "uri-parameter", "body", "odd-spelling", "truncated"],
)
def test_anything_else_goes_to_the_parser(data: bytes) -> None:
    assert not acks_stateless_answer(data)
