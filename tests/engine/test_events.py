from __future__ import annotations

import pytest
import trio
import trio.testing

from engine.events import Event, EventBus, Subscription


def ev(owner: int | None, n: int, type_: str = "registrar") -> Event:
    return Event(owner=owner, type=type_, data={"n": n}, time=float(n))


def queued(sub: Subscription) -> Event:
    """The next event ``sub`` holds (there must be one)."""
    event = sub.receive_nowait()
    assert event is not None
    return event


async def test_subscriber_receives_its_owners_events_in_order() -> None:
    bus = EventBus()
    with bus.subscribe(7) as sub:
        bus.publish(ev(7, 1))
        bus.publish(ev(8, 2))
        bus.publish(ev(7, 3))
        with trio.fail_after(1):
            assert (await sub.receive()).data == {"n": 1}
            assert (await sub.receive()).data == {"n": 3}
        assert sub.receive_nowait() is None


async def test_admin_subscription_sees_every_owner_and_system_events() -> None:
    bus = EventBus()
    with bus.subscribe(None) as admin, bus.subscribe(1) as customer:
        bus.publish(ev(1, 1))
        bus.publish(ev(2, 2))
        bus.publish(ev(None, 3, "sip"))
        assert [queued(admin).data["n"] for _ in range(3)] == [1, 2, 3]
        assert queued(customer).data == {"n": 1}
        assert customer.receive_nowait() is None


async def test_type_filter() -> None:
    bus = EventBus()
    with bus.subscribe(1, types=["auth"]) as sub:
        bus.publish(ev(1, 1, "registrar"))
        bus.publish(ev(1, 2, "auth"))
        got = sub.receive_nowait()
        assert got is not None and got.type == "auth"
        assert sub.receive_nowait() is None


async def test_slow_reader_loses_oldest_and_gets_one_marker_with_the_count() -> None:
    bus = EventBus()
    with bus.subscribe(1, maxlen=3) as sub:
        for n in range(10):
            bus.publish(ev(1, n))  # never blocks, however far behind the reader is
        marker = await sub.receive()
        assert marker.type == "dropped" and marker.data == {"count": 7}
        assert [(await sub.receive()).data["n"] for _ in range(3)] == [7, 8, 9]
        assert sub.receive_nowait() is None


async def test_waiting_reader_wakes_on_publish_and_iteration_ends_on_close() -> None:
    bus = EventBus()
    sub = bus.subscribe(5)
    seen: list[int] = []

    async def reader() -> None:
        async for event in sub:
            seen.append(event.data["n"])

    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            bus.publish(ev(5, 1))
            bus.publish(ev(5, 2))
            await trio.testing.wait_all_tasks_blocked()
            sub.close()
    assert seen == [1, 2]
    assert bus.statistics() == {"subscriptions": 0}
    assert not bus.has_subscribers(5)


def test_unknown_event_type_is_refused() -> None:
    with pytest.raises(ValueError):
        Event(owner=None, type="gossip", data={}, time=0.0)
    with pytest.raises(ValueError):
        EventBus().subscribe(1, types=["gossip"])
