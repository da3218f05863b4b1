"""GET /recordings?camera&from&to: the runs (continuous spans) and the gaps between
them, each gap with its reason (design.md §5)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from nvrd.api.jsonio import respond
from nvrd.api.keys import AUDIT_TARGET, RECORDER
from nvrd.api.roles import Role, requires
from nvrd.errors import Invalid
from nvrd.recording.index import SegmentRow

routes = web.RouteTableDef()

DAY_MS = 86_400_000
# The longest range one clip, playlist, export or delete may ask for.
MAX_RANGE_MS = 31 * DAY_MS


def parse_time(raw: str, field: str) -> int:
    """RFC 3339 (a zone is required) → UTC epoch milliseconds."""
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise Invalid(f"{field}: not an RFC 3339 time", field=field) from None
    if moment.tzinfo is None:
        raise Invalid(f"{field}: needs a zone, e.g. Z", field=field)
    return int(moment.timestamp() * 1000)


def time_range(request: web.Request, now_ms: int) -> tuple[int, int]:
    """`from` defaults to a day before `to`; `to` defaults to now."""
    to_ms = parse_time(request.query["to"], "to") if "to" in request.query else now_ms
    from_ms = parse_time(request.query["from"], "from") if "from" in request.query else to_ms - DAY_MS
    if from_ms >= to_ms:
        raise Invalid("from must be before to", field="from")
    return from_ms, to_ms


def required(request: web.Request, field: str) -> str:
    value = request.query.get(field, "")
    if not value:
        raise Invalid(f"{field} is required", field=field)
    return value


def explicit_range(request: web.Request, to_optional: bool = False) -> tuple[int, int | None]:
    """`from` and `to` both given (or `to` left open where the caller allows it),
    `from` before `to`, at most 31 days apart."""
    from_ms = parse_time(required(request, "from"), "from")
    if to_optional and "to" not in request.query:
        return from_ms, None
    to_ms = parse_time(required(request, "to"), "to")
    if from_ms >= to_ms:
        raise Invalid("from must be before to", field="from")
    if to_ms - from_ms > MAX_RANGE_MS:
        raise Invalid("the range is longer than 31 days", field="to")
    return from_ms, to_ms


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def segment_json(row: SegmentRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "camera": row.camera,
        "run": row.run_id,
        "start": _dt(row.start_ms),
        "end": _dt(row.end_ms),
        "bytes": row.bytes,
        "frames": row.frames,
        "keyframes": row.keyframes,
        "codec": row.codec,
        "audio": row.audio,
        "path": row.path,
        "note": row.note,
    }


@routes.get("/api/v1/recordings")
@requires(Role.VIEWER)
async def recordings(request: web.Request) -> web.Response:
    recorder = request.app[RECORDER]
    from_ms, to_ms = time_range(request, recorder.clock.wall_ms())
    cameras = request.query.getall("camera", None)
    if cameras is not None:
        # Unknown ids are not an error: a deleted camera's recordings stay until
        # retention removes them, and can still be asked for.
        cameras = [c for value in cameras for c in value.split(",") if c]
    runs, gaps = await recorder.runs_and_gaps(cameras, from_ms, to_ms)
    return respond(
        {
            "from": _dt(from_ms),
            "to": _dt(to_ms),
            "runs": [
                {"camera": r.camera, "start": _dt(r.start_ms), "end": _dt(r.end_ms), "bytes": r.bytes,
                 "segments": r.segments}
                for r in runs
            ],
            "gaps": [
                {"camera": g.camera, "start": _dt(g.start_ms), "end": _dt(g.end_ms), "reason": g.reason}
                for g in sorted(gaps, key=lambda g: (g.camera, g.start_ms))
            ],
        }
    )


@routes.delete("/api/v1/recordings")
@requires(Role.OPERATOR)
async def delete_recordings(request: web.Request) -> web.Response:
    recorder = request.app[RECORDER]
    camera = required(request, "camera")
    from_ms, to_ms = explicit_range(request)
    assert to_ms is not None
    request[AUDIT_TARGET] = f"{camera} {_dt(from_ms).isoformat()}/{_dt(to_ms).isoformat()}"
    rows = await recorder.delete_range(camera, from_ms, to_ms)
    return respond(
        {
            "camera": camera,
            "from": _dt(from_ms),
            "to": _dt(to_ms),
            "segments": len(rows),
            "bytes": sum(r.bytes for r in rows),
            "start": _dt(rows[0].start_ms) if rows else None,
            "end": _dt(rows[-1].end_ms) if rows else None,
        }
    )
