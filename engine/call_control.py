"""The call engine as the web side sees it: calls in progress, hanging up, and web
callbacks (a customer's ``webcallback`` dialplan run from a URL, with no SIP caller).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

import trio

from engine.calls import Call
from engine.storage import Account, Customer
from sip.headers import Headers
from sip.message import Request, mark_of, new_call_id, new_tag
from sip.uri import URI

if TYPE_CHECKING:
    from engine.calls import CallEngine
    from engine.dialplan_host import DialplanRunner

log = logging.getLogger(__name__)

WEBCALL_STARTED = "Web call was successfully initiated."
# How long a web callback request waits to see whether its dialplan failed at once
# (a compile error, an exception in its first lines) before answering "initiated".
EARLY_FAILURE_WINDOW = 1.0
WEB_SOURCE = ("0.0.0.0", 0)


class WebCallerLeg:
    """Stands where the caller's INVITE stands for a web callback: there is nobody to
    answer or to send progress to.  It records the outcome for the HTTP answer."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.source = WEB_SOURCE
        self.transport = "WEB"
        self.final_status: int | None = None
        self.final_reason: str | None = None
        self.cancelled = trio.Event()
        self.progress_sent = False

    @property
    def answered(self) -> bool:
        return False

    def progress(self, status: int, reason: str | None = None, **_: object) -> None:
        self.progress_sent = True

    def reject(self, status: int, reason: str | None = None, **_: object) -> None:
        if self.final_status is None:
            self.final_status = status
            self.final_reason = reason


def web_request(account: Account, number: str, domain: str) -> Request:
    """The request a web callback's dialplan sees: an INVITE from the account to the
    number (``req.URI.User == number``)."""
    host = domain if account.domain == "local" else account.domain
    headers = Headers(
        [
            ("Via", f"SIP/2.0/WEB {host};branch=z9hG4bK{new_tag()}"),
            ("From", f"<sip:{account.user}@{host}>;tag={new_tag()}"),
            ("To", f"<sip:{number}@{host}>"),
            ("Call-ID", new_call_id(host)),
            ("CSeq", "1 INVITE"),
            ("Max-Forwards", "70"),
            ("User-Agent", "dialspell-webcallback"),
        ]
    )
    return Request(method="INVITE", uri=URI.parse(f"sip:{number}@{host}"), headers=headers)


class OtherProcesses(Protocol):
    """The primary's way to ask the other SIP processes (engine/processes.py)."""

    async def ask(self, index: int, question: str, *args: Any) -> Any:
        """Process ``index``'s answer (None if it does not answer in time)."""
        ...

    async def ask_each(self, question: str, *args: Any) -> list[Any]:
        """The answers of every other process that answers in time."""
        ...


class CallControl:
    """Implements the web side's ``CallControl`` and ``WebcallbackRunner``."""

    def __init__(self, *, engine: CallEngine, runner: DialplanRunner,
                 others: OtherProcesses | None = None) -> None:
        self.engine = engine
        self.runner = runner
        #: the other SIP processes of a multi-process server (their calls are theirs)
        self.others = others

    async def active_calls(self, customer_id: int | None) -> list[dict[str, Any]]:
        calls = self.local_calls(customer_id)
        if self.others is not None:
            for theirs in await self.others.ask_each("calls", customer_id):
                calls.extend(theirs)
        return calls

    async def hang_up(self, call_id: str, customer_id: int | None) -> bool:
        owner = mark_of(call_id)  # bridge ids carry their process's mark
        if self.others is not None and owner:
            return bool(await self.others.ask(owner, "hang_up", call_id, customer_id))
        return self.local_hang_up(call_id, customer_id)

    async def count_everywhere(self, customer_id: int) -> int | None:
        """A customer's established calls in every process (the primary's count)."""
        counted = self.engine.current_call_count(customer_id)
        if self.others is not None:
            counted += sum(await self.others.ask_each("call_count", customer_id))
        return counted

    async def answer(self, question: str, *args: Any) -> Any:
        """What this process says when another asks about its calls: the primary asks
        the others for theirs; the others ask the primary for the count of all."""
        if question == "calls":
            return self.local_calls(*args)
        if question == "hang_up":
            return self.local_hang_up(*args)
        if question == "call_count":
            return self.engine.current_call_count(*args)
        if question == "call_count_everywhere":
            return await self.count_everywhere(*args)
        raise ValueError(f"no such question: {question}")

    def local_calls(self, customer_id: int | None) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = []
        now = time.time()
        for bridge_id, bridge in list(self.engine.bridges.items()):
            call = bridge.call
            if not isinstance(call, Call) or call.account is None:
                continue
            if customer_id is not None and call.account.customer_id != customer_id:
                continue
            request = call.leg.request
            calls.append(
                {
                    "id": bridge_id,
                    "customer_id": call.account.customer_id,
                    "account": f"{call.account.user}@{call.account.domain}",
                    "direction": call.direction.lower(),
                    "from": str(request.from_.uri),
                    "to": str(request.uri),
                    "call_id": request.call_id,
                    "started": call.started,
                    "duration": round(trio.current_time() - bridge.answered_at, 1),
                    "listed_at": now,
                }
            )
        return calls

    def local_hang_up(self, call_id: str, customer_id: int | None) -> bool:
        bridge = self.engine.bridges.get(call_id)
        if bridge is None:
            return False
        call = bridge.call
        if customer_id is not None and (
            not isinstance(call, Call) or call.account is None or call.account.customer_id != customer_id
        ):
            return False
        bridge.hang_up(by="operator", reason="Hung up from the console")
        return True

    async def webcallback(self, customer: Customer, account: Account, number: str) -> tuple[bool, str]:
        """Run the account's ``webcallback`` dialplan as an Out call to ``number``."""
        nursery = self.engine.nursery
        if nursery is None:
            return False, "The server is not running"
        leg = WebCallerLeg(web_request(account, number, self.engine.config.default_domain))
        call = Call(leg=leg, account=account, direction="Out")  # type: ignore[arg-type]
        finished = trio.Event()

        async def run() -> None:
            try:
                with call.scope:
                    await self.runner.run_named(call, "webcallback")
            except Exception:
                log.exception("web callback for %s failed", account.user)
                leg.reject(500, "Server Internal Error")
            finally:
                finished.set()

        nursery.start_soon(run)
        with trio.move_on_after(EARLY_FAILURE_WINDOW):
            await finished.wait()
        status = leg.final_status
        # A dialplan that simply ran to its end "fails" the missing caller with 480
        # Temporarily Unavailable; anything else ended the web call early.
        ran_out = status == 480 and leg.final_reason == "Temporarily Unavailable"
        if status is not None and status >= 400 and not ran_out:
            return False, f"{status} {leg.final_reason or ''}".strip()
        return True, WEBCALL_STARTED
