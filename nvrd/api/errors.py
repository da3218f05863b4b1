"""Every error leaves as application/problem+json (RFC 9457), from one middleware.

Handlers don't catch domain errors: they raise, and this maps them. Anything
unexpected becomes a 500 whose `error_id` is also in the log, and the daemon goes on.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.typedefs import LooseHeaders
from multidict import CIMultiDict

from nvrd.api.jsonio import dumps
from nvrd.errors import Busy, Conflict, Forbidden, Gone, Invalid, NotFound, NvrdError, Unauthenticated

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_STATUS_OF: list[tuple[type[NvrdError], int]] = [
    (NotFound, 404),
    (Busy, 409),
    (Conflict, 409),
    (Invalid, 422),
    (Forbidden, 403),
    (Gone, 410),
    (Unauthenticated, 401),
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(
    status: int,
    detail: str | None = None,
    type_: str = "about:blank",
    headers: LooseHeaders | None = None,
    **extensions: Any,
) -> web.Response:
    body: dict[str, Any] = {"type": type_, "title": HTTPStatus(status).phrase, "status": status}
    if detail:
        body["detail"] = detail
    body.update({k: v for k, v in extensions.items() if v is not None})
    return web.Response(
        status=status, text=dumps(body), content_type=PROBLEM_JSON, headers=headers
    )


def status_of(exc: NvrdError) -> int:
    for cls, status in _STATUS_OF:
        if isinstance(exc, cls):
            return status
    return 400


def _http_detail(exc: web.HTTPException) -> str | None:
    text = exc.text or ""
    # aiohttp's default text is just "404: Not Found"; that adds nothing to title.
    return None if text == f"{exc.status}: {exc.reason}" else text


# Headers of aiohttp's exceptions worth keeping (405 says which methods are allowed).
# Content-Range: a 416 says how long the resource is (RFC 9110 §15.5.17).
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate", "Location", "Content-Range")


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # getall: a 401 may carry several WWW-Authenticate challenges.
        headers: CIMultiDict[str] = CIMultiDict(
            (h, value) for h in _KEPT_HEADERS for value in exc.headers.getall(h, [])
        )
        return problem(exc.status, _http_detail(exc), headers=headers, instance=request.path)
    except NvrdError as exc:
        return problem(
            status_of(exc),
            exc.detail,
            type_=f"urn:nvrd:problem:{exc.code}",
            instance=request.path,
            **{k: v for k, v in exc.fields.items() if isinstance(v, (str, int, float, bool))},
        )
    except Exception:
        error_id = secrets.token_hex(6)
        log.exception(
            "unexpected error on %s %s", request.method, request.path, extra={"error_id": error_id}
        )
        return problem(
            500, "unexpected error; the log has the details", instance=request.path,
            error_id=error_id,
        )


def body_limit_middleware(limit: int) -> Any:
    """Refuse a body that announces itself too large before any handler runs, on
    every route: a handler that never reads its body would otherwise answer while
    the client is still sending megabytes."""

    @web.middleware
    async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        return await handler(request)

    return body_limit
