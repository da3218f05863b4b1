"""Browser sessions and self-service passwords: /api/v1/auth/session, /auth/password.

A session is a cookie (`Secure`, `HttpOnly`, `SameSite=Strict`) plus a CSRF token
that the page sends in `X-CSRF-Token` on every unsafe request (the authentication
middleware checks it). `GET /auth/session` tells any client who it is logged in as.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from nvrd.accounts import SESSION_LIFETIME, BadCredentials, SetupRequired
from nvrd.api.auth import SESSION_COOKIE, cleartext_password_allowed
from nvrd.api.jsonio import read_model, respond
from nvrd.api.keys import ACCOUNTS, AUDIT_TARGET, PRINCIPAL
from nvrd.api.roles import Role, requires
from nvrd.errors import Forbidden

routes = web.RouteTableDef()


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str
    password: str


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: str
    new_password: str


@routes.get("/api/v1/auth/session")
@requires(Role.VIEWER)
async def get_session(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    return respond(
        {
            "account": principal.account,
            "role": principal.role.label,
            "method": principal.method,
            "csrf_token": principal.session_csrf,
        }
    )


@routes.post("/api/v1/auth/session")
@requires(Role.ANONYMOUS)
async def log_in(request: web.Request) -> web.Response:
    body = await read_model(request, Login)
    request[AUDIT_TARGET] = body.username
    if not cleartext_password_allowed(request):
        raise Forbidden("log in over HTTPS: the password would cross the network in the clear")
    accounts = request.app[ACCOUNTS]
    if accounts.setup_required:
        raise SetupRequired()
    account = await accounts.verify_password(body.username, body.password)
    if account is None:
        raise BadCredentials("wrong user name or password")
    session_id, session = accounts.start_session(account)
    response = respond(
        {"account": account.name, "role": account.role.label, "csrf_token": session.csrf_token,
         "expires": session.expires}
    )
    response.set_cookie(
        SESSION_COOKIE, session_id, secure=True, httponly=True, samesite="Strict", path="/",
        max_age=int(SESSION_LIFETIME.total_seconds()),
    )
    return response


@routes.delete("/api/v1/auth/session")
@requires(Role.VIEWER)
async def log_out(request: web.Request) -> web.Response:
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id is not None:
        request.app[ACCOUNTS].end_session(session_id)
    response = web.Response(status=204)
    response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return response


@routes.put("/api/v1/auth/password")
@requires(Role.VIEWER)
async def change_password(request: web.Request) -> web.Response:
    """Any account changes its own password; that ends its sessions and tokens."""
    body = await read_model(request, PasswordChange)
    account = request[PRINCIPAL].account
    assert account is not None
    await request.app[ACCOUNTS].change_own_password(account, body.current_password, body.new_password)
    return web.Response(status=204)
