"""Jobs: the state and progress of long operations."""

from __future__ import annotations

from aiohttp import web

from nvrd.api.jsonio import respond
from nvrd.api.keys import JOBS
from nvrd.api.roles import Role, requires
from nvrd.jobs import job_summary

routes = web.RouteTableDef()


@routes.get("/api/v1/jobs")
@requires(Role.VIEWER)
async def list_jobs(request: web.Request) -> web.Response:
    kind = request.query.get("kind")
    return respond([job_summary(job) for job in request.app[JOBS].list(kind)])


@routes.get("/api/v1/jobs/{id}")
@requires(Role.VIEWER)
async def get_job(request: web.Request) -> web.Response:
    return respond(job_summary(request.app[JOBS].get(request.match_info["id"])))
