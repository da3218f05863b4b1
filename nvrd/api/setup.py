"""POST /api/v1/setup: the first administrator. There is no default account."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from nvrd.api.accounts import account_summary
from nvrd.api.jsonio import read_model, respond
from nvrd.api.keys import ACCOUNTS, AUDIT_TARGET
from nvrd.api.roles import Role, requires

routes = web.RouteTableDef()


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str
    password: str


@routes.post("/api/v1/setup")
@requires(Role.ANONYMOUS)
async def setup(request: web.Request) -> web.Response:
    body = await read_model(request, SetupRequest)
    request[AUDIT_TARGET] = body.username
    account = await request.app[ACCOUNTS].setup(body.username, body.password)
    return respond(
        account_summary(account), status=201, headers={"Location": f"/api/v1/accounts/{account.name}"}
    )
