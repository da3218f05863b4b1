"""JSON in and out: RFC 3339 UTC times with milliseconds, problem-mapped input errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from nvrd.errors import Invalid

M = TypeVar("M", bound=BaseModel)


def rfc3339(moment: datetime) -> str:
    """`2026-11-25T15:09:52.123Z`: UTC, milliseconds, always the same width."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> str:
    return json.dumps(value, default=_default, separators=(",", ":"), ensure_ascii=False)


def respond(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(value, status=status, headers=headers, dumps=dumps)


async def read_model(request: web.Request, model: type[M]) -> M:
    """The request body as `model`. 415 if not JSON, 400 if malformed, 413 if too
    large (aiohttp enforces client_max_size while reading), 422 naming the field."""
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="the body must be application/json")
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(text=f"the body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in error["loc"]) or None
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        raise Invalid(f"{field}: {message}" if field else message, field=field) from None
