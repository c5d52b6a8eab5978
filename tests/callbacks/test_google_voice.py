"""sys.GoogleVoiceCall end to end: a dialplan asks a fake callback service (a real HTTP
server) to ring back; the service's SIP call to one of the owner's accounts is bridged
to the waiting caller.  Without a callback the dialplan's fallback answers the caller."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.callbacks.ua import UA, Dialog, provision, running_server, sdp, user_agents
from tests.calls.helpers import wait_rows
from tests.conftest import free_port

DIALPLAN = (
    'sys.GoogleVoiceCall("me@example.com", "s3cret", "gvline", req.URI.User, "^1555", 2, %d)\n'
    'sys.Respond(486, "No callback came")\n'
)


@dataclass
class FakeVoiceService:
    """What the fake service saw; ``connected`` fires on each connect request."""

    url: str = ""
    requests: list[tuple[str, dict[str, str], str | None]] = field(default_factory=list)
    connected: trio.Event = field(default_factory=trio.Event)


@asynccontextmanager
async def fake_voice_service() -> AsyncIterator[FakeVoiceService]:
    state = FakeVoiceService()

    async def record(request: Request) -> tuple[dict[str, str], str | None]:
        # Parsed by hand: the form body is plain application/x-www-form-urlencoded.
        form = dict(parse_qsl((await request.body()).decode()))
        auth = request.headers.get("authorization")
        state.requests.append((request.url.path, form, auth))
        return form, auth

    async def login(request: Request) -> Response:
        form, _ = await record(request)
        if form.get("password") != "s3cret":
            return Response(status_code=403)
        return JSONResponse({"token": "tok-1"})

    async def connect(request: Request) -> Response:
        _, auth = await record(request)
        if auth != "Bearer tok-1":
            return Response(status_code=401)
        state.connected.set()
        return JSONResponse({"id": "req-7"})

    async def cancel(request: Request) -> Response:
        await record(request)
        return JSONResponse({})

    app = Starlette(routes=[Route("/login", login, methods=["POST"]), Route("/connect", connect, methods=["POST"]),
                            Route("/cancel", cancel, methods=["POST"])])
    config = Config()
    port = free_port(socket.SOCK_STREAM)
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    state.url = f"http://127.0.0.1:{port}"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, app, config)
        yield state
        nursery.cancel_scope.cancel()


async def call_back(server_port: int, pstn: UA, account: str) -> tuple[int, bytes, Dialog]:
    """The service's call to the callback number, from a foreign network."""
    invite, final = await pstn.invite_uri(f"sip:{account}@127.0.0.1:{server_port}", sdp(42000),
                                          from_user="15550001", from_domain="gv.example")
    return final.status, final.body, pstn.dialog_as_uac(invite, final, pstn.server)


async def test_callback_is_bridged_to_the_waiting_caller(tmp_path: Path) -> None:
    async with fake_voice_service() as service, \
            running_server(tmp_path, google_voice_url=service.url) as server:
        provision(server, "acme", {"alice": (None, "out"), "gvline": (None, None)}, {"out": DIALPLAN % 20})
        assert server.sip_address is not None
        port = server.sip_address[1]
        async with user_agents(server, "alice") as (alice,), user_agents(server, "pstn", register=False) as (pstn,):
            results: list[tuple[int, bytes]] = []

            async def caller() -> None:
                _, final = await alice.invite_uri(f"sip:5551234@127.0.0.1:{port}", sdp(40000))
                results.append((final.status, final.body))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(caller)
                with trio.fail_after(10):
                    await service.connected.wait()
                status, body, dialog = await call_back(port, pstn, "gvline")
            assert status == 200 and b"m=audio 40000" in body  # the callback hears the caller
            assert results and results[0][0] == 200 and b"m=audio 42000" in results[0][1]
            paths = [p for p, _, _ in service.requests]
            assert paths == ["/login", "/connect"]
            assert service.requests[1][1] == {"forwardingNumber": "gvline", "destinationNumber": "5551234", "phoneType": "2"}
            # Both sides' ACKs were taken: neither 200 is retransmitted any longer.
            with trio.fail_after(3):
                while len(server.calls.unacked_answers):  # noqa: ASYNC110 - the retransmitter's heap
                    await trio.sleep(0.05)
            # BYE from the callback's side reaches the caller.
            bye = await dialog.bye()
            assert bye.status == 200
            request, source = await alice.request("BYE")
            await alice.ok(request, source)
            # Both calls are on record, linked by the bridge.
            legs = await wait_rows(server, "SELECT leg, direction, from_uri, status, bridge_id, answered_at, "
                                   "hangup_reason FROM cdrs ORDER BY leg", 2)
            assert [r[:2] for r in legs] == [("callback", "in"), ("caller", "out")]
            assert "15550001" in legs[0][2] and "alice" in legs[1][2]
            assert {r[3] for r in legs} == {200} and legs[0][4] == legs[1][4] is not None
            assert all(r[5] for r in legs) and {r[6] for r in legs} == {"BYE from callee"}
            assert server.runner.records._open == {}


async def test_no_callback_means_the_fallback_and_a_cancel(tmp_path: Path) -> None:
    async with fake_voice_service() as service, \
            running_server(tmp_path, google_voice_url=service.url) as server:
        provision(server, "acme", {"alice": (None, "out"), "gvline": (None, None)}, {"out": DIALPLAN % 3})
        assert server.sip_address is not None
        async with user_agents(server, "alice") as (alice,):
            with trio.fail_after(15):
                _, final = await alice.invite_uri(f"sip:5551234@127.0.0.1:{server.sip_address[1]}", sdp(40000))
            assert (final.status, final.reason) == (486, "No callback came")
            assert [p for p, _, _ in service.requests] == ["/login", "/connect", "/cancel"]
            assert service.requests[2][1] == {"id": "req-7"}


async def test_another_owners_call_is_not_taken(tmp_path: Path) -> None:
    async with fake_voice_service() as service, \
            running_server(tmp_path, google_voice_url=service.url) as server:
        provision(server, "acme", {"alice": (None, "out"), "gvline": (None, None)}, {"out": DIALPLAN % 20})
        provision(server, "globex", {"otherline": (None, None)})
        assert server.sip_address is not None
        port = server.sip_address[1]
        async with user_agents(server, "alice") as (alice,), user_agents(server, "pstn", register=False) as (pstn,):
            results: list[int] = []

            async def caller() -> None:
                _, final = await alice.invite_uri(f"sip:5551234@127.0.0.1:{port}", sdp(40000))
                results.append(final.status)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(caller)
                with trio.fail_after(10):
                    await service.connected.wait()
                # A matching From, but to globex's account: globex's normal In processing
                # answers it (no bindings: 480); acme's caller keeps waiting.
                status, _, _ = await call_back(port, pstn, "otherline")
                assert status == 480
                assert results == []
                status, body, _ = await call_back(port, pstn, "gvline")
                assert status == 200 and b"m=audio 40000" in body
            assert results == [200]
