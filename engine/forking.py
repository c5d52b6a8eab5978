"""``sys.Dial``: fork a call to the legs of a dial string and bridge the first answer.

Groups separated by ``|`` are tried in turn; the legs of a group (``&``) ring in
parallel, each after its ``dt=`` delay (a delayed leg starts at once when every running
leg has failed).  The first 2xx wins: the other legs are cancelled (9.1), a late 2xx is
acknowledged and hung up, and the caller is answered with the winner's SDP.  1xx
responses are relayed to the caller (183 with SDP gives early media).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from engine.bridge import fix_sdp
from engine.legs import ANSWERED_ELSEWHERE, CANCELLED_REASON, OutboundLeg

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedLeg:
    """A leg ready to ring: how to build and send it (made by the call engine)."""

    description: str  # for traces: the URI dialled
    start: Callable[[], Awaitable[OutboundLeg | None]]  # builds and sends the INVITE (None: failed)
    delay: float = 0.0
    duration_limit: float | None = None


@dataclass(slots=True)
class DialOutcome:
    """How one Dial ended."""

    result: str  # "Answered", "NoAnswer", "Failed", "TimedOut", "ClientCancelled", "Error"
    status: int = 0
    reason: str = ""
    winner: OutboundLeg | None = None
    winner_plan: PlannedLeg | None = None
    # A 3xx outcome: the Contact values of every 3xx the legs got, where to try instead.
    contacts: tuple[str, ...] = ()


class Forker:
    """Runs one Dial for one caller.  ``progress`` is called with each provisional
    response worth relaying; ``trace`` with human-readable fork progress lines."""

    def __init__(
        self,
        *,
        progress: Callable[[OutboundLeg, int, str, bytes], None],
        trace: Callable[[str], None],
    ) -> None:
        self.progress = progress
        self.trace = trace
        self.legs: list[OutboundLeg] = []
        self.winner: OutboundLeg | None = None

    async def dial(self, groups: list[list[PlannedLeg]], ring_timeout: float) -> DialOutcome:
        """Try each group in turn until a leg answers or all fail; ``ring_timeout``
        bounds the whole Dial (RFC 3261 leaves ringing time to the UAC)."""
        last = DialOutcome(result="Failed", status=480, reason="Temporarily Unavailable")
        deadline = trio.current_time() + ring_timeout
        try:
            for index, group in enumerate(groups):
                remaining = deadline - trio.current_time()
                if remaining <= 0:
                    return DialOutcome(result="TimedOut", status=408, reason="Ring time limit reached")
                self.trace(f"Commencing Dial group {index + 1} of {len(groups)} with {len(group)} leg(s).")
                outcome = await self._ring_group(group, remaining)
                if outcome.result == "Answered":
                    return outcome
                if outcome.result == "TimedOut":
                    return outcome
                last = outcome
            return last
        except BaseException:
            # Ended (by the caller's CANCEL, the execution's end) before the outcome was
            # handed over: a winner chosen meanwhile will not be bridged either.
            if self.winner is not None:
                self.winner.cancel()
            raise
        finally:
            # Whatever ended the Dial (an answer, the caller's CANCEL, the execution's
            # end), no leg but the winner may go on ringing.
            for leg in self.legs:
                if leg is not self.winner:
                    leg.cancel()

    async def _ring_group(self, group: list[PlannedLeg], ring_seconds: float) -> DialOutcome:
        failures: list[OutboundLeg] = []
        result: list[DialOutcome] = []
        running: set[OutboundLeg] = set()
        pending_delayed = len([p for p in group if p.delay > 0])
        skip_delay = trio.Event()  # set when every running leg has failed

        async def run_leg(plan: PlannedLeg, group_scope: trio.CancelScope) -> None:
            nonlocal pending_delayed
            if plan.delay > 0:
                with trio.move_on_after(plan.delay):
                    await skip_delay.wait()
                pending_delayed -= 1
            if result:
                return
            leg = await plan.start()
            if leg is None:
                self.trace(f"Dial leg to {plan.description} failed to start.")
                check_all_failed(group_scope)
                return
            self.legs.append(leg)
            running.add(leg)
            self.trace(f"Calling {plan.description}.")
            final = await leg.wait_final()
            running.discard(leg)
            assert final is not None
            if 200 <= final.status < 300:
                if result:
                    # A late 2xx: acknowledged by the leg already; hang it up.
                    leg.hangup(CANCELLED_REASON, note=ANSWERED_ELSEWHERE)
                    return
                self.trace(f"Dial leg to {plan.description} answered.")
                self.winner = leg
                result.append(DialOutcome(result="Answered", status=final.status, reason=final.reason, winner=leg, winner_plan=plan))
                group_scope.cancel()
                return
            self.trace(f"Dial leg to {plan.description} failed with {final.status} {final.reason}.")
            failures.append(leg)
            check_all_failed(group_scope)

        def check_all_failed(group_scope: trio.CancelScope) -> None:
            if not running:
                if pending_delayed:
                    skip_delay.set()  # dt= legs start at once when every running leg failed
                elif not result:
                    group_scope.cancel()

        with trio.move_on_after(ring_seconds) as timer:
            if len(group) == 1:
                # One leg (the common Dial): rung in this task, no nursery and task for it,
                # nor a scope: the leg cancels its group only on its way out, with no
                # checkpoint left for the cancellation to land on.
                await run_leg(group[0], timer)
            else:
                async with trio.open_nursery() as nursery:
                    for plan in group:
                        nursery.start_soon(run_leg, plan, nursery.cancel_scope)
        if result:
            return result[0]
        for leg in self.legs:
            if leg.final is None:
                leg.cancel()
        if timer.cancelled_caught:
            self.trace("Dial timed out.")
            return DialOutcome(result="TimedOut", status=408, reason="Ring time limit reached")
        if not failures:
            return DialOutcome(result="Failed", status=480, reason="Temporarily Unavailable")
        # The most telling failure (RFC 3261 16.7 step 6 ranks 6xx, then the lowest class).
        best = min(failures, key=lambda leg: _rank(leg.final.status if leg.final else 500))
        assert best.final is not None
        status = best.final.status
        contacts: tuple[str, ...] = ()
        if 300 <= status < 400:
            # 16.7 step 6: a redirection passed on lists the Contacts of all the 3xx.
            contacts = tuple(dict.fromkeys(
                line for leg in failures if leg.final is not None and 300 <= leg.final.status < 400
                for line in leg.final.headers.lines("Contact")
            ))
        return DialOutcome(
            result="NoAnswer" if status in (408, 480, 486, 487, 600, 603) else "Failed",
            status=status,
            reason=best.final.reason,
            contacts=contacts,
        )


def _rank(status: int) -> float:
    if 600 <= status < 700:
        return 0
    if status == 503:
        return 5  # 16.7: 503 is converted to 500 and ranked low
    return status / 100 if status < 600 else math.inf


def caller_answer(status: int, reason: str) -> tuple[int, str]:
    """What the caller hears for a Dial that failed with ``status``: the status as is,
    but a 503.  A 503 tells its receiver that *this* server is unavailable and to try
    another one (RFC 3261 21.5.4); one from a leg says only that the next hop was, so
    it goes to the caller as 500 (16.7 step 6).  ``sys.LastFailureStatus`` keeps 503,
    and a script that means 503 can say so with ``sys.Respond``."""
    if status == 503:
        return 500, f"Next hop unavailable: {reason}"[:200]
    return status, reason


def relay_sdp(body: bytes, leg: OutboundLeg) -> bytes:
    """The NAT fix for an answer or early media from a leg."""
    return fix_sdp(body, leg.destination)
