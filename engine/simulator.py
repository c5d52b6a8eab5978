"""A dialplan simulator: a sandbox Host with no network, for ``dialspell dialplan run``.

It answers every ``sys`` call the way the server would, with these stand-ins:

* ``Dial``: the dial string is expanded (``${dst}``, ``${dst:N}``, ``${exten}``,
  ``${fromname}``, ``${fromuriuser}``, ``${fromaor}``; a bare provider means
  ``${dst}@provider``), split into groups (``|``) and legs (``&``), options in
  ``[...]`` dropped, duplicates removed.  A leg whose URI matches the ``answer``
  pattern answers: the call is bridged and the script ends.  Every other leg fails
  with 480 Temporarily Unavailable, and Dial returns ``"Failed"``.
* ``Respond``: 1xx is progress; 300-699 rejects the call and ends the script; 2xx is
  refused (the script gets a ValueError), as for an INVITE.
* ``DBWrite``/``DBRead``/``DBDelete``/``DBGetKeys``: an in-memory dict shared by the
  calls of one simulation run (like the owner's store across calls) and dropped after.
* ``WebGet`` returns None (no network); ``Email``, ``Callback``, ``GoogleVoiceCall``
  and ``HttpCallback`` are written to the log and do nothing else.
* ``IsAvailable`` is False, ``IsMine``/``DoesSIPAccountExist`` are true only for the
  simulated owner, ``GetBindings`` is an empty list, ``GetCurrentCallCount`` 0.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.forking import caller_answer
from sandbox import ExecutionResult, HostReply, LimitKind, Outcome, PlainValue, SandboxPool

_SUBSTITUTION = re.compile(r"\$\{(dst|exten|fromname|fromuriuser|fromaor)(?::(\d+))?\}")
_OPTIONS = re.compile(r"\[[^\]]*\]")
MAX_DB_KEYS = 100


class CallOutcome(enum.StrEnum):
    """What the caller experiences, as ``dialspell dialplan run`` reports it."""

    ANSWERED = "answered"
    REJECTED = "rejected"
    COMPLETED = "completed"
    COMPILE_ERROR = "compile_error"
    RUNTIME_ERROR = "runtime_error"
    LIMIT_EXCEEDED = "limit_exceeded"
    CRASHED = "crashed"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallSpec:
    """The simulated call: who calls whom, and which legs answer."""

    to: str = "1234"
    from_uri: str = "sip:alice@example.com"
    from_name: str = "Alice"
    direction: str = "in"
    answer: re.Pattern[str] | None = None
    username: str = "owner"
    dialplan_name: str = "default"
    domain: str = "example.com"


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatedCall:
    """One simulated call's end: the SIP answer plus what the sandbox said."""

    outcome: CallOutcome
    status: int
    reason: str
    log: tuple[str, ...]
    error: Mapping[str, object] | None
    limit: str | None
    legs: tuple[str, ...]
    answered_by: str | None

    def as_json(self) -> dict[str, object]:
        return {
            "outcome": self.outcome.value,
            "status": self.status,
            "reason": self.reason,
            "log": list(self.log),
            "error": None if self.error is None else dict(self.error),
            "limit": self.limit,
            "legs": list(self.legs),
            "answered_by": self.answered_by,
        }


def build_request(spec: CallSpec) -> dict[str, object]:
    """The plain request snapshot the sandbox expects (docs/sandbox.md)."""
    from_user, _, from_host = spec.from_uri.removeprefix("sip:").partition("@")
    tag = "sim1"
    return {
        "Method": "INVITE",
        "Body": "",
        "URI": {"User": spec.to, "Host": spec.domain, "Scheme": "sip"},
        "Header": {
            "From": {
                "Name": spec.from_name,
                "URI": {"User": from_user, "Host": from_host, "Scheme": "sip"},
                "Tag": tag,
            },
            "To": {"URI": {"User": spec.to, "Host": spec.domain, "Scheme": "sip"}},
            "CallId": "simulated-call@dialspell",
            "CSeq": 1,
            "Contact": f"<{spec.from_uri}>",
            "UserAgent": "dialspell-simulator",
            "UnknownHeaders": [],
            "All": [
                ["From", f'"{spec.from_name}" <{spec.from_uri}>;tag={tag}'],
                ["To", f"<sip:{spec.to}@{spec.domain}>"],
                ["Call-ID", "simulated-call@dialspell"],
                ["User-Agent", "dialspell-simulator"],
            ],
        },
    }


def build_context(spec: CallSpec) -> dict[str, object]:
    return {
        "Username": spec.username,
        "DialPlanName": spec.dialplan_name,
        "Direction": "Out" if spec.direction == "out" else "In",
    }


def expand_dialstring(dialstring: str, spec: CallSpec) -> list[list[str]]:
    """The legs of a dial string: groups (tried in turn) of legs (rung together)."""
    from_user, _, _ = spec.from_uri.removeprefix("sip:").partition("@")
    values = {
        "dst": spec.to,
        "exten": spec.to,
        "fromname": spec.from_name,
        "fromuriuser": from_user,
        "fromaor": spec.from_uri.removeprefix("sip:"),
    }

    def substitute(found: re.Match[str]) -> str:
        value = values[found.group(1)]
        return value[int(found.group(2)) :] if found.group(2) else value

    text = _SUBSTITUTION.sub(substitute, dialstring)
    seen: set[str] = set()
    groups: list[list[str]] = []
    for group_text in text.split("|"):
        legs = []
        for leg in group_text.split("&"):
            uri = _OPTIONS.sub("", leg).strip()
            if not uri:
                continue
            if "@" not in uri and not uri.startswith(("sip:", "sips:")):
                uri = f"{spec.to}@{uri}"  # a bare provider name
            if uri in seen:
                continue
            seen.add(uri)
            legs.append(uri)
        if legs:
            groups.append(legs)
    return groups


@dataclass(slots=True, kw_only=True)
class SimulatedHost:
    """The host side of ``sys`` for one simulated call."""

    spec: CallSpec
    db: dict[str, str]
    lines: list[str] = field(default_factory=list)
    legs: list[str] = field(default_factory=list)
    answered_by: str | None = None
    rejected: tuple[int, str] | None = None
    last_failure: tuple[int, str] | None = None

    def log(self, line: str) -> None:
        self.lines.append(line)

    async def call(self, name: str, args: tuple[PlainValue, ...]) -> HostReply:
        handler = getattr(self, f"_{name}", None)
        if handler is None:
            return HostReply()
        reply: HostReply = handler(*args)
        return reply

    # One method per sys call that does something in the simulation.

    def _Dial(self, dialstring: str, ring: int, limit: int) -> HostReply:
        answer = self.spec.answer
        for group in expand_dialstring(dialstring, self.spec):
            for uri in group:
                self.legs.append(uri)
                if answer is not None and answer.search(uri):
                    self.answered_by = uri
                    return HostReply(end=True)
        self.last_failure = (480, "Temporarily Unavailable")
        return HostReply(
            value="Failed", failure_status=480, failure_reason="Temporarily Unavailable"
        )

    def _Respond(self, status: int, reason: str | None, headers: str | None) -> HostReply:
        if 200 <= status < 300:
            return HostReply(
                error="sys.Respond(): a 2xx answer to an INVITE is not allowed; use sys.Dial"
            )
        if status >= 300:
            self.rejected = (status, reason or _default_reason(status))
            return HostReply(end=True)
        return HostReply()

    def _DBWrite(self, key: str, value: str) -> HostReply:
        if key not in self.db and len(self.db) >= MAX_DB_KEYS:
            return HostReply(error=f"sys.DBWrite(): the store is full ({MAX_DB_KEYS} keys)")
        self.db[key] = value
        return HostReply()

    def _DBRead(self, key: str) -> HostReply:
        return HostReply(value=self.db.get(key))

    def _DBDelete(self, key: str) -> HostReply:
        self.db.pop(key, None)
        return HostReply()

    def _DBGetKeys(self) -> HostReply:
        return HostReply(value=sorted(self.db))

    def _Email(self, to: str, subject: str, body: str) -> HostReply:
        self.lines.append(f"[simulator] e-mail to {to}: {subject}")
        return HostReply()

    def _Callback(self, first: str, second: str, delay: int) -> HostReply:
        self.lines.append(f"[simulator] callback {first} -> {second} after {delay} s (not placed)")
        return HostReply()

    def _GoogleVoiceCall(self, *args: PlainValue) -> HostReply:
        self.lines.append("[simulator] GoogleVoiceCall: no callback arrives in a simulation")
        return HostReply()

    def _HttpCallback(self, *args: PlainValue) -> HostReply:
        self.lines.append("[simulator] HttpCallback: no callback arrives in a simulation")
        return HostReply()

    def _IsMine(self, username: str, domain: str | None) -> HostReply:
        return HostReply(value=username == self.spec.username)

    def _DoesSIPAccountExist(self, username: str, domain: str | None) -> HostReply:
        return HostReply(value=username == self.spec.username)

    def _GetBindings(self, username: str | None, domain: str | None) -> HostReply:
        return HostReply(value=[])

    def _IsAvailable(self, username: str | None, domain: str | None) -> HostReply:
        return HostReply(value=False)

    def _GetCurrentCallCount(self) -> HostReply:
        return HostReply(value=0)


_REASONS = {
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
    480: "Temporarily Unavailable", 486: "Busy Here", 487: "Request Terminated",
    500: "Server Internal Error", 503: "Service Unavailable", 603: "Decline",
}


def _default_reason(status: int) -> str:
    return _REASONS.get(status, "Rejected")


def call_answer(result: ExecutionResult, host: SimulatedHost) -> SimulatedCall:
    """Map the sandbox's result and what the host saw to the caller's SIP answer.

    answered: 200 OK; rejected: as responded; compile/runtime errors: 500 with the
    message (and line); limits: 500 naming the limit; crashed: 500; completed without
    an answer: the last Dial's failure, else 480 Temporarily Unavailable.
    """
    error = result.error.as_dict() if result.error is not None else None
    limit = result.limit.value if isinstance(result.limit, LimitKind) else None
    common = {
        "log": tuple(host.lines),
        "error": error,
        "limit": limit,
        "legs": tuple(host.legs),
        "answered_by": host.answered_by,
    }
    if host.answered_by is not None:
        return SimulatedCall(outcome=CallOutcome.ANSWERED, status=200, reason="OK", **common)  # type: ignore[arg-type]
    if host.rejected is not None:
        status, reason = host.rejected
        return SimulatedCall(outcome=CallOutcome.REJECTED, status=status, reason=reason, **common)  # type: ignore[arg-type]
    outcome = result.outcome
    if outcome in (Outcome.COMPILE_ERROR, Outcome.RUNTIME_ERROR) and result.error is not None:
        where = f" (line {result.error.line})" if result.error.line else ""
        reason = f"Dialplan error: {result.error.type}: {result.error.message}{where}"
        kind = CallOutcome.COMPILE_ERROR if outcome is Outcome.COMPILE_ERROR else CallOutcome.RUNTIME_ERROR
        return SimulatedCall(outcome=kind, status=500, reason=reason[:200], **common)  # type: ignore[arg-type]
    if outcome is Outcome.LIMIT_EXCEEDED:
        reason = f"Dialplan exceeded its {limit} limit"
        return SimulatedCall(outcome=CallOutcome.LIMIT_EXCEEDED, status=500, reason=reason, **common)  # type: ignore[arg-type]
    if outcome is Outcome.CRASHED:
        return SimulatedCall(
            outcome=CallOutcome.CRASHED, status=500, reason="Dialplan execution failed", **common  # type: ignore[arg-type]
        )
    status, reason = caller_answer(*(host.last_failure or (480, "Temporarily Unavailable")))
    return SimulatedCall(outcome=CallOutcome.COMPLETED, status=status, reason=reason, **common)  # type: ignore[arg-type]


async def simulate(
    pool: SandboxPool, source: str, spec: CallSpec, db: dict[str, str]
) -> SimulatedCall:
    """Run one simulated call of ``source`` through ``pool``."""
    host = SimulatedHost(spec=spec, db=db)
    result = await pool.run(
        source, request=build_request(spec), context=build_context(spec), host=host
    )
    return call_answer(result, host)
