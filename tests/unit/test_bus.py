import asyncio

import pytest

from nvrd.bus import Bus, Overrun


async def test_subscriber_receives_in_order() -> None:
    bus = Bus()
    sub = bus.subscribe()
    bus.publish("storage.changed", {"n": 1})
    bus.publish("job.changed", {"n": 2})
    first, second = await sub.get(), await sub.get()
    assert (first.topic, first.data, second.data) == ("storage.changed", {"n": 1}, {"n": 2})
    assert second.seq == first.seq + 1


async def test_topic_prefix_filter() -> None:
    bus = Bus()
    sub = bus.subscribe(["storage"])
    bus.publish("storagex.changed", {})
    bus.publish("job.changed", {})
    bus.publish("storage.changed", {"ok": True})
    event = await asyncio.wait_for(sub.get(), 1)
    assert event.topic == "storage.changed"


async def test_replay_after_seq_then_live() -> None:
    bus = Bus(history=10)
    events = [bus.publish("t.x", {"i": i}) for i in range(5)]
    sub = bus.subscribe(after=events[2].seq)
    bus.publish("t.x", {"i": 5})
    got = [(await sub.get()).data["i"] for _ in range(3)]
    assert got == [3, 4, 5]


async def test_history_is_bounded() -> None:
    bus = Bus(history=3)
    for i in range(10):
        bus.publish("t.x", {"i": i})
    sub = bus.subscribe(after=0)
    got = [(await sub.get()).data["i"] for _ in range(3)]
    assert got == [7, 8, 9]


async def test_slow_subscriber_overruns_without_blocking_publisher() -> None:
    bus = Bus()
    slow = bus.subscribe(maxsize=2)
    fast = bus.subscribe(maxsize=100)
    for i in range(5):
        bus.publish("t.x", {"i": i})
    with pytest.raises(Overrun):
        await asyncio.wait_for(slow.get(), 1)
    assert slow.overrun
    assert [(await fast.get()).data["i"] for _ in range(5)] == [0, 1, 2, 3, 4]


async def test_close_ends_waiting_reader() -> None:
    bus = Bus()
    sub = bus.subscribe()
    reader = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    bus.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(reader, 1)
    bus.publish("t.x", {})  # no subscriber left; must not raise
    assert bus.last_seq == 1
