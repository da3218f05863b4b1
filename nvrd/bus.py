"""In-process publish/subscribe of events between services, and out to /events.

Services learn of each other's changes here instead of reaching into each other.
Every event gets a sequence number, and the bus keeps the most recent ones so that a
client that reconnects (SSE `Last-Event-ID`) misses nothing that is still held.

A subscriber that falls behind by more than its queue is cut off (`overrun`) rather
than slowing the publisher or growing without bound: the publisher is the storage
monitor or a camera supervisor, and neither may ever wait on a slow HTTP client.
The client reconnects and replays from the history.

The bus lives on the event loop; code in a worker thread publishes with
`loop.call_soon_threadsafe(bus.publish, ...)`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Event:
    seq: int
    topic: str  # "<resource>.<what>", e.g. "storage.changed", "job.changed"
    data: Mapping[str, Any]
    time: datetime = field(default_factory=lambda: datetime.now(UTC))

    def matches(self, topics: Collection[str] | None) -> bool:
        """True if no filter, or the topic equals an entry or starts with "<entry>."."""
        if not topics:
            return True
        return any(self.topic == t or self.topic.startswith(t + ".") for t in topics)


class Overrun(Exception):
    """The subscriber fell too far behind and was dropped."""


class Subscription:
    def __init__(self, bus: Bus, topics: Collection[str] | None, maxsize: int) -> None:
        self._bus = bus
        self.topics = frozenset(topics or ())
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.overrun = False
        self.closed = False

    def _offer(self, event: Event) -> None:
        if self.closed or not event.matches(self.topics):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overrun = True
            self._close_queue()

    def _close_queue(self) -> None:
        self.closed = True
        self._bus._subscriptions.discard(self)
        # Drop everything still queued, not just enough for the sentinel: the client
        # resumes from the last event it really received (Last-Event-ID), so dropping
        # from the middle would lose events for good, while the history replays these.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def close(self) -> None:
        if not self.closed:
            self._close_queue()

    async def get(self) -> Event:
        """The next event; raises Overrun or StopAsyncIteration when ended."""
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)  # later calls see the end too
            if self.overrun:
                raise Overrun()
            raise StopAsyncIteration
        return event

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        return await self.get()


class Bus:
    def __init__(self, history: int = 1000) -> None:
        self._seq = itertools.count(1)
        self._history: deque[Event] = deque(maxlen=history)
        self._subscriptions: set[Subscription] = set()

    def publish(self, topic: str, data: Mapping[str, Any]) -> Event:
        event = Event(next(self._seq), topic, data)
        self._history.append(event)
        for subscription in list(self._subscriptions):
            subscription._offer(event)
        return event

    def subscribe(
        self,
        topics: Collection[str] | None = None,
        after: int | None = None,
        maxsize: int = 1000,
    ) -> Subscription:
        """Subscribe; with `after`, first replay held events with seq > after."""
        subscription = Subscription(self, topics, maxsize)
        if after is not None:
            for event in self._history:
                if event.seq > after:
                    subscription._offer(event)
        if not subscription.closed:
            self._subscriptions.add(subscription)
        return subscription

    @property
    def last_seq(self) -> int:
        return self._history[-1].seq if self._history else 0

    def close(self) -> None:
        """End every subscription (daemon stopping)."""
        for subscription in list(self._subscriptions):
            subscription.close()
