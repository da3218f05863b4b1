"""Exports: POST /exports (a job), GET /exports, GET/DELETE /exports/{id}, the
file, and export to USB (GET /exports/usb, POST /exports/{id}/copy-to-usb). The
export services (nvrd/recording/exports.py, nvrd/recording/usb.py) do the work."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from nvrd.api.jsonio import read_model, respond
from nvrd.api.keys import AUDIT, AUDIT_TARGET, EXPORTS, PRINCIPAL, USB_EXPORTS
from nvrd.api.recordings import MAX_RANGE_MS, parse_time
from nvrd.api.roles import Role, requires
from nvrd.audit import Actor
from nvrd.errors import Conflict, Invalid
from nvrd.jobs import job_summary
from nvrd.recording.exports import ExportFormat
from nvrd.recording.usb import UsbExports

routes = web.RouteTableDef()

Password = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x20-\x7e]+$")]


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    camera: Annotated[str, Field(min_length=1, max_length=64)]
    from_: Annotated[str, Field(alias="from")]
    to: str
    format: ExportFormat = ExportFormat.MKV
    password: Password | None = None


@routes.post("/api/v1/exports")
@requires(Role.VIEWER)
async def create_export(request: web.Request) -> web.Response:
    body = await read_model(request, ExportRequest)
    from_ms, to_ms = parse_time(body.from_, "from"), parse_time(body.to, "to")
    if from_ms >= to_ms:
        raise Invalid("from must be before to", field="from")
    if to_ms - from_ms > MAX_RANGE_MS:
        raise Invalid("the range is longer than 31 days", field="to")
    request[AUDIT_TARGET] = f"{body.camera} {body.from_}/{body.to}"
    principal = request.get(PRINCIPAL)
    export = await request.app[EXPORTS].create(
        body.camera, from_ms, to_ms, body.format, body.password, principal.account if principal else None
    )
    request[AUDIT_TARGET] = f"{export.id}: {body.camera} {body.from_}/{body.to}"
    return respond(export.summary(), status=202, headers={"Location": f"/api/v1/exports/{export.id}"})


@routes.get("/api/v1/exports")
@requires(Role.VIEWER)
async def list_exports(request: web.Request) -> web.Response:
    return respond([e.summary() for e in request.app[EXPORTS].list()])


class CopyToUsbRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # /dev/sda1, a /dev/disk/by-id link, or the disk when it holds one filesystem.
    device: Annotated[str, Field(min_length=1, max_length=255)] | None = None


def _usb(request: web.Request) -> UsbExports:
    usb = request.app.get(USB_EXPORTS)
    if usb is None:
        raise Conflict("export to USB is off ([exports] usb = false)")
    return usb


# Before /exports/{id}, which would take "usb" for an id.
@routes.get("/api/v1/exports/usb")
@requires(Role.VIEWER)
async def list_usb_disks(request: web.Request) -> web.Response:
    return respond(await _usb(request).list())


@routes.post("/api/v1/exports/{id}/copy-to-usb")
@requires(Role.VIEWER)
async def copy_export_to_usb(request: web.Request) -> web.Response:
    body = await read_model(request, CopyToUsbRequest) if request.can_read_body else CopyToUsbRequest()
    export_id = request.match_info["id"]
    # Footage leaving the recorder is audited (the middleware records this request).
    request[AUDIT_TARGET] = f"{export_id} to {body.device or 'the USB disk'}"
    job, target = await _usb(request).copy(export_id, body.device)
    request[AUDIT_TARGET] = f"{export_id} to {target.device} (job {job.id})"
    return respond(job_summary(job), status=202, headers={"Location": f"/api/v1/jobs/{job.id}"})


@routes.get("/api/v1/exports/{id}")
@requires(Role.VIEWER)
async def get_export(request: web.Request) -> web.Response:
    return respond(request.app[EXPORTS].get(request.match_info["id"]).summary())


@routes.get("/api/v1/exports/{id}/file")
@requires(Role.VIEWER)
async def get_export_file(request: web.Request) -> web.FileResponse:
    path = request.app[EXPORTS].file(request.match_info["id"])
    # Footage leaving the recorder is recorded, as changes are.
    principal = request.get(PRINCIPAL)
    await request.app[AUDIT].record(
        Actor(principal.account if principal else None, request.remote), "download-export",
        request.match_info["id"], "ok",
    )
    return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{path.name}"'})


@routes.delete("/api/v1/exports/{id}")
@requires(Role.VIEWER)
async def delete_export(request: web.Request) -> web.Response:
    await request.app[EXPORTS].delete(request.match_info["id"])
    return web.Response(status=204)
