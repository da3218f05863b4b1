"""GET /api/v1/events: the bus as Server-Sent Events.

Each event is `id: <seq>`, `event: <topic>`, `data: {"seq","topic","time","data"}`.
A client that reconnects with `Last-Event-ID` (browsers do this on their own) gets
the events it missed while the bus still holds them. `?topics=storage,camera`
filters by topic prefix. A comment line every 15 s keeps proxies from closing an
idle stream; a client too slow to keep up gets `event: overrun` and the stream ends.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from nvrd.api.jsonio import dumps
from nvrd.api.keys import BUS, EVENT_STREAMS
from nvrd.api.roles import Role, requires
from nvrd.bus import Event, Overrun
from nvrd.errors import Invalid

routes = web.RouteTableDef()

HEARTBEAT_S = 15.0


def _frame(event: Event) -> bytes:
    payload = {"seq": event.seq, "topic": event.topic, "time": event.time, "data": event.data}
    return f"id: {event.seq}\nevent: {event.topic}\ndata: {dumps(payload)}\n\n".encode()


def _after(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("after")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise Invalid("Last-Event-ID must be an event's numeric id", field="after") from None


@routes.get("/api/v1/events")
@requires(Role.VIEWER)
async def events(request: web.Request) -> web.StreamResponse:
    topics = [t for t in request.query.get("topics", "").split(",") if t]
    subscription = request.app[BUS].subscribe(topics, after=_after(request))
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    streams = request.app[EVENT_STREAMS]
    streams.open += 1
    try:
        await response.prepare(request)
        await response.write(b"retry: 3000\n: connected\n\n")
        while True:
            try:
                event = await asyncio.wait_for(subscription.get(), HEARTBEAT_S)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            except Overrun:
                await response.write(b"event: overrun\ndata: {}\n\n")
                break
            except StopAsyncIteration:
                break
            await response.write(_frame(event))
    except ConnectionResetError:
        pass  # the client went away
    finally:
        streams.open -= 1
        subscription.close()
    return response
