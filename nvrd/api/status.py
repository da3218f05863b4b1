"""GET /api/v1/status: the recorder at a glance, cheap enough to poll.

Everything comes from state the services already hold (the indicator service's last
storage snapshot, the recorder's camera supervisors, the event stream count): no
tool run, no SMART query, no sysfs walk per request.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from nvrd import __version__
from nvrd.api.jsonio import respond
from nvrd.api.keys import DEVICE, EVENT_STREAMS, INDICATORS, RECORDER
from nvrd.api.roles import Role, requires
from nvrd.api.system import PRODUCT

routes = web.RouteTableDef()


def _storage_summary(snapshot: dict[str, Any] | None) -> dict[str, Any] | None:
    if snapshot is None:
        return None
    raid = snapshot.get("raid")
    return {
        "mode": snapshot.get("mode"),
        "volume": snapshot.get("volume"),
        "reason": snapshot.get("reason"),
        "locked": snapshot.get("locked"),
        "raid": None if raid is None else {
            "level": raid.get("level"),
            "status": raid.get("status"),
            "sync_progress": raid.get("sync_progress"),
        },
        "total_bytes": snapshot.get("total_bytes"),
        "free_bytes": snapshot.get("free_bytes"),
        "problems": snapshot.get("problems", []),
    }


@routes.get("/api/v1/status")
@requires(Role.VIEWER)
async def get_status(request: web.Request) -> web.Response:
    app = request.app
    identity = app[DEVICE].identity
    indicators = app[INDICATORS]
    state, reason = indicators.status()
    recorder = app.get(RECORDER)
    cameras = [] if recorder is None else [
        {"id": camera_id, "name": supervisor.camera.name, "state": supervisor.state.value}
        for camera_id, supervisor in recorder.supervisors.items()
    ]
    return respond(
        {
            "device": {"product": PRODUCT, "version": __version__, "serial": identity.serial,
                       "hostname": identity.hostname},
            "time": datetime.now(UTC),
            "status": state.value,
            "reason": reason,
            "leds": {
                "product": indicators.product.value if indicators.product else None,
                "backend": indicators.backend.name,
                "slots": {str(slot): led.value for slot, led in sorted(indicators.leds.items())},
                "problems": list(indicators.backend.problems),
            },
            "buzzer": {
                "available": indicators.alarm.available,
                "sounding": indicators.alarm.sounding,
                "alarm": indicators.alarm.reason,
                "silenced": indicators.alarm.silenced,
            },
            "storage": _storage_summary(dict(indicators.snapshot) if indicators.snapshot else None),
            "recordings": {
                "cameras": len(cameras),
                "recording": [c for c in cameras if c["state"] == "recording"],
            },
            "clients": {"event_streams": app[EVENT_STREAMS].open},
        }
    )
