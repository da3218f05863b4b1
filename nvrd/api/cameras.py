"""Cameras: GET/POST /cameras, GET/PATCH/DELETE /cameras/{id}, and a camera's
segments. Reading needs a viewer; changing cameras needs an operator (issue 6)."""

from __future__ import annotations

from aiohttp import web

from nvrd.api.jsonio import read_model, respond
from nvrd.api.keys import RECORDER
from nvrd.api.recordings import segment_json, time_range
from nvrd.api.roles import Role, requires
from nvrd.errors import Invalid
from nvrd.recording.cameras import CameraCreate, CameraPatch

routes = web.RouteTableDef()

MAX_SEGMENTS = 10_000


@routes.get("/api/v1/cameras")
@requires(Role.VIEWER)
async def list_cameras(request: web.Request) -> web.Response:
    return respond(request.app[RECORDER].cameras())


@routes.post("/api/v1/cameras")
@requires(Role.OPERATOR)
async def create_camera(request: web.Request) -> web.Response:
    body = await read_model(request, CameraCreate)
    camera = await request.app[RECORDER].create(body)
    return respond(camera, status=201, headers={"Location": f"/api/v1/cameras/{camera['id']}"})


@routes.get("/api/v1/cameras/{id}")
@requires(Role.VIEWER)
async def get_camera(request: web.Request) -> web.Response:
    recorder = request.app[RECORDER]
    return respond(recorder.describe(recorder.supervisor(request.match_info["id"])))


@routes.patch("/api/v1/cameras/{id}")
@requires(Role.OPERATOR)
async def patch_camera(request: web.Request) -> web.Response:
    patch = await read_model(request, CameraPatch)
    return respond(await request.app[RECORDER].update(request.match_info["id"], patch))


@routes.delete("/api/v1/cameras/{id}")
@requires(Role.OPERATOR)
async def delete_camera(request: web.Request) -> web.Response:
    await request.app[RECORDER].delete(request.match_info["id"])
    return web.Response(status=204)


@routes.get("/api/v1/cameras/{id}/segments")
@requires(Role.VIEWER)
async def camera_segments(request: web.Request) -> web.Response:
    recorder = request.app[RECORDER]
    camera = request.match_info["id"]
    from_ms, to_ms = time_range(request, recorder.clock.wall_ms())
    raw = request.query.get("limit", "1000")
    try:
        limit = int(raw)
    except ValueError:
        raise Invalid("limit must be an integer", field="limit") from None
    if not 1 <= limit <= MAX_SEGMENTS:
        raise Invalid(f"limit must be 1..{MAX_SEGMENTS}", field="limit")
    rows = await recorder.segments(camera, from_ms, to_ms, limit)
    if not rows and camera not in recorder.supervisors:
        # A deleted camera's recordings stay (until retention) and can be listed;
        # an id that never recorded anything is not found.
        recorder.supervisor(camera)
    return respond([segment_json(r) for r in rows])
