"""HTTP and HTTPS ports and access: /api/v1/system/http (administrators)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StrictInt

from nvrd.api.jsonio import read_model, respond
from nvrd.api.keys import HTTP_SETTINGS, LISTENERS, TLS
from nvrd.api.roles import Role, requires
from nvrd.system.http import Access, HttpSettings

routes = web.RouteTableDef()


class HttpChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Strict: "80" is a mistake worth reporting, as in the config file.
    http_port: StrictInt | None = None
    https_port: StrictInt | None = None
    access: Access | None = None


def settings_summary(settings: HttpSettings, applied: bool, warnings: list[str]) -> dict[str, Any]:
    return {
        "http_port": settings.http_port,
        "https_port": settings.https_port,
        "access": settings.access.value,
        "applied": applied,
        "warnings": warnings,
    }


@routes.get("/api/v1/system/http")
@requires(Role.ADMIN)
async def get_http_settings(request: web.Request) -> web.Response:
    return respond(settings_summary(request.app[HTTP_SETTINGS].current, True, []))


@routes.patch("/api/v1/system/http")
@requires(Role.ADMIN)
async def set_http_settings(request: web.Request) -> web.Response:
    """Ports move at once (new listeners bound before the old ones close); access
    applies to the next request. `applied` is false only where no daemon owns the
    listeners (a test client): then the ports apply at the next start."""
    body = await read_model(request, HttpChange)
    store = request.app[HTTP_SETTINGS]
    new, warnings = store.validate(body.http_port, body.https_port, body.access)
    listeners = request.app.get(LISTENERS)
    if listeners is not None:
        await listeners.apply(new.http_port, new.https_port, request.app[TLS])
    await store.save(new)
    return respond(settings_summary(new, listeners is not None, warnings))
