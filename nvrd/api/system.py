"""Device information, the API description, and run-time log levels."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict

from nvrd import __version__, logs
from nvrd.api.jsonio import read_model, respond
from nvrd.api.keys import ACCOUNTS, DEVICE, INDICATORS, LOG_LEVELS
from nvrd.api.roles import Role, requires
from nvrd.config import LogLevel

routes = web.RouteTableDef()

PRODUCT = "nvrd"


@functools.cache
def openapi_document() -> str:
    """The API description as JSON: openapi/base.yaml plus one fragment per resource
    (paths and that resource's schemas), so each resource documents itself beside
    its neighbours without one shared file to edit. Read once: it ships in the package."""
    folder = files("nvrd.api").joinpath("openapi")
    spec: dict[str, Any] = yaml.safe_load(folder.joinpath("base.yaml").read_text())
    fragments = sorted(
        (f for f in folder.iterdir() if f.name.endswith(".yaml") and f.name != "base.yaml"),
        key=lambda f: f.name,
    )
    for fragment in fragments:
        part = yaml.safe_load(fragment.read_text())
        _merge(spec["paths"], part.get("paths", {}), fragment.name)
        _merge(spec["components"]["schemas"], part.get("components", {}).get("schemas", {}), fragment.name)
    spec["info"]["version"] = __version__
    return json.dumps(spec)


def _merge(into: dict[str, Any], new: dict[str, Any], source: str) -> None:
    clash = into.keys() & new.keys()
    if clash:
        raise ValueError(f"openapi/{source} defines {sorted(clash)} again")
    into.update(new)


@routes.get("/api/v1/info")
@requires(Role.ANONYMOUS)
async def info(request: web.Request) -> web.Response:
    identity = request.app[DEVICE].identity
    return respond(
        {
            "product": PRODUCT,
            "version": __version__,
            "api_version": "v1",
            "serial": identity.serial,
            "hostname": identity.hostname,
            "time": datetime.now(UTC),
            # No accounts exist until the first administrator is created.
            "setup_required": request.app[ACCOUNTS].setup_required,
        }
    )


@routes.get("/api/v1/openapi.json")
@requires(Role.ANONYMOUS)
async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=openapi_document(), content_type="application/json")


class LoggingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: LogLevel
    levels: dict[str, LogLevel] = {}


@routes.get("/api/v1/system/logging")
@requires(Role.ADMIN)
async def get_logging(request: web.Request) -> web.Response:
    return respond(_levels(request.app[LOG_LEVELS]))


@routes.patch("/api/v1/system/logging")
@requires(Role.ADMIN)
async def set_logging(request: web.Request) -> web.Response:
    """Change levels until the next SIGHUP or restart, which go back to the file."""
    settings = await read_model(request, LoggingSettings)
    request.app[LOG_LEVELS].set(settings.level, settings.levels)
    return respond(_levels(request.app[LOG_LEVELS]))


def _levels(levels: logs.LogLevels) -> dict[str, Any]:
    return {"level": levels.level, "levels": levels.levels}


@routes.post("/api/v1/system/buzzer/silence")
@requires(Role.OPERATOR)
async def silence_buzzer(request: web.Request) -> web.Response:
    """The reference recorder's short press of the power button: the alarm stays
    raised (GET /status shows it) but stops sounding until a new one comes."""
    alarm = request.app[INDICATORS].alarm
    was_sounding = alarm.silence()
    return respond({"silenced": True, "was_sounding": was_sounding, "alarm": alarm.reason})
