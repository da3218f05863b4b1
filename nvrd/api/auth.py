"""Authentication: who a request is, and whether its role may call the endpoint.

Every route declares its role (`@requires`, nvrd/api/roles.py); this middleware
enforces the declarations. A request proves who it is with one of:

- HTTP Digest (RFC 7616, SHA-256 or MD5, qop=auth): nvrd/api/digest.py;
- Basic, only over HTTPS or from loopback, where the password is not on the wire
  in the clear;
- a Bearer token (`POST /api/v1/auth/tokens`);
- the session cookie of a browser (`POST /api/v1/auth/session`), with the session's
  CSRF token in `X-CSRF-Token` on every unsafe method.

Until the first administrator exists, every endpoint that is not anonymous answers
401 naming setup. Failures are counted per client address (nvrd/ratelimit.py) and
logged to the access log; past the limit the address gets 429 with Retry-After.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDict

from nvrd.accounts import ANONYMOUS, Principal, SetupRequired
from nvrd.api.authstate import Authenticator
from nvrd.api.digest import DigestCredentials, NonceState, challenges, parse_params
from nvrd.api.errors import problem
from nvrd.api.keys import AUTH, HTTP_SETTINGS, PRINCIPAL
from nvrd.api.roles import Role, required_role
from nvrd.errors import CredentialFailure
from nvrd.system.http import Access

access_log = logging.getLogger("nvrd.access")

SESSION_COOKIE = "nvrd_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refused(Exception):
    """Credentials were given and are wrong (`counted`), or unusable as sent."""

    def __init__(
        self, reason: str, counted: bool = True, stale: bool = False, user: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.user = user
        self.counted = counted
        self.stale = stale


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def cleartext_password_allowed(request: web.Request) -> bool:
    """A password may travel as itself (Basic, a login form) only inside TLS or
    without leaving the machine."""
    return request.secure or is_loopback(request.remote)


async def identify(request: web.Request, auth: Authenticator) -> Principal | None:
    """The principal the request proves, None if it offers no credentials.
    Raises Refused for wrong or unusable credentials."""
    header = request.headers.get("Authorization", "").strip() or None
    if header is None:
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id is None:
            return None
        principal = auth.accounts.session(session_id)
        if principal is None:
            raise Refused("the session has ended; log in again", counted=False)
        return principal
    scheme, _, rest = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        principal = auth.accounts.bearer(rest.strip())
        if principal is None:
            raise Refused("unknown, revoked or expired token")
        return principal
    if scheme == "basic":
        return await _basic(request, auth, rest.strip())
    if scheme == "digest":
        return _digest(request, auth, rest)
    raise Refused(f"unsupported authorization scheme {scheme!r}", counted=False)


async def _basic(request: web.Request, auth: Authenticator, encoded: str) -> Principal:
    if not cleartext_password_allowed(request):
        # Not counted: the password may be right, and the client must learn to use
        # Digest or HTTPS rather than be blocked.
        raise Refused("Basic authentication is accepted only over HTTPS or from loopback;"
                      " use Digest or HTTPS", counted=False)
    try:
        name, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise Refused("malformed Basic credentials") from None
    if not sep:
        raise Refused("malformed Basic credentials")
    account = await auth.accounts.verify_password(name, password)
    if account is None:
        raise Refused("wrong user name or password", user=name)
    return Principal(account=account.name, role=account.role, method="basic")


def _digest(request: web.Request, auth: Authenticator, rest: str) -> Principal:
    params = parse_params(rest)
    credentials = DigestCredentials.parse(params) if params is not None else None
    if credentials is None or credentials.algorithm not in auth.digest_algorithms:
        raise Refused(
            "malformed or unsupported Digest credentials"
            f" (qop=auth, {' or '.join(auth.digest_algorithms)})"
        )
    if credentials.realm != auth.realm:
        raise Refused("wrong realm", counted=False, stale=True)
    if credentials.uri != request.raw_path:
        raise Refused("the Digest uri is not this request's")
    found = auth.accounts.digest_ha1(credentials.username, credentials.algorithm)
    if found is None or not credentials.matches(found[1], request.method):
        raise Refused("wrong user name or password", user=credentials.username)
    state = auth.nonces.use(credentials.nonce, credentials.count)
    if state is NonceState.STALE:
        raise Refused("the nonce has expired", counted=False, stale=True)
    if state is NonceState.REPLAY:
        raise Refused("the nonce count was used already (replay)", user=credentials.username)
    account = found[0]
    return Principal(account=account.name, role=account.role, method="digest")


def unauthorized(request: web.Request, auth: Authenticator, detail: str, stale: bool = False) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict()
    nonce = auth.nonces.issue()
    for value in challenges(auth.realm, nonce, auth.nonces.opaque, stale, auth.digest_algorithms):
        headers.add("WWW-Authenticate", value)
    if cleartext_password_allowed(request):
        headers.add("WWW-Authenticate", f'Basic realm="{auth.realm}", charset="UTF-8"')
    return problem(401, detail, type_="urn:nvrd:problem:unauthenticated", headers=headers,
                   instance=request.path)


def too_many(request: web.Request, retry_after: int) -> web.Response:
    return problem(
        429, f"too many failed logins from {request.remote}; try again in {retry_after} s",
        type_="urn:nvrd:problem:too-many-failures", headers={"Retry-After": str(retry_after)},
        instance=request.path,
    )


def _log_failure(request: web.Request, reason: str, status: int, user: str | None = None) -> None:
    access_log.warning(
        "%s %s %s: %s", request.remote, request.method, request.path, reason,
        extra={"address": request.remote, "status": status, "user": user or "-"},
    )


def count_failure(
    request: web.Request, auth: Authenticator, reason: str, user: str | None = None
) -> None:
    address = request.remote or "-"
    block = auth.limiter.failure(address)
    _log_failure(request, reason, 401, user)
    if block is not None:
        access_log.warning(
            "%s blocked for %d s after repeated failed logins", address, block,
            extra={"address": address, "block_s": block},
        )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    match = request.match_info
    if match.http_exception is not None:
        return await handler(request)  # 404 or 405: nothing here to protect
    # A route without a declaration is for administrators only (fail closed); a
    # unit test makes sure there is none.
    role = required_role(match.handler)
    if role is None:
        role = Role.ADMIN
    auth = request.app[AUTH]
    address = request.remote or "-"
    refused = _scheme_refused(request)
    if refused is not None:
        return refused
    if role == Role.ANONYMOUS:
        request[PRINCIPAL] = ANONYMOUS
        # The anonymous changes (setup, the session login) carry passwords: a
        # blocked address waits for them too.
        if request.method not in SAFE_METHODS:
            retry_after = auth.limiter.retry_after(address)
            if retry_after is not None:
                _log_failure(request, "refused: too many failures", 429)
                return too_many(request, retry_after)
        return await _run(request, handler, auth)
    if auth.accounts.setup_required:
        raise SetupRequired()
    retry_after = auth.limiter.retry_after(address)
    if retry_after is not None:
        _log_failure(request, "refused: too many failures", 429)
        return too_many(request, retry_after)
    try:
        principal = await identify(request, auth)
    except Refused as exc:
        if exc.counted:
            count_failure(request, auth, exc.reason, exc.user)
        else:
            _log_failure(request, exc.reason, 401, exc.user)
        return unauthorized(request, auth, exc.reason, stale=exc.stale)
    if principal is None:
        return unauthorized(request, auth, "authentication required")
    if principal.role < role:
        _log_failure(request, f"{principal.account} ({principal.role.label}) needs {role.label}", 403)
        return problem(
            403, f"this needs the {role.label} role; {principal.account} is {principal.role.label}",
            type_="urn:nvrd:problem:forbidden", instance=request.path,
        )
    if principal.method == "session" and request.method not in SAFE_METHODS:
        token = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(token.encode(), (principal.session_csrf or "").encode()):
            _log_failure(request, "missing or wrong CSRF token", 403)
            return problem(
                403, f"a session needs its CSRF token in {CSRF_HEADER} on {request.method}",
                type_="urn:nvrd:problem:csrf", instance=request.path,
            )
    request[PRINCIPAL] = principal
    return await _run(request, handler, auth)


def _scheme_refused(request: web.Request) -> web.Response | None:
    """The administrator's choice of HTTP, HTTPS or both (loopback may use both)."""
    access = request.app[HTTP_SETTINGS].current.access
    if access == Access.BOTH or is_loopback(request.remote):
        return None
    if access == Access.HTTPS and not request.secure:
        return problem(403, "this recorder accepts HTTPS only", type_="urn:nvrd:problem:https-only",
                       instance=request.path)
    if access == Access.HTTP and request.secure:
        return problem(403, "this recorder accepts HTTP only", type_="urn:nvrd:problem:http-only",
                       instance=request.path)
    return None


async def _run(request: web.Request, handler: Handler, auth: Authenticator) -> web.StreamResponse:
    """Run the handler; a wrong password found inside it (login, password change)
    counts toward the address's limit like one in a header."""
    try:
        return await handler(request)
    except CredentialFailure as exc:
        count_failure(request, auth, str(exc))
        raise


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line per request at info (`nvrd.access`); failures are logged at warning
    where they are decided."""
    response = await handler(request)
    if access_log.isEnabledFor(logging.INFO):
        principal = request.get(PRINCIPAL)
        access_log.info(
            "%s %s %s %d %s", request.remote, request.method, request.path_qs, response.status,
            principal.account if principal and principal.account else "-",
            extra={"address": request.remote, "status": response.status},
        )
    return response
