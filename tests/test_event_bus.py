"""The node's event bus: order, replay, gaps, cancel-safety, close."""

from __future__ import annotations

import pytest
import trio

from gfl.node.events import EventBus


@pytest.mark.trio
async def test_subscribers_get_new_events_in_order():
    bus = EventBus()
    bus.publish("old", {})
    sub = bus.subscription()
    got = []

    async def reader():
        while (event := await sub.get()) is not None:
            got.append((event.seq, event.type, event.data))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.sleep(0)
        bus.publish("a", {"x": 1})
        bus.publish("b", {"x": 2})
        await trio.sleep(0.01)
        bus.close()
    assert got == [(2, "a", {"x": 1}), (3, "b", {"x": 2})]


@pytest.mark.trio
async def test_replay_since_and_gap_when_the_buffer_overflowed():
    bus = EventBus(capacity=3)
    for i in range(5):
        bus.publish("e", {"i": i})
    bus.close()
    assert [e.seq for e in [e async for e in bus.subscribe(since=3)]] == [4, 5]
    events = [e async for e in bus.subscribe(since=0)]
    assert events[0].type == "gap" and events[0].seq == 0
    assert events[0].data == {"missed": 2, "after": 0}
    assert [e.seq for e in events[1:]] == [3, 4, 5]
    # a cursor from an earlier run of the node (above the newest seq) means "from now on"
    assert [e async for e in bus.subscribe(since=99)] == []


@pytest.mark.trio
async def test_a_timeout_while_waiting_loses_nothing():
    bus = EventBus()
    sub = bus.subscription()
    with trio.move_on_after(0.01):
        await sub.get()
    bus.publish("late", {})
    with trio.fail_after(1):
        event = await sub.get()
    assert event.type == "late" and event.seq == 1


@pytest.mark.trio
async def test_publish_from_a_worker_thread():
    bus = EventBus()
    bus.publish("first", {})
    sub = bus.subscription()
    await trio.to_thread.run_sync(bus.publish_threadsafe, "from.thread", {"ok": True})
    with trio.fail_after(1):
        event = await sub.get()
    assert (event.type, event.data) == ("from.thread", {"ok": True})
    assert event.to_json() == {
        "seq": 2,
        "ts": event.ts,
        "type": "from.thread",
        "data": {"ok": True},
    }
