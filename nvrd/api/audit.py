"""The audit log: recording every change made through the API, and reading it.

`audit_middleware` records each request with an unsafe method (POST, PUT, PATCH,
DELETE) that reached a handler, whatever its outcome, so a new endpoint is audited
without having to ask. The action is the handler's name (`create_account`), the
target the path's parameters or what the handler named in `request[AUDIT_TARGET]`.
Requests refused before a handler (401, 403, 429) are in the access log instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from nvrd.accounts import ANONYMOUS
from nvrd.api.errors import status_of
from nvrd.api.jsonio import respond
from nvrd.api.keys import AUDIT, AUDIT_TARGET, PRINCIPAL
from nvrd.api.roles import Role, requires
from nvrd.audit import Actor, AuditRecord
from nvrd.errors import Invalid, NvrdError

routes = web.RouteTableDef()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _action(request: web.Request) -> str:
    handler = request.match_info.handler
    return getattr(handler, "__name__", request.method.lower()).replace("_", "-")


def _target(request: web.Request) -> str | None:
    if AUDIT_TARGET in request:
        return request[AUDIT_TARGET]
    return "/".join(request.match_info.values()) or None


async def _record(request: web.Request, result: str, detail: str | None) -> None:
    principal = request.get(PRINCIPAL, ANONYMOUS)
    record = request.app[AUDIT].record(
        Actor(principal.account, request.remote), _action(request), _target(request), result, detail
    )
    # Shielded: a client that goes away must not take the record of its change along.
    await asyncio.shield(record)


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method not in UNSAFE_METHODS or request.match_info.http_exception is not None:
        return await handler(request)
    try:
        response = await handler(request)
    except NvrdError as exc:
        await _record(request, "failed", f"{status_of(exc)} {exc.detail}")
        raise
    except web.HTTPException as exc:
        await _record(request, "ok" if exc.status < 400 else "failed", f"{exc.status} {exc.text or exc.reason}")
        raise
    except Exception as exc:
        await _record(request, "failed", f"500 {type(exc).__name__}")
        raise
    failed = response.status >= 400
    await _record(request, "failed" if failed else "ok", str(response.status) if failed else None)
    return response


def _time(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(f"{name}: an RFC 3339 time, e.g. 2026-11-25T15:09:52.123Z", field=name) from None
    if moment.tzinfo is None:
        raise Invalid(f"{name}: give a time zone (e.g. Z)", field=name)
    return moment


def record_summary(record: AuditRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "time": record.time,
        "account": record.account,
        "address": record.address,
        "action": record.action,
        "target": record.target,
        "result": record.result,
        "detail": record.detail,
    }


@routes.get("/api/v1/logs/audit")
@requires(Role.ADMIN)
async def get_audit_log(request: web.Request) -> web.Response:
    try:
        limit = int(request.query.get("limit", "1000"))
    except ValueError:
        raise Invalid("limit: a whole number", field="limit") from None
    records = await request.app[AUDIT].query(
        _time(request, "from"), _time(request, "to"), request.query.get("account"), limit
    )
    return respond([record_summary(r) for r in records])
