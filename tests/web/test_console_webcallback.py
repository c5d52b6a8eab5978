"""The live console (SSE) and webcallback URLs."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import trio

from engine.events import Event
from tests.web.conftest import WebServer

WEBCALLBACK = 'sys.Log("calling %s" % req.URI.User)\nsys.Dial("%s@local" % req.URI.User)\n'


class EventStream:
    """A minimal SSE client on a raw socket (httpx's streaming generators cannot be left
    early without warnings under trio)."""

    _FRAME = re.compile(r"^event: (\w+)\r?\ndata: (.*)$", re.MULTILINE)

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = ""
        self.status = 0
        self.headers = ""

    @classmethod
    async def open(cls, url: str, token: str, query: str = "") -> EventStream:
        """The event stream of the web server at ``url`` (``http://host:port``)."""
        host, _, port = url.removeprefix("http://").partition(":")
        sse = cls(await trio.open_tcp_stream(host, int(port)))
        await sse.stream.send_all(
            f"GET /api/v1/events{query} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode())
        while "\r\n\r\n" not in sse.buffer:
            await sse._fill()
        head, _, sse.buffer = sse.buffer.partition("\r\n\r\n")
        sse.status = int(head.split()[1])
        sse.headers = head.lower()
        if sse.status == 200:
            while ": dialspell console" not in sse.buffer:  # sent once subscribed
                await sse._fill()
        return sse

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        assert data, "the server closed the stream"
        self.buffer += data.decode()

    async def events(self, count: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < count:
            found = self._FRAME.search(self.buffer)
            if found is None:
                await self._fill()
                continue
            self.buffer = self.buffer[found.end():]
            data = json.loads(found.group(2))
            assert data["type"] == found.group(1)
            out.append(data)
        return out

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _publish(web: WebServer, owner: int, events: list[Event]) -> None:
    assert web.events.has_subscribers(owner)
    for event in events:
        web.events.publish(event)


async def _unsubscribed(web: WebServer, owner: int) -> None:
    """Wait (10 s at most) until the server has closed the owner's subscriptions."""
    for _ in range(1000):
        if not web.events.has_subscribers(owner):
            return
        await trio.sleep(0.01)
    raise AssertionError("the console's subscription outlived its connection")


async def test_console_streams_only_the_owners_events_of_the_chosen_types(web: WebServer) -> None:
    alice = web.add_customer("alice")
    bob = web.add_customer("bob")
    now = time.time()
    published = [
        Event(owner=bob.id, type="dialplan", time=now, data={"line": "bob's secret"}),
        Event(owner=alice.id, type="registrar", time=now, data={"kind": "registered"}),
        Event(owner=alice.id, type="sip", time=now, data={"raw": "INVITE sip:x SIP/2.0"}),
        Event(owner=alice.id, type="call", time=now, data={"state": "ringing"}),
        Event(owner=alice.id, type="dialplan", time=now, data={"line": "hello"}),
    ]
    sse = await EventStream.open(web.url, await web.login("alice"), "?types=dialplan,registrar")
    assert sse.status == 200 and "content-type: text/event-stream" in sse.headers
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_publish, web, alice.id, published)
        with trio.fail_after(10):
            seen = await sse.events(2)
    await sse.aclose()
    assert [(e["type"], e.get("kind"), e.get("line")) for e in seen] == [
        ("registrar", "registered", None), ("dialplan", None, "hello")]
    await _unsubscribed(web, alice.id)  # the client's disconnect ends the stream and its subscription


async def test_full_sip_messages_only_with_sip_1_and_unknown_types_are_refused(web: WebServer) -> None:
    alice = web.add_customer("alice")
    now = time.time()
    token = await web.login("alice")
    async with web.client(token) as client:
        bad = await client.get("/api/v1/events", params={"types": "dialplan,bogus"})
        assert bad.status_code == 422 and "bogus" in bad.json()["error"]["message"]
    for query, expected in (("", ["call"]), ("?sip=1", ["sip", "call"])):
        sse = await EventStream.open(web.url, token, query)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_publish, web, alice.id, [
                Event(owner=alice.id, type="sip", time=now, data={"raw": "INVITE"}),
                Event(owner=alice.id, type="call", time=now, data={}),
            ])
            with trio.fail_after(10):
                seen = await sse.events(len(expected))
        await sse.aclose()
        assert [e["type"] for e in seen] == expected
        await _unsubscribed(web, alice.id)


async def test_a_slow_reader_costs_nothing_but_is_told_what_it_missed(web: WebServer) -> None:
    alice = web.add_customer("alice")
    sse = await EventStream.open(web.url, await web.login("alice"))
    started = time.perf_counter()
    for n in range(5000):  # far more than the buffer, with nobody reading
        web.events.publish(Event(owner=alice.id, type="call", time=0.0, data={"n": n}))
    assert time.perf_counter() - started < 1.0
    with trio.fail_after(10):
        events = await sse.events(2)
    await sse.aclose()
    assert events[0]["type"] == "dropped" and events[0]["count"] >= 4000
    assert events[1]["type"] == "call" and events[1]["n"] >= 4000


async def test_webcallback_runs_the_webcallback_dialplan_as_an_out_call(web: WebServer) -> None:
    alice = web.add_customer("alice")
    token = await web.login("alice")
    async with web.client(token) as client:
        await client.post("/api/v1/sip-accounts", json={"user": "alice", "password": "secret1"})
        assert (await client.put("/api/v1/dialplans/webcallback", json={"source": WEBCALLBACK})).status_code == 201
        key = (await client.get("/api/v1/customer/webcallback-key")).json()["key"]
        console = web.events.subscribe(alice.id, ["dialplan"])
        ok = await client.get("/webcallback/alice", params={"number": "5551234", "key": key})
        assert ok.status_code == 200 and ok.text == "Web call was successfully initiated."
        assert ok.headers["content-type"].startswith("text/plain")
        logged = console.receive_nowait()
        assert logged is not None and logged.data["line"] == "calling 5551234"
        as_json = await client.get("/webcallback/alice", params={"number": "1", "key": key},
                                   headers={"Accept": "application/json"})
        assert as_json.json() == {"ok": True, "message": "Web call was successfully initiated."}
        wrong = await client.get("/webcallback/alice", params={"number": "1", "key": "guess"})
        assert wrong.status_code == 403 and "key" in wrong.text
        nobody = await client.get("/webcallback/nobody", params={"number": "1", "key": key})
        assert nobody.status_code == 403 and nobody.text == wrong.text
        no_number = await client.get("/webcallback/alice", params={"key": key})
        assert no_number.status_code == 400
        regenerated = (await client.post("/api/v1/customer/webcallback-key")).json()["key"]
        assert regenerated != key
        old = await client.get("/webcallback/alice", params={"number": "1", "key": key})
        assert old.status_code == 403
        # A dialplan that fails says why.
        await client.put("/api/v1/dialplans/webcallback", json={"source": "x = 1 / 0\n"})
        failed = await client.get("/webcallback/alice", params={"number": "1", "key": regenerated})
        assert failed.status_code == 422 and "ZeroDivisionError" in failed.text


async def test_webcallbacks_are_rate_limited_per_user(web: WebServer) -> None:
    web.add_customer("alice")
    async with web.client(await web.login("alice")) as client:
        await client.post("/api/v1/sip-accounts", json={"user": "alice", "password": "secret1"})
        await client.put("/api/v1/dialplans/webcallback", json={"source": "x = 1\n"})
        key = (await client.get("/api/v1/customer/webcallback-key")).json()["key"]
        for _ in range(10):
            assert (await client.get("/webcallback/alice", params={"number": "1", "key": key})).status_code == 200
        limited = await client.get("/webcallback/alice", params={"number": "1", "key": key},
                                   headers={"Accept": "application/json"})
        assert limited.status_code == 429 and limited.json()["ok"] is False
        assert int(limited.headers["retry-after"]) > 0
        web.clock.offset = 61
        assert (await client.get("/webcallback/alice", params={"number": "1", "key": key})).status_code == 200
