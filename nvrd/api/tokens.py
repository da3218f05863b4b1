"""API tokens: /api/v1/auth/tokens. Any account makes and revokes its own;
administrators see and revoke everyone's. The secret is in the creation answer only."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict

from nvrd.accounts import Token
from nvrd.api.jsonio import read_model, respond
from nvrd.api.keys import ACCOUNTS, AUDIT_TARGET, PRINCIPAL
from nvrd.api.roles import Role, requires

routes = web.RouteTableDef()


def token_summary(token: Token) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "account": token.account,
        "created": token.created,
        "expires": token.expires,
    }


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    expires: AwareDatetime | None = None


@routes.get("/api/v1/auth/tokens")
@requires(Role.VIEWER)
async def list_tokens(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    account = None if principal.role == Role.ADMIN else principal.account
    return respond([token_summary(t) for t in request.app[ACCOUNTS].tokens(account)])


@routes.post("/api/v1/auth/tokens")
@requires(Role.VIEWER)
async def create_token(request: web.Request) -> web.Response:
    body = await read_model(request, NewToken)
    principal = request[PRINCIPAL]
    assert principal.account is not None  # VIEWER and up are accounts
    request[AUDIT_TARGET] = body.name
    expires: datetime | None = body.expires
    token, secret = await request.app[ACCOUNTS].create_token(principal.account, body.name, expires)
    return respond({**token_summary(token), "token": secret}, status=201)


@routes.delete("/api/v1/auth/tokens/{id}")
@requires(Role.VIEWER)
async def revoke_token(request: web.Request) -> web.Response:
    await request.app[ACCOUNTS].revoke_token(request.match_info["id"], request[PRINCIPAL])
    return web.Response(status=204)
