"""The four RFC 3261 transaction state machines: timers, transitions, absorption.

Every test passes ``now`` explicitly: no sleeping, no sockets.
"""

from __future__ import annotations

import gc

import pytest

from sip.errors import SIPValueError
from sip.headers import Headers
from sip.message import Request, Response, make_response, new_branch
from sip.parse import parse_message_untrusted
from sip.transaction import (
    PACK_AFTER,
    AckReceived,
    Action,
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
    TransportFailed,
    TryingDue,
)
from sip.uri import URI

PEER = ("192.0.2.10", 5060)  # the far end, in both directions
SERVER_VIA_HOST = "192.0.2.10"


def make_request(
    method: str = "OPTIONS",
    *,
    branch: str | None = None,
    transport: str = "UDP",
    via_host: str = SERVER_VIA_HOST,
    via_port: int | None = 5060,
    via_params: str = "",
    call_id: str = "call-1@192.0.2.10",
    cseq: int = 1,
) -> Request:
    hostport = via_host if via_port is None else f"{via_host}:{via_port}"
    return Request(
        method=method,
        uri=URI.parse("sip:bob@example.com"),
        headers=Headers([
            ("Via", f"SIP/2.0/{transport} {hostport};branch={branch or new_branch()}{via_params}"),
            ("Max-Forwards", "70"),
            ("From", "<sip:alice@example.com>;tag=from1"),
            ("To", "<sip:bob@example.com>"),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"),
        ]),
    )


def state(tx: ClientTransaction | ServerTransaction) -> TransactionState:
    """The current state, read through a call so mypy does not pin it after an assert."""
    return tx.state


def sends(actions: list[Action]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def statuses(sent: list[Send]) -> list[int]:
    """The status of each response sent (all of them must be responses)."""
    out = []
    for send in sent:
        assert isinstance(send.message, Response)
        out.append(send.message.status)
    return out


def received_by(actions: list[Action]) -> ServerTransaction:
    """The new server transaction of the RequestReceived that ``actions`` start with."""
    first = actions[0]
    assert isinstance(first, RequestReceived)
    return first.transaction


def kinds(actions: list[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def run_timers(layer: TransactionLayer, until: float) -> list[tuple[float, list[Action]]]:
    """Drive the layer like a punctual transport shell; (time, actions) for each wake-up."""
    fired = []
    while (deadline := layer.next_deadline()) is not None and deadline <= until:
        fired.append((deadline, layer.expire(deadline)))
    return fired


def retransmit_times(fired: list[tuple[float, list[Action]]], method: str) -> list[float]:
    return [
        t for t, actions in fired for s in sends(actions)
        if isinstance(s.message, Request) and s.message.method == method
    ]


def new_server_tx(
    layer: TransactionLayer, request: Request, transport: str = "UDP", now: float = 0.0
) -> ServerTransaction:
    """The request's new server transaction, after what the shell does with the actions
    (a new INVITE's 100 Trying included)."""
    actions = layer.receive(request, PEER, transport, now)
    received = [a for a in actions if isinstance(a, RequestReceived)]
    assert len(received) == 1
    for action in actions:
        if isinstance(action, TryingDue):
            layer.trying(action.transaction, now)
    return received[0].transaction


# -- INVITE client (17.1.1, RFC 6026) -----------------------------------------------------


def test_a_transport_error_ends_an_unanswered_client_transaction_and_its_timers() -> None:
    # 17.1.1.2 / 17.1.2.2 / 18.4: the shell reports what it could not deliver (an ICMP
    # error quotes the datagram); the transaction named by its branch ends at once.
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx, _ = layer.request(invite, PEER, "UDP", 0.0)
    options = make_request("OPTIONS")
    other, _ = layer.request(options, PEER, "UDP", 0.0)

    actions = layer.transport_error(invite.to_bytes(), PEER, "UDP", "ICMP: ECONNREFUSED", 0.1)

    assert actions == [TransportFailed(tx, "ICMP: ECONNREFUSED"), Terminated(tx)]
    assert state(tx) is TransactionState.TERMINATED
    # Timer A no longer retransmits it, Timer B never reports a timeout; the OPTIONS goes on.
    fired = run_timers(layer, 100.0)
    assert retransmit_times(fired, "INVITE") == []
    assert [a for _, acts in fired for a in acts if isinstance(a, TimedOut)] == [TimedOut(other)]
    # A non-INVITE in Trying ends the same way.
    third = make_request("OPTIONS")
    tx3, _ = layer.request(third, PEER, "UDP", 200.0)
    assert layer.transport_error(third.to_bytes(), PEER, "UDP", "x", 200.1) == [
        TransportFailed(tx3, "x"), Terminated(tx3)]


def test_a_transport_error_that_names_no_waiting_request_changes_nothing() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx, _ = layer.request(invite, PEER, "UDP", 0.0)
    data = invite.to_bytes()
    # Another destination or transport, a quote too short to reach the branch, a
    # response, garbage: not this transaction.
    assert layer.transport_error(data, ("192.0.2.99", 5060), "UDP", "x", 0.1) == []
    assert layer.transport_error(data, PEER, "TCP", "x", 0.1) == []
    assert layer.transport_error(data[:8], PEER, "UDP", "x", 0.1) == []
    assert layer.transport_error(make_response(invite, 180).to_bytes(), PEER, "UDP", "x", 0.1) == []
    assert layer.transport_error(b"\xff" * 300, PEER, "UDP", "x", 0.1) == []
    # Once a provisional came back the path works: a later error is not this request's.
    layer.receive(make_response(invite, 180, to_tag="callee"), PEER, "UDP", 0.2)
    assert layer.transport_error(data, PEER, "UDP", "x", 0.3) == []
    assert state(tx) is TransactionState.PROCEEDING



def test_invite_client_retransmits_on_timer_a_doubling_until_timer_b() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx, actions = layer.request(invite, PEER, "UDP", 0.0)
    assert actions == [Send(invite, PEER, "UDP")]
    assert state(tx) is TransactionState.CALLING and tx.is_invite

    fired = run_timers(layer, 100.0)

    assert retransmit_times(fired, "INVITE") == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    last_time, last = fired[-1]
    assert last_time == 32.0  # Timer B = 64*T1
    assert last == [TimedOut(tx), Terminated(tx)]
    assert state(tx) is TransactionState.TERMINATED
    assert layer.next_deadline() is None
    assert layer.statistics()["client_transactions"] == 0


def test_timers_follow_t1() -> None:
    layer = TransactionLayer(t1=0.1)
    layer.request(make_request("INVITE"), PEER, "UDP", 10.0)

    fired = run_timers(layer, 100.0)

    assert [round(t, 6) for t in retransmit_times(fired, "INVITE")] == [
        10.1, 10.3, 10.7, 11.5, 13.1, 16.3]
    assert fired[-1][0] == 10.0 + 6.4


def test_invite_client_over_tcp_never_retransmits() -> None:
    layer = TransactionLayer()
    tx, actions = layer.request(make_request("INVITE", transport="TCP"), PEER, "TCP", 0.0)
    assert len(sends(actions)) == 1

    fired = run_timers(layer, 100.0)

    assert fired == [(32.0, [TimedOut(tx), Terminated(tx)])]


def test_provisional_stops_timers_a_and_b() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx, _ = layer.request(invite, PEER, "UDP", 0.0)
    ringing = make_response(invite, 180, to_tag="callee")

    actions = layer.receive(ringing, PEER, "UDP", 0.2)

    assert actions == [ResponseReceived(tx, ringing)]
    assert state(tx) is TransactionState.PROCEEDING and tx.last_response == ringing
    # Proceeding has no timer of its own: nothing is retransmitted, nothing times out.
    assert layer.next_deadline() is None
    assert layer.expire(1000.0) == []
    assert layer.receive(make_response(invite, 183, to_tag="callee"), PEER, "UDP", 5.0)[0] \
        == ResponseReceived(tx, make_response(invite, 183, to_tag="callee"))


def test_invite_client_acks_an_error_and_resends_the_ack_for_retransmissions() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE", cseq=7)
    tx, _ = layer.request(invite, PEER, "UDP", 0.0)
    busy = make_response(invite, 486, to_tag="callee")

    actions = layer.receive(busy, PEER, "UDP", 1.0)

    assert kinds(actions) == ["Send", "ResponseReceived"]
    ack = sends(actions)[0]
    assert ack.destination == PEER and ack.transport == "UDP"
    assert isinstance(ack.message, Request) and ack.message.method == "ACK"
    assert ack.message.branch == invite.branch  # 17.1.1.3: same transaction
    assert str(ack.message.cseq) == "7 ACK"
    assert ack.message.to.tag == "callee"
    assert state(tx) is TransactionState.COMPLETED

    # A retransmitted 486 gets the same ACK again and is not passed up.
    assert layer.receive(busy, PEER, "UDP", 2.0) == [ack]
    # Timer D: 32 s on UDP.
    assert run_timers(layer, 100.0) == [(33.0, [Terminated(tx)])]
    assert layer.receive(busy, PEER, "UDP", 40.0) == [StrayResponse(busy, PEER)]


def test_invite_client_over_tcp_terminates_right_after_an_error() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE", transport="TCP")
    tx, _ = layer.request(invite, PEER, "TCP", 0.0)

    actions = layer.receive(make_response(invite, 404, to_tag="x"), PEER, "TCP", 1.0)

    assert kinds(actions) == ["Send", "ResponseReceived", "Terminated"]
    assert sends(actions)[0].transport == "TCP"
    assert layer.statistics()["client_transactions"] == 0


def test_invite_client_passes_up_every_2xx_until_timer_m() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx, _ = layer.request(invite, PEER, "UDP", 0.0)
    ok = make_response(invite, 200, to_tag="first")
    forked = make_response(invite, 200, to_tag="second")

    actions = layer.receive(ok, PEER, "UDP", 2.0)

    # The ACK for a 2xx belongs to the TU: the transaction sends nothing.
    assert actions == [ResponseReceived(tx, ok)]
    assert state(tx) is TransactionState.ACCEPTED
    assert layer.receive(ok, PEER, "UDP", 2.5) == [ResponseReceived(tx, ok)]
    assert layer.receive(forked, PEER, "UDP", 3.0) == [ResponseReceived(tx, forked)]
    # Neither A nor B runs in Accepted: only Timer M, 64*T1 after the first 2xx.
    assert run_timers(layer, 100.0) == [(34.0, [Terminated(tx)])]
    # Afterwards a retransmitted 2xx is stray; the TU may still have to ACK it.
    assert layer.receive(ok, PEER, "UDP", 40.0) == [StrayResponse(ok, PEER)]


def test_invite_client_keeps_timer_m_on_tcp() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE", transport="TCP")
    tx, _ = layer.request(invite, PEER, "TCP", 0.0)
    layer.receive(make_response(invite, 200, to_tag="t"), PEER, "TCP", 1.0)

    assert layer.next_deadline() == 33.0
    assert layer.expire(33.0) == [Terminated(tx)]


def test_invite_client_ignores_provisionals_after_a_final() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    layer.request(invite, PEER, "UDP", 0.0)
    layer.receive(make_response(invite, 603, to_tag="t"), PEER, "UDP", 1.0)

    assert layer.receive(make_response(invite, 180, to_tag="t"), PEER, "UDP", 1.1) == []
    assert layer.receive(make_response(invite, 200, to_tag="t"), PEER, "UDP", 1.2) == []


# -- non-INVITE client (17.1.2) -----------------------------------------------------------


def test_non_invite_client_timer_e_doubles_up_to_t2_then_timer_f() -> None:
    layer = TransactionLayer()
    options = make_request("OPTIONS")
    tx, _ = layer.request(options, PEER, "UDP", 0.0)
    assert state(tx) is TransactionState.TRYING and not tx.is_invite

    fired = run_timers(layer, 100.0)

    assert retransmit_times(fired, "OPTIONS") == [
        0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert fired[-1] == (32.0, [TimedOut(tx), Terminated(tx)])


def test_non_invite_client_in_proceeding_retransmits_every_t2() -> None:
    layer = TransactionLayer()
    register = make_request("REGISTER")
    tx, _ = layer.request(register, PEER, "UDP", 0.0)
    trying = make_response(register, 100)
    assert layer.receive(trying, PEER, "UDP", 0.2) == [ResponseReceived(tx, trying)]
    assert state(tx) is TransactionState.PROCEEDING

    fired = run_timers(layer, 100.0)

    # The pending E fires at 0.5; from then on Proceeding resets it to T2 each time.
    assert retransmit_times(fired, "REGISTER") == [
        0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5]
    assert fired[-1] == (32.0, [TimedOut(tx), Terminated(tx)])


def test_non_invite_client_completed_absorbs_retransmissions_until_timer_k() -> None:
    layer = TransactionLayer()
    options = make_request("OPTIONS")
    tx, _ = layer.request(options, PEER, "UDP", 0.0)
    ok = make_response(options, 200, to_tag="t")

    assert layer.receive(ok, PEER, "UDP", 1.0) == [ResponseReceived(tx, ok)]
    assert state(tx) is TransactionState.COMPLETED
    assert layer.receive(ok, PEER, "UDP", 2.0) == []
    # Timer E stops (its entry is dropped) and Timer K is T4 = 5 s.
    assert run_timers(layer, 100.0) == [(6.0, [Terminated(tx)])]


def test_non_invite_client_over_tcp_terminates_on_the_final_response() -> None:
    layer = TransactionLayer()
    options = make_request("OPTIONS", transport="TCP")
    tx, _ = layer.request(options, PEER, "TCP", 0.0)
    assert layer.next_deadline() == 32.0  # Timer F only, no Timer E

    ok = make_response(options, 404)
    assert layer.receive(ok, PEER, "TCP", 1.0) == [ResponseReceived(tx, ok), Terminated(tx)]
    assert layer.next_deadline() is None


# -- INVITE server (17.2.1, RFC 6026) -----------------------------------------------------


def test_new_invite_gets_100_trying_once_the_tu_has_seen_it() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")

    actions = layer.receive(invite, PEER, "UDP", 0.0)

    assert kinds(actions) == ["RequestReceived", "TryingDue"]
    tx = received_by(actions)
    assert isinstance(tx, ServerTransaction) and actions[1] == TryingDue(tx)
    assert tx.source == PEER and tx.transport == "UDP" and tx.request == invite
    trying = layer.trying(tx, 0.0)
    assert kinds(trying) == ["Send"]
    sent = sends(trying)[0]
    assert isinstance(sent.message, Response) and sent.message.status == 100
    assert sent.message.to.tag is None  # 8.2.6.1: never a To tag on a 100
    assert sent.destination == PEER
    assert state(tx) is TransactionState.PROCEEDING and tx.last_response == sent.message
    assert layer.trying(tx, 0.0) == []  # once


def test_an_invite_the_tu_answers_at_once_gets_no_100() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    actions = layer.receive(invite, PEER, "UDP", 0.0)
    tx = received_by(actions)
    assert isinstance(tx, ServerTransaction)
    challenge = make_response(invite, 407, to_tag="me")

    assert layer.respond(tx, challenge, 0.0) == [Send(challenge, PEER, "UDP")]
    assert layer.trying(tx, 0.0) == []
    assert layer.receive(invite, PEER, "UDP", 0.2) == [Send(challenge, PEER, "UDP")]


def test_send_trying_can_be_left_to_the_tu() -> None:
    layer = TransactionLayer(send_trying=False)
    invite = make_request("INVITE")

    actions = layer.receive(invite, PEER, "UDP", 0.0)

    assert kinds(actions) == ["RequestReceived"]
    # A retransmission before any response gets nothing back.
    assert layer.receive(invite, PEER, "UDP", 0.5) == []


def test_retransmitted_invite_gets_the_latest_provisional() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx = new_server_tx(layer, invite)
    assert statuses(sends(layer.receive(invite, PEER, "UDP", 0.5))) == [100]
    ringing = make_response(invite, 180, to_tag="me")
    assert layer.respond(tx, ringing, 1.0) == [Send(ringing, PEER, "UDP")]

    assert layer.receive(invite, PEER, "UDP", 1.5) == [Send(ringing, PEER, "UDP")]


def test_invite_server_retransmits_an_error_on_timer_g_until_ack() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx = new_server_tx(layer, invite)
    busy = make_response(invite, 486, to_tag="me")

    assert layer.respond(tx, busy, 0.0) == [Send(busy, PEER, "UDP")]
    assert state(tx) is TransactionState.COMPLETED
    fired = run_timers(layer, 10.0)
    times = [t for t, actions in fired for s in sends(actions) if s.message == busy]
    assert times == [0.5, 1.5, 3.5, 7.5]  # G doubles up to T2 ...
    fired = run_timers(layer, 20.0)
    assert [t for t, _ in fired] == [11.5, 15.5, 19.5]  # ... then stays at T2
    # A retransmitted INVITE gets the error again.
    assert layer.receive(invite, PEER, "UDP", 20.0) == [Send(busy, PEER, "UDP")]

    ack = make_request("ACK", branch=invite.branch)
    assert layer.receive(ack, PEER, "UDP", 20.1) == []
    assert state(tx) is TransactionState.CONFIRMED
    # Confirmed absorbs ACKs and stops G; Timer I (T4) ends it.
    assert layer.receive(ack, PEER, "UDP", 21.0) == []
    assert run_timers(layer, 100.0) == [(25.1, [Terminated(tx)])]


def test_timer_h_ends_a_transaction_whose_error_is_never_acked() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx = new_server_tx(layer, invite)
    layer.respond(tx, make_response(invite, 500), 0.0)

    fired = run_timers(layer, 100.0)

    assert [t for t, actions in fired if sends(actions)] == [
        0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert fired[-1] == (32.0, [Terminated(tx)])
    assert layer.statistics()["server_transactions"] == 0


def test_a_stateless_challenge_leaves_no_transaction_and_no_timer() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    actions = layer.receive(invite, PEER, "UDP", 0.0)
    assert kinds(actions) == ["RequestReceived", "TryingDue"]
    tx = received_by(actions)
    challenge = make_response(invite, 407, to_tag="t1")

    # The TU answers before the shell carries out TryingDue: no 100 goes out after.
    assert layer.respond_statelessly(tx, challenge, 0.0) == [Send(challenge, PEER, "UDP"), Terminated(tx)]
    assert layer.trying(tx, 0.0) == []
    assert layer.statistics() == {"client_transactions": 0, "server_transactions": 0, "timer_entries": 0}
    assert layer.next_deadline() is None

    # The retransmitted INVITE is new to the layer: the TU sees it and answers again.
    again = layer.receive(invite, PEER, "UDP", 0.5)
    assert kinds(again) == ["RequestReceived", "TryingDue"]
    layer.respond_statelessly(received_by(again), challenge, 0.5)
    # Its ACK (with the INVITE's branch, or one of its own) goes to the TU to ignore.
    ack = make_request("ACK", branch=invite.branch)
    assert kinds(layer.receive(ack, PEER, "UDP", 0.6)) == ["AckReceived"]


def test_only_an_unanswered_transaction_can_be_answered_statelessly() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx = new_server_tx(layer, invite)  # its 100 Trying went out
    with pytest.raises(SIPValueError, match="answered already"):
        layer.respond_statelessly(tx, make_response(invite, 407, to_tag="t"), 0.0)
    register = make_request("REGISTER")
    tx = new_server_tx(layer, register)
    with pytest.raises(SIPValueError, match="300-699"):
        layer.respond_statelessly(tx, make_response(register, 200, to_tag="t"), 0.0)
    assert layer.respond_statelessly(tx, make_response(register, 401, to_tag="t"), 0.0)[-1] == Terminated(tx)


def test_invite_server_over_tcp_has_no_timer_g_and_no_timer_i() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE", transport="TCP")
    tx = new_server_tx(layer, invite, "TCP")
    busy = make_response(invite, 486, to_tag="me")
    layer.respond(tx, busy, 0.0)
    assert layer.next_deadline() == 32.0  # Timer H only

    ack = make_request("ACK", branch=invite.branch, transport="TCP")
    assert layer.receive(ack, PEER, "TCP", 1.0) == [Terminated(tx)]
    assert layer.next_deadline() is None


def test_invite_server_never_retransmits_a_2xx_itself() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx = new_server_tx(layer, invite)
    ok = make_response(invite, 200, to_tag="me")

    assert layer.respond(tx, ok, 1.0) == [Send(ok, PEER, "UDP")]
    assert state(tx) is TransactionState.ACCEPTED
    assert layer.next_deadline() == 33.0  # Timer L only: nothing is retransmitted
    # The TU's own 2xx retransmissions go out; a retransmitted INVITE is absorbed.
    assert layer.respond(tx, ok, 1.5) == [Send(ok, PEER, "UDP")]
    assert layer.receive(invite, PEER, "UDP", 2.0) == []
    # An ACK for the 2xx is its own transaction: it goes to the TU.
    ack = make_request("ACK")
    assert layer.receive(ack, PEER, "UDP", 2.5) == [AckReceived(ack, PEER, "UDP")]
    # Accepted takes no error response any more.
    assert layer.respond(tx, make_response(invite, 487, to_tag="me"), 3.0) == []

    assert layer.expire(33.0) == [Terminated(tx)]


def test_invite_server_ignores_a_second_final_response() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx = new_server_tx(layer, invite)
    layer.respond(tx, make_response(invite, 486, to_tag="me"), 0.0)

    assert layer.respond(tx, make_response(invite, 200, to_tag="me"), 0.1) == []
    assert tx.last_response is not None and tx.last_response.status == 486


# -- non-INVITE server (17.2.2) -----------------------------------------------------------


def test_non_invite_server_absorbs_retransmissions_before_a_response() -> None:
    layer = TransactionLayer()
    options = make_request("OPTIONS")
    tx = new_server_tx(layer, options)
    assert state(tx) is TransactionState.TRYING

    assert layer.receive(options, PEER, "UDP", 0.5) == []


def test_non_invite_server_resends_its_last_response() -> None:
    layer = TransactionLayer()
    register = make_request("REGISTER")
    tx = new_server_tx(layer, register)
    trying = make_response(register, 100)
    ok = make_response(register, 200, to_tag="me")

    assert layer.respond(tx, trying, 0.1) == [Send(trying, PEER, "UDP")]
    assert state(tx) is TransactionState.PROCEEDING
    assert layer.receive(register, PEER, "UDP", 0.5) == [Send(trying, PEER, "UDP")]
    assert layer.respond(tx, ok, 1.0) == [Send(ok, PEER, "UDP")]
    assert state(tx) is TransactionState.COMPLETED
    assert layer.receive(register, PEER, "UDP", 1.5) == [Send(ok, PEER, "UDP")]
    # 17.2.2: further final responses from the TU are discarded.
    assert layer.respond(tx, make_response(register, 500), 2.0) == []
    # Timer J = 64*T1 on UDP.
    assert run_timers(layer, 100.0) == [(33.0, [Terminated(tx)])]
    # After J, the same request is a new transaction again.
    assert kinds(layer.receive(register, PEER, "UDP", 40.0)) == ["RequestReceived"]


def test_non_invite_server_over_tcp_terminates_with_its_final_response() -> None:
    layer = TransactionLayer()
    options = make_request("OPTIONS", transport="TCP")
    tx = new_server_tx(layer, options, "TCP")
    ok = make_response(options, 200, to_tag="me")

    assert layer.respond(tx, ok, 0.0) == [Send(ok, PEER, "TCP"), Terminated(tx)]
    assert layer.statistics() == {
        "client_transactions": 0, "server_transactions": 0, "timer_entries": 0}


# -- response destinations (18.2.2, RFC 3581) ---------------------------------------------


def response_destination_for(
    via_host: str, via_port: int | None, via_params: str, transport: str = "UDP",
    source: tuple[str, int] = ("203.0.113.5", 40000),
) -> tuple[str, int]:
    layer = TransactionLayer()
    request = make_request(
        "OPTIONS", via_host=via_host, via_port=via_port, via_params=via_params,
        transport=transport)
    actions = layer.receive(request, source, transport, 0.0)
    tx = received_by(actions)
    assert isinstance(tx, ServerTransaction)
    (send,) = sends(layer.respond(tx, make_response(request, 200), 0.0))
    assert send.transport == transport
    return send.destination


def test_udp_responses_go_to_the_sent_by_address() -> None:
    assert response_destination_for("198.51.100.7", 5070, "") == ("198.51.100.7", 5070)
    assert response_destination_for("198.51.100.7", None, "") == ("198.51.100.7", 5060)
    assert response_destination_for("[2001:db8::7]", 5070, "") == ("2001:db8::7", 5070)


def test_udp_responses_go_to_received_with_the_sent_by_port() -> None:
    assert response_destination_for("pbx.example.com", 5070, ";received=203.0.113.5") \
        == ("203.0.113.5", 5070)
    assert response_destination_for("pbx.example.com", None, ";received=203.0.113.5") \
        == ("203.0.113.5", 5060)


def test_udp_responses_follow_rport() -> None:
    assert response_destination_for(
        "10.0.0.2", 5060, ";received=203.0.113.5;rport=40000") == ("203.0.113.5", 40000)
    # rport filled in without received: the source host and the rport.
    assert response_destination_for("203.0.113.5", 5060, ";rport=40001") \
        == ("203.0.113.5", 40001)
    # A bare rport (the shell did not fill it in) does not count.
    assert response_destination_for("10.0.0.2", 5062, ";rport;received=203.0.113.5") \
        == ("203.0.113.5", 5062)


def test_reliable_responses_go_back_to_the_source() -> None:
    assert response_destination_for(
        "10.0.0.2", 5060, ";received=203.0.113.5", transport="TCP",
        source=("203.0.113.5", 50123)) == ("203.0.113.5", 50123)


# -- the layer as a whole -----------------------------------------------------------------


REGISTER_DATAGRAM = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport=5060;received=192.0.2.10\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b"From: <sip:alice@example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 REGISTER\r\n"
    b"Contact: <sip:alice@192.0.2.10>\r\n"
    b"Expires: 3600\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def test_a_retransmitted_register_datagram_gets_the_same_bytes_back() -> None:
    layer = TransactionLayer()
    first = parse_message_untrusted(REGISTER_DATAGRAM)
    assert isinstance(first, Request)
    actions = layer.receive(first, PEER, "UDP", 0.0)
    (received,) = actions
    assert isinstance(received, RequestReceived)
    (sent,) = sends(layer.respond(
        received.transaction,
        make_response(received.request, 200, to_tag="reg", headers=[("Expires", "3600")]),
        0.1))

    again = parse_message_untrusted(REGISTER_DATAGRAM)
    actions = layer.receive(again, PEER, "UDP", 0.6)

    assert actions == [sent]
    (resent,) = sends(actions)
    assert resent.message.to_bytes() == sent.message.to_bytes()
    assert resent.message.to_bytes().startswith(b"SIP/2.0 200 OK\r\n")
    assert layer.statistics()["server_transactions"] == 1


def test_a_late_driver_gets_one_retransmission_not_a_burst() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    layer.request(invite, PEER, "UDP", 0.0)

    actions = layer.expire(10.0)  # Timer A was due at 0.5: the driver overslept

    assert actions == [Send(invite, PEER, "UDP")]
    # Timer A's interval doubled, measured from the late wake-up.
    assert layer.next_deadline() == 11.0


def test_the_tu_can_hang_its_state_on_a_transaction() -> None:
    layer = TransactionLayer()
    tx, _ = layer.request(make_request("INVITE"), PEER, "UDP", 0.0)
    assert isinstance(tx, ClientTransaction) and tx.context is None
    tx.context = {"call": 42}
    assert tx.context == {"call": 42}
    assert tx.destination == PEER and tx.transport == "UDP"


def test_statistics_count_live_transactions() -> None:
    layer = TransactionLayer()
    assert layer.next_deadline() is None
    layer.request(make_request("INVITE"), PEER, "UDP", 0.0)
    layer.request(make_request("OPTIONS"), PEER, "UDP", 0.0)
    new_server_tx(layer, make_request("MESSAGE"))

    stats = layer.statistics()

    assert stats["client_transactions"] == 2
    assert stats["server_transactions"] == 1


def test_a_lingering_transaction_keeps_its_messages_as_bytes_and_gives_back_equal_ones() -> None:
    """Transactions linger up to 32 s after their final response; holding parsed
    messages that long made the cyclic collector's passes take hundreds of ms under
    load, so they keep bytes (which the collector never visits) and parse on demand."""
    layer = TransactionLayer()
    register = make_request("REGISTER")
    server = new_server_tx(layer, register)
    ok = make_response(register, 200, to_tag="me")
    layer.respond(server, ok, 0.0)
    invite = make_request("INVITE", cseq=3)
    client, _ = layer.request(invite, PEER, "UDP", 0.0)
    layer.receive(make_response(invite, 486, to_tag="callee"), PEER, "UDP", 1.0)

    for tx in (server, client):
        assert state(tx) is TransactionState.COMPLETED
        assert not any(gc.is_tracked(part) for part in (tx._request, tx._last_response, tx._ack_message))
    assert server.request == register and server.last_response == ok
    assert client.request == invite and client._ack is not None and client._ack.method == "ACK"


def test_timers_that_outlive_their_transaction_do_not_keep_it() -> None:
    """A BYE's Timer F (32 s) stays queued after its 200 ends the transaction on Timer K
    (5 s).  The queue names transactions by number, so an ended one is freed at once,
    and its entries (numbers only) drop out of the cyclic collector's view: at 500 calls/s
    the queue holds tens of thousands of them."""
    layer = TransactionLayer()
    bye = make_request("BYE")
    client, _ = layer.request(bye, PEER, "UDP", 0.0)
    layer.receive(make_response(bye, 200, to_tag="callee"), PEER, "UDP", 0.1)
    ended = layer.expire(6.0)  # as the transport's timer loop does: due entries only

    assert "Terminated" in kinds(ended) and state(client) is TransactionState.TERMINATED
    assert layer.statistics()["timer_entries"] >= 1  # Timer F's entry, due at 32 s
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in layer._heap._heap)
    assert client not in layer._live.values()
    assert layer.next_deadline() is None


# -- packed lingering transactions ------------------------------------------------------


def test_a_settled_lingering_transaction_is_packed_and_still_absorbs_retransmissions() -> None:
    """Once a transaction has lingered PACK_AFTER and only the layer holds it, it is
    kept as plain data the cyclic collector stops visiting: at 250 calls/s a process
    holds some 24,000 lingering transactions.  It still answers a retransmission with
    the same response, and its timer still ends it."""
    layer = TransactionLayer()
    bye = make_request("BYE")
    ok = make_response(bye, 200, to_tag="me")
    sent = sends(layer.respond(new_server_tx(layer, bye), ok, 0.0))
    layer.expire(0.5)
    assert [type(tx) for tx in layer._servers.values()] == [ServerTransaction]

    layer.expire(PACK_AFTER + 0.5)
    gc.collect()
    gc.collect()  # (the first pass untracks the tuples inside, the second the record)

    packed = list(layer._servers.values())
    assert [type(tx) for tx in packed] == [tuple] and not gc.is_tracked(packed[0])
    again = sends(layer.receive(bye, PEER, "UDP", 2.0))
    assert [s.message.snapshot() for s in again] == [s.message.snapshot() for s in sent]
    fired = run_timers(layer, 40.0)
    assert [t for t, _ in fired] == [32.0]  # Timer J, from the 200
    assert layer.statistics() == {"client_transactions": 0, "server_transactions": 0, "timer_entries": 0}


def test_a_lingering_transaction_its_tu_still_holds_stays_an_object() -> None:
    layer = TransactionLayer()
    bye = make_request("BYE")
    held = new_server_tx(layer, bye)
    layer.respond(held, make_response(bye, 200, to_tag="me"), 0.0)

    layer.expire(PACK_AFTER + 0.5)

    assert list(layer._servers.values()) == [held]
    assert "Terminated" in kinds(layer.expire(33.0))


def test_a_packed_invite_client_transaction_passes_up_2xx_retransmissions() -> None:
    """RFC 6026 Accepted: a 2xx retransmission goes to the TU (which ACKs it again),
    from a packed transaction as from a live one; a 486 retransmission of a packed
    Completed one gets the ACK again."""
    layer = TransactionLayer()
    answered, rejected = make_request("INVITE"), make_request("INVITE", call_id="call-2@192.0.2.10")
    ok, busy = make_response(answered, 200, to_tag="callee"), make_response(rejected, 486, to_tag="busy")
    for invite, answer in ((answered, ok), (rejected, busy)):
        layer.request(invite, PEER, "UDP", 0.0)
        layer.receive(answer, PEER, "UDP", 0.1)
    layer.expire(PACK_AFTER + 0.5)
    assert [type(tx) for tx in layer._clients.values()] == [tuple, tuple]

    passed = layer.receive(ok, PEER, "UDP", 3.0)
    acked = sends(layer.receive(busy, PEER, "UDP", 3.0))

    assert kinds(passed) == ["ResponseReceived"]
    up = passed[0]
    assert isinstance(up, ResponseReceived) and state(up.transaction) is TransactionState.ACCEPTED
    assert up.transaction.context is None and up.transaction.request.method == "INVITE"
    assert [s.message.method for s in acked if isinstance(s.message, Request)] == ["ACK"]
    run_timers(layer, 40.0)
    assert layer.statistics()["client_transactions"] == 0
