"""The live console (``GET /api/v1/events``, Server-Sent Events) and the webcallback
URLs (``GET /webcallback/{user}``).

The console reads a bounded :class:`engine.events.Subscription`: the bus never waits for
it, so a slow or stalled browser costs at most ``console_buffer`` events of memory and
is told what it missed with a ``dropped`` event.  Full SIP messages (type ``sip``) are
sent only to a console that asks with ``?sip=1``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from engine.events import EVENT_TYPES, Event
from engine.web.context import Api, Principal
from engine.web.errors import ApiError, invalid

#: The plain-text answer of a webcallback that placed its call.
WEBCALL_STARTED = "Web call was successfully initiated."
_SELECTABLE = EVENT_TYPES - {"dropped"}


def event_types(request: Request) -> frozenset[str]:
    """The types a console asked for: ``?types=a,b`` (default all), ``sip`` only with
    ``?sip=1``; ``dropped`` markers always come."""
    wanted_text = request.query_params.get("types")
    sip = request.query_params.get("sip", "0") in ("1", "true", "yes")
    if wanted_text:
        wanted = frozenset(t.strip() for t in wanted_text.split(",") if t.strip())
        unknown = wanted - _SELECTABLE
        if unknown:
            raise invalid("types", f"unknown event types {sorted(unknown)}; known: {sorted(_SELECTABLE)}")
    else:
        wanted = _SELECTABLE
    if not sip:
        wanted = wanted - {"sip"}
    elif not wanted_text:
        wanted = wanted | {"sip"}
    return wanted | {"dropped"}


def sse_frame(event: Event) -> str:
    """One event as an SSE frame: ``event:`` the type, ``data:`` the JSON."""
    data = json.dumps({"type": event.type, "time": event.time, "owner": event.owner, **event.data},
                      ensure_ascii=False, default=str)
    return f"event: {event.type}\ndata: {data}\n\n"


async def events(api: Api, request: Request, who: Principal) -> Response:
    types = event_types(request)
    owner = api.owner_filter(who, request)
    subscription = api.services.events.subscribe(owner, types, maxlen=api.config.console_buffer)
    keepalive = api.config.console_keepalive

    async def stream() -> AsyncIterator[str]:
        with subscription:
            yield f": dialspell console for {who.customer.name}, types {','.join(sorted(types))}\n\n"
            while True:
                with trio.move_on_after(keepalive):
                    try:
                        event = await subscription.receive()
                    except trio.ClosedResourceError:
                        return
                    yield sse_frame(event)
                    continue
                yield ": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _answer(request: Request, ok: bool, message: str, status: int) -> Response:
    accept = request.headers.get("accept", "")
    if "application/json" in accept:
        return JSONResponse({"ok": ok, "message": message}, status_code=status)
    return PlainTextResponse(message, status_code=status)


async def webcallback(api: Api, request: Request) -> Response:
    """``GET /webcallback/{user}?number=N&key=K``: run the user's ``webcallback``
    dialplan as an Out call to N.  200 when the call was initiated; 403 for a wrong key
    (or an unknown user: the two look alike), 400 without a number, 429 past the rate
    limit, 422 when the dialplan did not initiate a call."""
    name = str(request.path_params["user"])
    number = request.query_params.get("number", "").strip()
    key = request.query_params.get("key", "")
    try:
        customer = api.repo.customer_by_name(name)
        expected = api.repo.webcallback_key(customer.id) if customer is not None else None
        if customer is None or expected is None or not hmac.compare_digest(
                expected.encode(), key.encode("utf-8", "replace")):
            raise ApiError(403, "bad_key", "Web call was not initiated: the key is wrong.")
        now = api.now()
        wait = api.webcallbacks.retry_after(str(customer.id), now)
        if wait > 0:
            raise ApiError(429, "rate_limited", "Web call was not initiated: too many web calls; "
                           f"try again in {max(1, int(wait + 0.999))} s.",
                           headers={"Retry-After": str(max(1, int(wait + 0.999)))})
        if not number or len(number) > 64 or any(c.isspace() or c in "@<>;\"" for c in number):
            raise ApiError(400, "bad_number", "Web call was not initiated: give the number to call "
                           "as ?number=...")
        row = api.repo.account_by_user(customer.name, customer.id)
        account = api.services.store.directory(force=True).accounts_by_id.get(row["id"]) if row else None
        if account is None or account.disabled:
            raise ApiError(422, "no_account", "Web call was not initiated: the user has no active SIP "
                           "account of that name.")
        api.webcallbacks.hit(str(customer.id), now)
        ok, message = await api.services.webcallback(customer, account, number)
    except ApiError as exc:
        response = _answer(request, False, exc.message, exc.status)
        response.headers.update(exc.headers)
        return response
    return _answer(request, ok, message, 200 if ok else 422)
