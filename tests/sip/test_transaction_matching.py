"""Which transaction a message belongs to (RFC 3261 17.1.3, 17.2.3, 9.1, 9.2)."""

from __future__ import annotations

import pytest

from sip.errors import SIPValueError
from sip.headers import Headers
from sip.message import Request, Response, make_response, new_branch
from sip.transaction import (
    AckReceived,
    Action,
    CancelReceived,
    ClientTransaction,
    RequestReceived,
    ResponseReceived,
    Send,
    ServerTransaction,
    StrayResponse,
    Terminated,
    TimedOut,
    TransactionLayer,
    TransactionState,
)
from sip.uri import URI

PEER = ("192.0.2.20", 5060)


def make_request(
    method: str,
    *,
    branch: str | None = "new",
    via_host: str = "192.0.2.20",
    call_id: str = "call-9@192.0.2.20",
    cseq: int = 1,
    cseq_method: str | None = None,
    to_tag: str | None = None,
    uri: str = "sip:bob@example.com",
) -> Request:
    """A request; ``branch=None`` means a Via without a branch (an RFC 2543 peer)."""
    if branch == "new":
        branch = new_branch()
    via = f"SIP/2.0/UDP {via_host}:5060" + ("" if branch is None else f";branch={branch}")
    to = "<sip:bob@example.com>" + ("" if to_tag is None else f";tag={to_tag}")
    return Request(
        method=method,
        uri=URI.parse(uri),
        headers=Headers([
            ("Via", via),
            ("Max-Forwards", "70"),
            ("From", "<sip:alice@example.com>;tag=from9"),
            ("To", to),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {cseq_method or method}"),
        ]),
    )


def state(tx: ClientTransaction | ServerTransaction) -> TransactionState:
    return tx.state


def sends(actions: list[Action]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def kinds(actions: list[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def only_request_received(actions: list[Action]) -> ServerTransaction:
    received = [a for a in actions if isinstance(a, RequestReceived)]
    assert len(received) == 1, actions
    return received[0].transaction


# -- responses to client transactions (17.1.3) -------------------------------------------


def test_a_response_matches_by_branch_and_cseq_method() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx, _ = layer.request(invite, PEER, "UDP", 0.0)
    # Same branch, but the CSeq method says CANCEL: another transaction's response.
    for_cancel = make_response(make_request("CANCEL", branch=invite.branch), 200)
    other_branch = make_response(make_request("INVITE"), 180)

    assert layer.receive(for_cancel, PEER, "UDP", 0.1) == [StrayResponse(for_cancel, PEER)]
    assert layer.receive(other_branch, PEER, "UDP", 0.1) == [StrayResponse(other_branch, PEER)]
    assert state(tx) is TransactionState.CALLING

    ringing = make_response(invite, 180, to_tag="b")
    assert layer.receive(ringing, PEER, "UDP", 0.2) == [ResponseReceived(tx, ringing)]


def test_the_client_side_refuses_what_it_cannot_match() -> None:
    layer = TransactionLayer()
    options = make_request("OPTIONS")
    layer.request(options, PEER, "UDP", 0.0)

    with pytest.raises(SIPValueError):
        layer.request(options, PEER, "UDP", 0.0)  # the branch is taken
    with pytest.raises(SIPValueError):
        layer.request(make_request("OPTIONS", branch="1234"), PEER, "UDP", 0.0)
    with pytest.raises(SIPValueError):
        layer.request(make_request("ACK"), PEER, "UDP", 0.0)  # the TU sends ACK for 2xx


# -- requests to server transactions (17.2.3) --------------------------------------------


def test_a_request_matches_by_branch_sent_by_and_method() -> None:
    layer = TransactionLayer()
    branch = new_branch()
    first = only_request_received(
        layer.receive(make_request("OPTIONS", branch=branch), PEER, "UDP", 0.0))

    # Same branch from another sent-by, or with another method: new transactions.
    other_host = layer.receive(
        make_request("OPTIONS", branch=branch, via_host="192.0.2.21"), PEER, "UDP", 0.1)
    other_method = layer.receive(make_request("INFO", branch=branch), PEER, "UDP", 0.1)
    retransmission = layer.receive(make_request("OPTIONS", branch=branch), PEER, "UDP", 0.2)

    assert only_request_received(other_host) is not first
    assert only_request_received(other_method) is not first
    assert retransmission == []
    assert layer.statistics()["server_transactions"] == 3


def test_an_ack_for_an_error_matches_the_invite_and_stops_timer_g() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx = only_request_received(layer.receive(invite, PEER, "UDP", 0.0))
    layer.respond(tx, make_response(invite, 404, to_tag="uas"), 0.0)

    ack = make_request("ACK", branch=invite.branch, to_tag="uas")
    assert layer.receive(ack, PEER, "UDP", 0.2) == []

    assert state(tx) is TransactionState.CONFIRMED
    assert sends(layer.expire(4.0)) == []  # no more 404 retransmissions


def test_an_ack_for_a_2xx_or_for_nothing_goes_to_the_tu() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx = only_request_received(layer.receive(invite, PEER, "UDP", 0.0))
    layer.respond(tx, make_response(invite, 200, to_tag="uas"), 0.5)

    ack_2xx = make_request("ACK", to_tag="uas")  # 13.2.2.4: a new branch
    stray_ack = make_request("ACK", call_id="unknown", to_tag="x")

    assert layer.receive(ack_2xx, PEER, "UDP", 0.6) == [AckReceived(ack_2xx, PEER, "UDP")]
    assert layer.receive(stray_ack, ("198.51.100.1", 5080), "TCP", 0.7) == [
        AckReceived(stray_ack, ("198.51.100.1", 5080), "TCP")]


def test_an_ack_reusing_the_invite_branch_after_a_2xx_is_passed_up() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx = only_request_received(layer.receive(invite, PEER, "UDP", 0.0))
    layer.respond(tx, make_response(invite, 200, to_tag="uas"), 0.5)
    ack = make_request("ACK", branch=invite.branch, to_tag="uas")

    # RFC 6026: in Accepted the ACK is passed to the TU, every time.
    assert layer.receive(ack, PEER, "UDP", 0.6) == [AckReceived(ack, PEER, "UDP")]
    assert layer.receive(ack, PEER, "UDP", 0.7) == [AckReceived(ack, PEER, "UDP")]
    assert state(tx) is TransactionState.ACCEPTED


# -- CANCEL (9.2) ------------------------------------------------------------------------


def test_a_cancel_names_the_pending_invite_and_gets_its_own_transaction() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    invite_tx = only_request_received(layer.receive(invite, PEER, "UDP", 0.0))
    cancel = make_request("CANCEL", branch=invite.branch)

    (event,) = layer.receive(cancel, PEER, "UDP", 1.0)

    assert isinstance(event, CancelReceived)
    assert event.invite is invite_tx
    assert event.transaction is not invite_tx and event.transaction.request == cancel
    assert not event.transaction.is_invite
    # The TU answers both; each goes out through its own transaction.
    ok = make_response(cancel, 200, to_tag="uas")
    terminated = make_response(invite, 487, to_tag="uas")
    assert layer.respond(event.transaction, ok, 1.0) == [Send(ok, PEER, "UDP")]
    assert layer.respond(invite_tx, terminated, 1.0) == [Send(terminated, PEER, "UDP")]
    # A retransmitted CANCEL gets the 200 again and no second event.
    assert layer.receive(cancel, PEER, "UDP", 1.5) == [Send(ok, PEER, "UDP")]


def test_a_cancel_matching_nothing_is_an_ordinary_request() -> None:
    layer = TransactionLayer()
    cancel = make_request("CANCEL")

    actions = layer.receive(cancel, PEER, "UDP", 0.0)

    # The TU answers it 481 (9.2).
    assert kinds(actions) == ["RequestReceived"]
    assert only_request_received(actions).request == cancel


def test_a_cancel_after_the_final_response_does_not_change_it() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    invite_tx = only_request_received(layer.receive(invite, PEER, "UDP", 0.0))
    layer.respond(invite_tx, make_response(invite, 200, to_tag="uas"), 0.5)

    (event,) = layer.receive(make_request("CANCEL", branch=invite.branch), PEER, "UDP", 0.6)

    assert isinstance(event, CancelReceived) and event.invite is invite_tx
    assert state(invite_tx) is TransactionState.ACCEPTED  # not pending: no 487 goes out
    assert layer.respond(invite_tx, make_response(invite, 487, to_tag="uas"), 0.6) == []


# -- RFC 2543 peers (17.2.3 fallback) ----------------------------------------------------


def test_requests_without_a_branch_match_on_the_rfc_2543_fields() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE", branch=None)
    tx = only_request_received(layer.receive(invite, PEER, "UDP", 0.0))
    layer.trying(tx, 0.0)

    retransmission = layer.receive(make_request("INVITE", branch=None), PEER, "UDP", 0.5)
    next_cseq = layer.receive(make_request("INVITE", branch=None, cseq=2), PEER, "UDP", 0.5)
    other_uri = layer.receive(
        make_request("INVITE", branch=None, uri="sip:carol@example.com"), PEER, "UDP", 0.5)

    assert [s.message for s in sends(retransmission)] == [tx.last_response]  # the 100
    assert only_request_received(next_cseq) is not tx
    assert only_request_received(other_uri) is not tx


def test_an_rfc_2543_ack_matches_by_the_to_tag_of_the_response_sent() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE", branch=None)
    tx = only_request_received(layer.receive(invite, PEER, "UDP", 0.0))
    layer.respond(tx, make_response(invite, 486, to_tag="uas"), 0.0)

    wrong_tag = make_request("ACK", branch=None, to_tag="someone-else", cseq_method="ACK")
    assert layer.receive(wrong_tag, PEER, "UDP", 0.1) == [AckReceived(wrong_tag, PEER, "UDP")]
    assert state(tx) is TransactionState.COMPLETED

    ack = make_request("ACK", branch=None, to_tag="uas")
    assert layer.receive(ack, PEER, "UDP", 0.2) == []
    assert state(tx) is TransactionState.CONFIRMED


def test_an_rfc_2543_cancel_finds_its_invite() -> None:
    layer = TransactionLayer()
    invite_tx = only_request_received(
        layer.receive(make_request("INVITE", branch=None), PEER, "UDP", 0.0))

    (event,) = layer.receive(make_request("CANCEL", branch=None), PEER, "UDP", 0.3)

    assert isinstance(event, CancelReceived) and event.invite is invite_tx


def test_a_branch_that_is_only_the_magic_cookie_is_not_trusted() -> None:
    # RFC 4475's badbranch case: "branch=z9hG4bK" identifies nothing, so two unrelated
    # requests carrying it must not be taken for retransmissions of each other.
    layer = TransactionLayer()
    first = make_request("OPTIONS", branch="z9hG4bK", call_id="one")
    second = make_request("OPTIONS", branch="z9hG4bK", call_id="two")

    a = only_request_received(layer.receive(first, PEER, "UDP", 0.0))
    b = only_request_received(layer.receive(second, PEER, "UDP", 0.0))

    assert a is not b
    assert layer.receive(first, PEER, "UDP", 0.1) == []  # its own retransmission matches


# -- cancelling our own INVITE (9.1) -----------------------------------------------------


def test_cancel_waits_for_a_provisional_response() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE", cseq=5)
    tx, _ = layer.request(invite, PEER, "UDP", 0.0)

    assert layer.cancel(tx, 0.1) == []  # 9.1: not before a provisional
    assert tx.cancel_transaction is None

    ringing = make_response(invite, 180, to_tag="uas")
    actions = layer.receive(ringing, PEER, "UDP", 0.3)

    assert kinds(actions) == ["ResponseReceived", "Send"]
    cancel = sends(actions)[0]
    assert isinstance(cancel.message, Request) and cancel.message.method == "CANCEL"
    assert cancel.message.branch == invite.branch
    assert str(cancel.message.cseq) == "5 CANCEL"
    assert cancel.destination == PEER and cancel.transport == "UDP"
    cancel_tx = tx.cancel_transaction
    assert cancel_tx is not None and cancel_tx.request == cancel.message

    # Responses to the CANCEL and to the INVITE go to their own transactions.
    ok = make_response(cancel.message, 200, to_tag="uas")
    assert layer.receive(ok, PEER, "UDP", 0.4) == [ResponseReceived(cancel_tx, ok)]
    terminated = make_response(invite, 487, to_tag="uas")
    assert kinds(layer.receive(terminated, PEER, "UDP", 0.5)) == ["Send", "ResponseReceived"]


def test_cancel_after_a_provisional_goes_out_at_once_and_only_once() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE", cseq=5)
    tx, _ = layer.request(invite, PEER, "TCP", 0.0)
    layer.receive(make_response(invite, 183, to_tag="uas"), PEER, "TCP", 0.3)

    actions = layer.cancel(tx, 1.0)

    (cancel,) = sends(actions)
    assert isinstance(cancel.message, Request) and cancel.message.method == "CANCEL"
    assert cancel.transport == "TCP"
    assert layer.cancel(tx, 1.1) == []


def test_a_cancelled_invite_without_a_final_response_ends_after_64_t1() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx, _ = layer.request(invite, PEER, "UDP", 0.0)
    layer.receive(make_response(invite, 180, to_tag="uas"), PEER, "UDP", 1.0)
    layer.cancel(tx, 10.0)
    cancel_tx = tx.cancel_transaction
    assert cancel_tx is not None
    ok = make_response(cancel_tx.request, 200, to_tag="uas")
    layer.receive(ok, PEER, "UDP", 10.1)  # the CANCEL is answered; the 487 never comes

    assert layer.expire(41.9) == [Terminated(cancel_tx)]  # Timer K of the CANCEL
    assert state(tx) is TransactionState.PROCEEDING
    assert layer.expire(42.0) == [TimedOut(tx), Terminated(tx)]  # 9.1: 10 + 64*T1
    assert layer.statistics()["client_transactions"] == 0


def test_an_uncancelled_invite_may_ring_for_as_long_as_the_tu_likes() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx, _ = layer.request(invite, PEER, "UDP", 0.0)
    layer.receive(make_response(invite, 180, to_tag="uas"), PEER, "UDP", 1.0)

    assert layer.expire(3600.0) == []
    assert state(tx) is TransactionState.PROCEEDING


def test_there_is_nothing_to_cancel_after_a_final_response() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx, _ = layer.request(invite, PEER, "UDP", 0.0)
    layer.receive(make_response(invite, 200, to_tag="uas"), PEER, "UDP", 0.3)

    assert layer.cancel(tx, 0.4) == []
    options_tx, _ = layer.request(make_request("OPTIONS"), PEER, "UDP", 0.0)
    assert layer.cancel(options_tx, 0.4) == []  # 9.1: never for non-INVITE


def test_a_pending_cancel_is_dropped_when_the_final_response_comes_first() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx, _ = layer.request(invite, PEER, "UDP", 0.0)
    layer.cancel(tx, 0.1)

    actions = layer.receive(make_response(invite, 200, to_tag="uas"), PEER, "UDP", 0.2)
    assert kinds(actions) == ["ResponseReceived"]
    actions = layer.receive(make_response(invite, 180, to_tag="uas"), PEER, "UDP", 0.3)
    assert actions == []
    assert tx.cancel_transaction is None


def test_a_stray_2xx_after_timer_m_is_reported_with_its_source() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx, _ = layer.request(invite, PEER, "UDP", 0.0)
    ok = make_response(invite, 200, to_tag="uas")
    layer.receive(ok, PEER, "UDP", 1.0)
    assert layer.expire(33.0) == [Terminated(tx)]

    assert layer.receive(ok, ("198.51.100.9", 5062), "UDP", 34.0) == [
        StrayResponse(ok, ("198.51.100.9", 5062))]


def test_messages_that_cannot_be_matched_are_dropped() -> None:
    layer = TransactionLayer()
    no_via = Request(method="OPTIONS", uri=URI.parse("sip:bob@example.com"), headers=Headers([
        ("From", "<sip:a@example.com>;tag=1"), ("To", "<sip:b@example.com>"),
        ("Call-ID", "x"), ("CSeq", "1 OPTIONS")]))
    response_without_cseq = Response(status=200, reason="OK", headers=Headers([
        ("Via", f"SIP/2.0/UDP 192.0.2.20;branch={new_branch()}")]))

    assert layer.receive(no_via, PEER, "UDP", 0.0) == []
    assert layer.receive(response_without_cseq, PEER, "UDP", 0.0) == []
    assert layer.statistics()["server_transactions"] == 0


# -- ACKs for a 300-699 that carry a branch of their own ------------------------------------


def _rejected_invite(layer: TransactionLayer) -> tuple[ServerTransaction, str]:
    invite = make_request("INVITE")
    tx = only_request_received(layer.receive(invite, PEER, "UDP", now=0.0))
    layer.respond(tx, make_response(invite, 407, to_tag="t407"), now=0.1)
    return tx, invite.branch or ""


def test_ack_for_a_rejection_with_its_own_branch_still_stops_the_retransmissions() -> None:
    layer = TransactionLayer()
    tx, _ = _rejected_invite(layer)
    ack = make_request("ACK", to_tag="t407", cseq=1)  # same dialog, a fresh branch
    actions = layer.receive(ack, PEER, "UDP", now=0.2)
    assert not any(isinstance(a, AckReceived) for a in actions)
    assert state(tx) is TransactionState.CONFIRMED
    # Timer G no longer retransmits the 407.
    assert sends(layer.expire(10.0)) == []


def test_an_ack_for_another_dialog_is_not_taken_for_the_rejection() -> None:
    layer = TransactionLayer()
    tx, _ = _rejected_invite(layer)
    other_tag = make_request("ACK", to_tag="someone-else", cseq=1)
    assert kinds(layer.receive(other_tag, PEER, "UDP", now=0.2)) == ["AckReceived"]
    other_cseq = make_request("ACK", to_tag="t407", cseq=2)
    assert kinds(layer.receive(other_cseq, PEER, "UDP", now=0.3)) == ["AckReceived"]
    assert state(tx) is TransactionState.COMPLETED
