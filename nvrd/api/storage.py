"""Storage: the volume's state, the RAID array, and the storage tools."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from nvrd.api.jsonio import read_model, respond
from nvrd.api.keys import INDICATORS, STORAGE, VOLUME
from nvrd.api.roles import Role, requires
from nvrd.errors import Conflict, NotFound
from nvrd.jobs import Job, job_summary
from nvrd.storage.manager import ManagedStorage

routes = web.RouteTableDef()

# As the reference recorder defines passwords: 1 to 64 printable ASCII characters.
Password = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x20-\x7e]+$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Confirmed(_Body):
    confirm: Literal[True] = Field(description="destructive: must be true")


class EncryptBody(_Body):
    password: Password


class RaidBody(Confirmed):
    level: Literal[0, 1, 5, 6, 10]
    disks: list[str] | None = None
    encrypt: EncryptBody | None = None
    filesystem: Literal["ext4", "xfs"] = "ext4"
    force: bool = False


class FormatBody(Confirmed):
    filesystem: Literal["ext4", "xfs"] = "ext4"


class EncryptToolBody(Confirmed):
    password: Password


class PasswordBody(_Body):
    password: Password


class ChangePasswordBody(_Body):
    old_password: Password
    new_password: Password


class WriteProtectBody(_Body):
    enabled: bool


def _managed(request: web.Request) -> ManagedStorage:
    storage = request.app.get(STORAGE)
    if storage is None:
        raise Conflict(
            "storage is in directory mode: RAID and encryption tools do not apply",
            mode="directory",
        )
    return storage


def _accepted(job: Job, recovery_key: str | None = None) -> web.Response:
    body = job_summary(job)
    if recovery_key is not None:
        # Shown here only: write it down; it opens the volume if the password is lost.
        body["recovery_key"] = recovery_key
    return respond(body, status=202, headers={"Location": f"/api/v1/jobs/{job.id}"})


@routes.get("/api/v1/storage")
@requires(Role.VIEWER)
async def get_storage(request: web.Request) -> web.Response:
    return respond(request.app[VOLUME].snapshot())


@routes.get("/api/v1/storage/disks")
@requires(Role.VIEWER)
async def get_disks(request: web.Request) -> web.Response:
    rows = await _managed(request).disk_list()
    indicators = request.app[INDICATORS]
    for row in rows:
        row["led"] = indicators.led_of(row["slot"])
    return respond(rows)


class LocateBody(_Body):
    seconds: Annotated[int, Field(ge=0, le=3600)] = 60


# {slot}, not {slot:\d+}: a pattern would answer 404 before authentication does.
@routes.post("/api/v1/storage/disks/{slot}/locate")
@requires(Role.ADMIN)
async def locate(request: web.Request) -> web.Response:
    raw = request.match_info["slot"]
    if not raw.isdigit():
        raise NotFound(f"no slot {raw!r}", slot=raw)
    slot = int(raw)
    body = await read_model(request, LocateBody) if request.can_read_body else LocateBody()
    indicators = request.app[INDICATORS]
    await indicators.locate(slot, body.seconds)
    return respond({"slot": slot, "led": indicators.led_of(slot), "locating": indicators.locating(slot)})


@routes.post("/api/v1/storage/raid")
@requires(Role.ADMIN)
async def create_raid(request: web.Request) -> web.Response:
    body = await read_model(request, RaidBody)
    storage = _managed(request)
    job, recovery_key = await storage.request_raid(
        body.level, body.disks, body.encrypt.password if body.encrypt else None,
        body.filesystem, body.force,
    )
    return _accepted(job, recovery_key)


@routes.post("/api/v1/storage/format")
@requires(Role.ADMIN)
async def format_volume(request: web.Request) -> web.Response:
    body = await read_model(request, FormatBody)
    return _accepted(_managed(request).format(body.filesystem))


@routes.post("/api/v1/storage/check")
@requires(Role.ADMIN)
async def check(request: web.Request) -> web.Response:
    return _accepted(_managed(request).check())


@routes.post("/api/v1/storage/repair")
@requires(Role.ADMIN)
async def repair(request: web.Request) -> web.Response:
    await read_model(request, Confirmed)
    return _accepted(_managed(request).repair())


@routes.post("/api/v1/storage/encrypt")
@requires(Role.ADMIN)
async def encrypt(request: web.Request) -> web.Response:
    body = await read_model(request, EncryptToolBody)
    return _accepted(*_managed(request).encrypt(body.password))


@routes.post("/api/v1/storage/decrypt")
@requires(Role.ADMIN)
async def decrypt(request: web.Request) -> web.Response:
    await read_model(request, Confirmed)
    return _accepted(_managed(request).decrypt())


@routes.post("/api/v1/storage/lock")
@requires(Role.ADMIN)
async def lock(request: web.Request) -> web.Response:
    return _accepted(_managed(request).lock())


@routes.post("/api/v1/storage/write-protect")
@requires(Role.ADMIN)
async def write_protect(request: web.Request) -> web.Response:
    body = await read_model(request, WriteProtectBody)
    return _accepted(_managed(request).write_protect(body.enabled))


# Unlock and password change answer at once (200, or 403 for a wrong password),
# since the client must learn which. They are shielded: a client that hangs up
# mid-way cancels its request, never the key slot change.


@routes.post("/api/v1/storage/unlock")
@requires(Role.ADMIN)
async def unlock(request: web.Request) -> web.Response:
    body = await read_model(request, PasswordBody)
    storage = _managed(request)
    await asyncio.shield(storage.unlock(body.password))
    return respond(storage.snapshot())


@routes.post("/api/v1/storage/change-password")
@requires(Role.ADMIN)
async def change_password(request: web.Request) -> web.Response:
    body = await read_model(request, ChangePasswordBody)
    storage = _managed(request)
    await asyncio.shield(storage.change_password(body.old_password, body.new_password))
    return respond({"changed": True})
