"""Accounts, roles and authentication through the real app over loopback HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from nvrd.api.keys import ACCOUNTS, AUTH
from nvrd.api.roles import Role, required_role

from .conftest import ADMIN, ADMIN_PASSWORD, basic

PROBLEM = "application/problem+json"
PRINTABLE = "".join(chr(c) for c in range(32, 127))


async def make_account(client, name: str, role: str, password: str | None = None) -> str:
    password = password or f"{name} password"
    response = await client.post("/api/v1/accounts", json={"name": name, "password": password, "role": role})
    assert response.status == 201, await response.text()
    return password


async def token_for(client, user: str, password: str) -> str:
    response = await client.post(
        "/api/v1/auth/tokens", json={"name": "t"}, headers={"Authorization": basic(user, password)}
    )
    assert response.status == 201, await response.text()
    return (await response.json())["token"]


# --- setup -----------------------------------------------------------------------


async def test_before_setup_everything_but_info_setup_openapi_is_401_naming_setup(anon_client) -> None:
    for route in anon_client.app.router.routes():
        if route.method == "HEAD":
            continue
        path = re.sub(r"\{[^}]+\}", "x", route.resource.canonical)
        body = {"username": "a", "password": "b"} if path == "/api/v1/auth/session" else {}
        response = await anon_client.request(route.method, path, json=body)
        if path in ("/api/v1/info", "/api/v1/openapi.json", "/api/v1/setup"):
            assert response.status != 401, path
            continue
        assert response.status == 401, f"{route.method} {path}"
        body = await response.json(content_type=PROBLEM)
        assert body["type"] == "urn:nvrd:problem:setup-required"
        assert "/api/v1/setup" in body["detail"]


async def test_setup_once_then_409(anon_client) -> None:
    assert (await (await anon_client.get("/api/v1/info")).json())["setup_required"] is True
    response = await anon_client.post("/api/v1/setup", json={"username": "root", "password": "pw"})
    assert response.status == 201
    assert (await response.json())["role"] == "admin"
    assert (await (await anon_client.get("/api/v1/info")).json())["setup_required"] is False
    again = await anon_client.post("/api/v1/setup", json={"username": "other", "password": "pw"})
    assert again.status == 409
    response = await anon_client.get("/api/v1/accounts", headers={"Authorization": basic("root", "pw")})
    assert [a["name"] for a in await response.json()] == ["root"]


async def test_setup_validates_name_and_password(anon_client) -> None:
    response = await anon_client.post("/api/v1/setup", json={"username": "bad name", "password": "pw"})
    assert response.status == 422 and (await response.json(content_type=PROBLEM))["field"] == "username"
    response = await anon_client.post("/api/v1/setup", json={"username": "root", "password": ""})
    assert response.status == 422 and (await response.json(content_type=PROBLEM))["field"] == "password"
    assert (await (await anon_client.get("/api/v1/info")).json())["setup_required"] is True


# --- the role matrix ---------------------------------------------------------------


async def test_role_matrix_from_the_route_table(client) -> None:
    """Every route x {anonymous, viewer, operator, admin}: 401 without credentials,
    403 below the declared role, neither at or above it (2xx for plain GETs, unless
    the device's state refuses it with 409)."""
    headers = {Role.ANONYMOUS: {"Authorization": ""}, Role.ADMIN: {}}
    for role in (Role.VIEWER, Role.OPERATOR):
        password = await make_account(client, role.label, role.label)
        headers[role] = {"Authorization": "Bearer " + await token_for(client, role.label, password)}
    headers[Role.ADMIN] = {"Authorization": "Bearer " + await token_for(client, ADMIN, ADMIN_PASSWORD)}
    seen = 0
    for route in client.app.router.routes():
        if route.method == "HEAD":
            continue
        declared = required_role(route.handler)
        assert declared is not None, f"{route.method} {route.resource.canonical} declares no role"
        template = route.resource.canonical
        path = re.sub(r"\{[^}]+\}", "nonexistent", template)
        for role, header in headers.items():
            request_headers = dict(header)
            if not request_headers.get("Authorization"):
                request_headers = {"Authorization": ""}
            body = {} if route.method in ("POST", "PUT", "PATCH") else None
            async with client.request(route.method, path, json=body, headers=request_headers) as response:
                status = response.status
            where = f"{route.method} {template} as {role.label}"
            if declared == Role.ANONYMOUS or role >= declared:
                assert status not in (401, 403), where
                assert status < 500, where
                if route.method == "GET" and "{" not in template:
                    # 409: a state that forbids it, e.g. /storage/disks in directory mode.
                    assert 200 <= status < 300 or status == 409, where
            elif role == Role.ANONYMOUS:
                assert status == 401, where
            else:
                assert status == 403, where
            seen += 1
    assert seen >= 4 * 20


# --- accounts --------------------------------------------------------------------


async def test_password_edge_cases_through_the_api(client) -> None:
    cases = {
        PRINTABLE[:64]: 201,
        PRINTABLE[31:95]: 201,
        "a" * 65: 422,
        "": 422,
        "caf\u00e9-password": 422,
        "tab\tpassword": 422,
        "bell\x07": 422,
    }
    for number, (password, expected) in enumerate(cases.items()):
        response = await client.post(
            "/api/v1/accounts", json={"name": f"user{number}", "password": password, "role": "viewer"}
        )
        assert response.status == expected, repr(password)
        if expected == 201:
            # ...and the accepted ones really log in, with Basic and with Digest.
            check = await client.get("/api/v1/auth/session", headers={"Authorization": basic(f"user{number}", password)})
            assert check.status == 200, repr(password)
        else:
            assert (await response.json(content_type=PROBLEM))["field"] == "password"


async def test_account_crud_roles_and_limits(client) -> None:
    await make_account(client, "op", "operator")
    response = await client.get("/api/v1/accounts/op")
    assert (await response.json())["role"] == "operator"
    assert (await client.post("/api/v1/accounts", json={"name": "op", "password": "p", "role": "viewer"})).status == 409
    bad_role = await client.post("/api/v1/accounts", json={"name": "x", "password": "p", "role": "root"})
    assert bad_role.status == 422 and (await bad_role.json(content_type=PROBLEM))["field"] == "role"
    response = await client.patch("/api/v1/accounts/op", json={"role": "viewer"})
    assert (await response.json())["role"] == "viewer"
    assert (await client.delete("/api/v1/accounts/op")).status == 204
    assert (await client.get("/api/v1/accounts/op")).status == 404
    # At most 100 accounts: the admin plus 99 more.
    for number in range(99):
        assert (await client.post(
            "/api/v1/accounts", json={"name": f"u{number}", "password": "p", "role": "viewer"}
        )).status == 201
    response = await client.post("/api/v1/accounts", json={"name": "one-too-many", "password": "p", "role": "viewer"})
    assert response.status == 409 and "100" in (await response.json(content_type=PROBLEM))["detail"]


async def test_last_admin_cannot_be_deleted_or_demoted(client) -> None:
    response = await client.delete(f"/api/v1/accounts/{ADMIN}")
    assert response.status == 409 and "last administrator" in (await response.json(content_type=PROBLEM))["detail"]
    response = await client.patch(f"/api/v1/accounts/{ADMIN}", json={"role": "operator"})
    assert response.status == 409
    await make_account(client, "second", "admin")
    response = await client.patch(f"/api/v1/accounts/{ADMIN}", json={"role": "operator"})
    assert response.status == 200
    # Now "second" is the last admin.
    as_second = {"Authorization": basic("second", "second password")}
    assert (await client.delete("/api/v1/accounts/second", headers=as_second)).status == 409


async def test_password_change_ends_tokens_and_sessions(client) -> None:
    password = await make_account(client, "cam", "operator")
    token = await token_for(client, "cam", password)
    bearer = {"Authorization": "Bearer " + token}
    login = await client.post("/api/v1/auth/session", json={"username": "cam", "password": password})
    session_cookie = {"Cookie": f"nvrd_session={login.cookies['nvrd_session'].value}", "Authorization": ""}
    assert (await client.get("/api/v1/jobs", headers=bearer)).status == 200
    assert (await client.get("/api/v1/jobs", headers=session_cookie)).status == 200
    response = await client.put(
        "/api/v1/auth/password", json={"current_password": password, "new_password": "new one"}, headers=bearer
    )
    assert response.status == 204
    assert (await client.get("/api/v1/jobs", headers=bearer)).status == 401
    assert (await client.get("/api/v1/jobs", headers=session_cookie)).status == 401
    assert (await client.get("/api/v1/jobs", headers={"Authorization": basic("cam", password)})).status == 401
    assert (await client.get("/api/v1/jobs", headers={"Authorization": basic("cam", "new one")})).status == 200
    # An admin's change does the same.
    token = await token_for(client, "cam", "new one")
    assert (await client.patch("/api/v1/accounts/cam", json={"password": "third"})).status == 200
    assert (await client.get("/api/v1/jobs", headers={"Authorization": "Bearer " + token})).status == 401


async def test_wrong_current_password_is_refused(client) -> None:
    response = await client.put("/api/v1/auth/password", json={"current_password": "nope", "new_password": "x"})
    assert response.status == 403
    assert (await response.json(content_type=PROBLEM))["field"] == "current_password"


async def test_passwords_are_stored_as_scrypt_never_in_clear(client) -> None:
    await make_account(client, "vms", "viewer", "very secret text")
    rows = await client.app[ACCOUNTS]._db.run(lambda conn: [dict(r) for r in conn.execute("SELECT * FROM account")])
    assert all(r["password_hash"].startswith("scrypt$") for r in rows)
    assert not any("very secret text" in str(value) for r in rows for value in r.values())


# --- tokens and sessions -----------------------------------------------------------


async def test_tokens_show_once_list_revoke_and_expire(client) -> None:
    password = await make_account(client, "vms", "viewer")
    as_vms = {"Authorization": basic("vms", password)}
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    response = await client.post("/api/v1/auth/tokens", json={"name": "short", "expires": soon}, headers=as_vms)
    short = await response.json()
    response = await client.post("/api/v1/auth/tokens", json={"name": "long"}, headers=as_vms)
    long = await response.json()
    assert long["token"].startswith("nvrd_") and long["account"] == "vms" and long["expires"] is None
    listed = await (await client.get("/api/v1/auth/tokens", headers=as_vms)).json()
    assert {t["name"] for t in listed} == {"short", "long"} and all("token" not in t for t in listed)
    # The admin sees everyone's; a viewer only its own.
    await token_for(client, ADMIN, ADMIN_PASSWORD)
    assert len(await (await client.get("/api/v1/auth/tokens")).json()) == 3
    bearer = {"Authorization": f"Bearer {long['token']}"}
    who = await (await client.get("/api/v1/auth/session", headers=bearer)).json()
    assert who == {"account": "vms", "role": "viewer", "method": "bearer", "csrf_token": None}
    assert (await client.delete(f"/api/v1/auth/tokens/{long['id']}", headers=as_vms)).status == 204
    assert (await client.get("/api/v1/jobs", headers=bearer)).status == 401
    await asyncio.sleep(1.1)
    assert (await client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {short['token']}"})).status == 401
    past = await client.post("/api/v1/auth/tokens", json={"name": "x", "expires": "2000-01-01T00:00:00Z"}, headers=as_vms)
    assert past.status == 422 and (await past.json(content_type=PROBLEM))["field"] == "expires"


async def test_viewer_cannot_revoke_someone_elses_token(client) -> None:
    password = await make_account(client, "vms", "viewer")
    response = await client.post("/api/v1/auth/tokens", json={"name": "admin's"})
    token_id = (await response.json())["id"]
    response = await client.delete(f"/api/v1/auth/tokens/{token_id}", headers={"Authorization": basic("vms", password)})
    assert response.status == 404


async def test_session_cookie_flags_and_csrf(client) -> None:
    response = await client.post("/api/v1/auth/session", json={"username": ADMIN, "password": ADMIN_PASSWORD})
    assert response.status == 200
    body = await response.json()
    set_cookie = response.headers["Set-Cookie"]
    for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert flag.lower() in set_cookie.lower(), flag
    cookie = {"Cookie": f"nvrd_session={response.cookies['nvrd_session'].value}", "Authorization": ""}
    who = await (await client.get("/api/v1/auth/session", headers=cookie)).json()
    assert who["method"] == "session" and who["csrf_token"] == body["csrf_token"]
    change = {"name": "x", "password": "p", "role": "viewer"}
    response = await client.post("/api/v1/accounts", json=change, headers=cookie)
    assert response.status == 403 and (await response.json(content_type=PROBLEM))["type"] == "urn:nvrd:problem:csrf"
    response = await client.post("/api/v1/accounts", json=change, headers={**cookie, "X-CSRF-Token": "guess"})
    assert response.status == 403
    response = await client.post("/api/v1/accounts", json=change, headers={**cookie, "X-CSRF-Token": body["csrf_token"]})
    assert response.status == 201
    response = await client.delete("/api/v1/auth/session", headers={**cookie, "X-CSRF-Token": body["csrf_token"]})
    assert response.status == 204
    assert (await client.get("/api/v1/jobs", headers=cookie)).status == 401


# --- Digest, Basic and the brute-force limit ------------------------------------------


def digest_header(challenge: str, user: str, password: str, method: str, uri: str, nc: int = 1) -> str:
    fields = dict(re.findall(r'(\w+)="?([^",]+)"?', challenge))
    algorithm = fields["algorithm"]

    def h(text: str) -> str:
        return (hashlib.md5 if algorithm == "MD5" else hashlib.sha256)(text.encode()).hexdigest()

    cnonce, ncvalue = secrets.token_hex(8), f"{nc:08x}"
    ha1 = h(f"{user}:{fields['realm']}:{password}")
    response = h(f"{ha1}:{fields['nonce']}:{ncvalue}:{cnonce}:auth:{h(f'{method}:{uri}')}")
    return (
        f'Digest username="{user}", realm="{fields["realm"]}", nonce="{fields["nonce"]}", uri="{uri}",'
        f' algorithm={algorithm}, qop=auth, nc={ncvalue}, cnonce="{cnonce}", response="{response}",'
        f' opaque="{fields["opaque"]}"'
    )


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
async def test_digest_both_algorithms_and_no_replay(client, algorithm: str) -> None:
    anonymous = {"Authorization": ""}
    response = await client.get("/api/v1/jobs?kind=x", headers=anonymous)
    assert response.status == 401
    offered = response.headers.getall("WWW-Authenticate")
    assert [c.split(",")[0] for c in offered[:2]] == [
        f'Digest realm="{client.app[AUTH].realm}"'
    ] * 2
    challenge = next(c for c in offered if f"algorithm={algorithm}" in c)
    header = digest_header(challenge, ADMIN, ADMIN_PASSWORD, "GET", "/api/v1/jobs?kind=x")
    assert (await client.get("/api/v1/jobs?kind=x", headers={"Authorization": header})).status == 200
    replay = await client.get("/api/v1/jobs?kind=x", headers={"Authorization": header})
    assert replay.status == 401 and "replay" in (await replay.json(content_type=PROBLEM))["detail"]
    # The next count on the same nonce is fine; another path with this uri is not.
    header2 = digest_header(challenge, ADMIN, ADMIN_PASSWORD, "GET", "/api/v1/jobs?kind=x", nc=2)
    assert (await client.get("/api/v1/jobs?kind=x", headers={"Authorization": header2})).status == 200
    header3 = digest_header(challenge, ADMIN, ADMIN_PASSWORD, "GET", "/api/v1/jobs?kind=x", nc=3)
    assert (await client.get("/api/v1/accounts", headers={"Authorization": header3})).status == 401
    wrong = digest_header(challenge, ADMIN, "wrong", "GET", "/api/v1/jobs?kind=x", nc=4)
    assert (await client.get("/api/v1/jobs?kind=x", headers={"Authorization": wrong})).status == 401


async def test_expired_nonce_is_stale_not_a_failure(client) -> None:
    client.app[AUTH].nonces.lifetime_s = 0.0
    response = await client.get("/api/v1/jobs", headers={"Authorization": ""})
    challenge = response.headers.getall("WWW-Authenticate")[0]
    header = digest_header(challenge, ADMIN, ADMIN_PASSWORD, "GET", "/api/v1/jobs")
    response = await client.get("/api/v1/jobs", headers={"Authorization": header})
    assert response.status == 401
    assert all("stale=true" in c for c in response.headers.getall("WWW-Authenticate") if c.startswith("Digest"))
    assert client.app[AUTH].limiter.retry_after("127.0.0.1") is None
    assert not client.app[AUTH].limiter._addresses


async def test_basic_from_loopback_over_http_is_accepted_and_offered(client) -> None:
    response = await client.get("/api/v1/jobs", headers={"Authorization": ""})
    assert any(c.startswith("Basic ") for c in response.headers.getall("WWW-Authenticate"))
    assert (await client.get("/api/v1/jobs", headers={"Authorization": basic(ADMIN, ADMIN_PASSWORD)})).status == 200


async def test_eleventh_failure_gets_429_and_another_address_still_logs_in(client) -> None:
    wrong = {"Authorization": basic(ADMIN, "wrong")}
    for attempt in range(10):
        assert (await client.get("/api/v1/jobs", headers=wrong)).status == 401, attempt
    response = await client.get("/api/v1/jobs", headers={"Authorization": basic(ADMIN, ADMIN_PASSWORD)})
    assert response.status == 429
    assert int(response.headers["Retry-After"]) >= 60
    assert (await response.json(content_type=PROBLEM))["type"] == "urn:nvrd:problem:too-many-failures"
    # The anonymous session login is blocked from that address too.
    login = await client.post("/api/v1/auth/session", json={"username": ADMIN, "password": ADMIN_PASSWORD})
    assert login.status == 429
    # The account is not locked: a correct login from 127.0.0.2 works.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as other:
        url = client.make_url("/api/v1/jobs")
        async with other.get(url, headers={"Authorization": basic(ADMIN, ADMIN_PASSWORD)}) as response:
            assert response.status == 200
        async with other.get(url, headers={"Authorization": basic(ADMIN, "wrong")}) as response:
            assert response.status == 401


async def test_failed_session_logins_count_too(client) -> None:
    for _ in range(10):
        response = await client.post("/api/v1/auth/session", json={"username": ADMIN, "password": "no"})
        assert response.status == 401
    assert (await client.get("/api/v1/jobs")).status == 429


async def test_unknown_user_and_unknown_scheme(client) -> None:
    assert (await client.get("/api/v1/jobs", headers={"Authorization": basic("ghost", "x")})).status == 401
    assert (await client.get("/api/v1/jobs", headers={"Authorization": "Negotiate abc"})).status == 401
    assert (await client.get("/api/v1/jobs", headers={"Authorization": "Basic !!!"})).status == 401
    assert (await client.get("/api/v1/jobs", headers={"Authorization": "Digest garbage"})).status == 401


# --- the audit log -------------------------------------------------------------------


async def test_audit_records_changes_with_the_right_account(client) -> None:
    password = await make_account(client, "op", "operator")
    as_op = {"Authorization": basic("op", password)}
    await client.post("/api/v1/auth/tokens", json={"name": "op-token"}, headers=as_op)
    await client.put("/api/v1/auth/password", json={"current_password": password, "new_password": "n"}, headers=as_op)
    await client.patch("/api/v1/accounts/op", json={"role": "viewer"})
    await client.delete(f"/api/v1/accounts/{ADMIN}")  # refused: last admin
    await client.patch("/api/v1/system/logging", json={"level": "info"})
    await client.delete("/api/v1/accounts/op")
    records = await (await client.get("/api/v1/logs/audit")).json()
    seen = [(r["account"], r["action"], r["target"], r["result"]) for r in records]
    assert seen == [
        (None, "setup", ADMIN, "ok"),
        (ADMIN, "create-account", "op", "ok"),
        ("op", "create-token", "op-token", "ok"),
        ("op", "change-password", None, "ok"),
        (ADMIN, "update-account", "op", "ok"),
        (ADMIN, "delete-account", ADMIN, "failed"),
        (ADMIN, "set-logging", None, "ok"),
        (ADMIN, "delete-account", "op", "ok"),
    ]
    assert all(r["address"] == "127.0.0.1" and r["time"].endswith("Z") for r in records)
    assert "last administrator" in records[5]["detail"] and records[5]["detail"].startswith("409")
    only_op = await (await client.get("/api/v1/logs/audit?account=op")).json()
    assert {r["action"] for r in only_op} == {"create-token", "change-password"}
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert await (await client.get("/api/v1/logs/audit", params={"from": later})).json() == []
    bad = await client.get("/api/v1/logs/audit?from=yesterday")
    assert bad.status == 422 and (await bad.json(content_type=PROBLEM))["field"] == "from"


async def test_audit_log_is_append_only(client) -> None:
    import sqlite3

    db = client.app[ACCOUNTS]._db
    for statement in ("UPDATE audit SET result = 'ok'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            await db.run(lambda conn, s=statement: conn.execute(s))


# --- HTTP/HTTPS settings ------------------------------------------------------------------


async def test_http_settings_validate_ports_and_warn_for_privileged(client) -> None:
    current = await (await client.get("/api/v1/system/http")).json()
    assert current["access"] == "both"
    for body, field in (
        ({"http_port": 0}, "http_port"),
        ({"https_port": 70000}, "https_port"),
        ({"http_port": "80"}, "http_port"),
        ({"http_port": 8080, "https_port": 8080}, "https_port"),
        ({"access": "ftp"}, "access"),
    ):
        response = await client.patch("/api/v1/system/http", json=body)
        assert response.status == 422, body
        assert (await response.json(content_type=PROBLEM))["field"] == field, body
    response = await client.patch("/api/v1/system/http", json={"http_port": 80, "https_port": 443})
    assert (await response.json())["warnings"] == []
    response = await client.patch("/api/v1/system/http", json={"http_port": 1023})
    body = await response.json()
    assert response.status == 200 and len(body["warnings"]) == 1 and "1023" in body["warnings"][0]
    # No daemon owns listeners under the test client: saved for the next start.
    assert body["applied"] is False and body["http_port"] == 1023


async def test_https_only_still_lets_loopback_in(client) -> None:
    response = await client.patch("/api/v1/system/http", json={"access": "https"})
    assert response.status == 422  # this app has no HTTPS port
    assert "HTTPS is disabled" in (await response.json(content_type=PROBLEM))["detail"]
    response = await client.patch("/api/v1/system/http", json={"access": "https", "https_port": 8443})
    assert response.status == 200
    assert (await client.get("/api/v1/jobs")).status == 200  # loopback over HTTP


@pytest.mark.parametrize("offered", [("SHA-256", "MD5"), ("MD5",)])
async def test_curl_digest_in_process(client, offered: tuple[str, ...]) -> None:
    """A real client for each algorithm: curl picks SHA-256 when it is offered, so
    offering MD5 alone makes it use MD5."""
    client.app[AUTH].digest_algorithms = offered
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-v", "--digest", "-u", f"{ADMIN}:{ADMIN_PASSWORD}", "-o", "/dev/null",
        "-w", "%{http_code}", str(client.make_url("/api/v1/auth/session")),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert out.decode() == "200", err.decode()
    sent = [line for line in err.decode().splitlines() if line.startswith("> Authorization: Digest")]
    assert sent and f"algorithm={offered[0]}" in sent[0]
    # An algorithm that is not offered is not accepted either.
    if offered == ("MD5",):
        response = await client.get("/api/v1/jobs", headers={"Authorization": ""})
        challenge = response.headers.getall("WWW-Authenticate")[0].replace("MD5", "SHA-256")
        header = digest_header(challenge, ADMIN, ADMIN_PASSWORD, "GET", "/api/v1/jobs")
        assert (await client.get("/api/v1/jobs", headers={"Authorization": header})).status == 401
