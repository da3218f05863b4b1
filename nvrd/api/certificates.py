"""HTTPS certificates: /api/v1/system/certificates (administrators only).

Upload (PEM with its chain, or PKCS#12 as base64 with its password), make a
self-signed one, make a CSR (the key stays on the device; upload the signed
certificate to the same id, without a key), choose the active one, delete. A change
of the active certificate applies to the next TLS handshake, with no restart.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from nvrd.api.jsonio import read_model, respond
from nvrd.api.keys import AUDIT_TARGET, TLS
from nvrd.api.roles import Role, requires
from nvrd.errors import Invalid
from nvrd.system.certificates import CertificateInfo

routes = web.RouteTableDef()


def certificate_summary(info: CertificateInfo, active: str | None) -> dict[str, Any]:
    return {
        "id": info.id,
        "active": info.id == active,
        "state": info.state,
        "subject": info.subject,
        "issuer": info.issuer,
        "not_before": info.not_before,
        "not_after": info.not_after,
        "dns_names": info.dns_names,
        "ip_addresses": info.ip_addresses,
        "fingerprint_sha256": info.fingerprint_sha256,
        "self_signed": info.self_signed,
        "chain_length": info.chain_length,
        "key_type": info.key_type,
        "csr": info.csr,
    }


class Upload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    certificate: str | None = None  # PEM: the leaf, then its chain
    key: str | None = None  # PEM; leave out for the certificate of a CSR made here
    key_password: str | None = None
    pfx: str | None = None  # base64 PKCS#12
    password: str | None = None  # of the PFX
    activate: bool = False


class SelfSigned(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    hostname: str | None = None
    activate: bool = False


class CsrRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    common_name: str
    dns_names: list[str] = []
    ip_addresses: list[str] = []


class Activation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str


@routes.get("/api/v1/system/certificates")
@requires(Role.ADMIN)
async def list_certificates(request: web.Request) -> web.Response:
    tls = request.app[TLS]
    infos, active = await asyncio.to_thread(lambda: (tls.list(), tls.active_id()))
    return respond({"active": active, "certificates": [certificate_summary(i, active) for i in infos]})


@routes.post("/api/v1/system/certificates")
@requires(Role.ADMIN)
async def upload_certificate(request: web.Request) -> web.Response:
    body = await read_model(request, Upload)
    request[AUDIT_TARGET] = body.id
    tls = request.app[TLS]
    if body.pfx is not None:
        if body.certificate is not None or body.key is not None:
            raise Invalid("pfx: give either pfx or certificate (and key), not both", field="pfx")
        try:
            data = base64.b64decode(body.pfx, validate=True)
        except binascii.Error:
            raise Invalid("pfx: not base64", field="pfx") from None
        info = await asyncio.to_thread(tls.store.add_pfx, body.id, data, body.password)
    elif body.certificate is not None:
        key = body.key.encode() if body.key is not None else None
        info = await asyncio.to_thread(
            tls.store.add_pem, body.id, body.certificate.encode(), key, body.key_password
        )
    else:
        raise Invalid("certificate: give certificate (PEM) or pfx", field="certificate")
    return await _created(request, info, body.activate)


@routes.post("/api/v1/system/certificates/self-signed")
@requires(Role.ADMIN)
async def create_self_signed_certificate(request: web.Request) -> web.Response:
    body = await read_model(request, SelfSigned)
    request[AUDIT_TARGET] = body.id
    tls = request.app[TLS]
    info = await asyncio.to_thread(tls.make_self_signed, body.id, body.hostname)
    return await _created(request, info, body.activate)


@routes.post("/api/v1/system/certificates/csr")
@requires(Role.ADMIN)
async def create_csr(request: web.Request) -> web.Response:
    body = await read_model(request, CsrRequest)
    request[AUDIT_TARGET] = body.id
    tls = request.app[TLS]
    info = await asyncio.to_thread(
        tls.store.add_csr, body.id, body.common_name, body.dns_names, body.ip_addresses
    )
    return await _created(request, info, False)


async def _created(request: web.Request, info: CertificateInfo, activate: bool) -> web.Response:
    tls = request.app[TLS]
    if activate:
        info = await asyncio.to_thread(tls.activate, info.id)
    active = await asyncio.to_thread(tls.active_id)
    return respond(certificate_summary(info, active), status=201)


@routes.put("/api/v1/system/certificates/active")
@requires(Role.ADMIN)
async def activate_certificate(request: web.Request) -> web.Response:
    body = await read_model(request, Activation)
    request[AUDIT_TARGET] = body.id
    info = await asyncio.to_thread(request.app[TLS].activate, body.id)
    return respond(certificate_summary(info, info.id))


@routes.delete("/api/v1/system/certificates/{id}")
@requires(Role.ADMIN)
async def delete_certificate(request: web.Request) -> web.Response:
    await asyncio.to_thread(request.app[TLS].delete, request.match_info["id"])
    return web.Response(status=204)
