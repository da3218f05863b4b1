"""Accounts: /api/v1/accounts and /api/v1/accounts/{name} (administrators only)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from nvrd.accounts import Account, parse_role
from nvrd.api.jsonio import read_model, respond
from nvrd.api.keys import ACCOUNTS, AUDIT_TARGET
from nvrd.api.roles import Role, requires

routes = web.RouteTableDef()


def account_summary(account: Account) -> dict[str, Any]:
    return {
        "name": account.name,
        "role": account.role.label,
        "created": account.created,
        "updated": account.updated,
    }


class NewAccount(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    password: str
    role: str


class AccountChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str | None = None
    password: str | None = None


@routes.get("/api/v1/accounts")
@requires(Role.ADMIN)
async def list_accounts(request: web.Request) -> web.Response:
    return respond([account_summary(a) for a in request.app[ACCOUNTS].list()])


@routes.post("/api/v1/accounts")
@requires(Role.ADMIN)
async def create_account(request: web.Request) -> web.Response:
    body = await read_model(request, NewAccount)
    request[AUDIT_TARGET] = body.name
    account = await request.app[ACCOUNTS].create(body.name, body.password, parse_role(body.role))
    return respond(
        account_summary(account), status=201, headers={"Location": f"/api/v1/accounts/{account.name}"}
    )


@routes.get("/api/v1/accounts/{name}")
@requires(Role.ADMIN)
async def get_account(request: web.Request) -> web.Response:
    return respond(account_summary(request.app[ACCOUNTS].get(request.match_info["name"])))


@routes.patch("/api/v1/accounts/{name}")
@requires(Role.ADMIN)
async def update_account(request: web.Request) -> web.Response:
    body = await read_model(request, AccountChange)
    account = await request.app[ACCOUNTS].update(
        request.match_info["name"],
        role=parse_role(body.role) if body.role is not None else None,
        password=body.password,
    )
    return respond(account_summary(account))


@routes.delete("/api/v1/accounts/{name}")
@requires(Role.ADMIN)
async def delete_account(request: web.Request) -> web.Response:
    await request.app[ACCOUNTS].delete(request.match_info["name"])
    return web.Response(status=204)
