"""Accounts, roles, password hashing, API tokens and browser sessions.

The one owner of who may log in. Accounts and tokens live in the device database
(migration 2) and are mirrored in memory: there are at most 100 accounts and a few
tokens each, and authentication runs on every request, so it must not wait on a
database thread. Every change writes the database first, then the mirror.

Passwords are stored as scrypt hashes (memory-hard). HTTP Digest cannot work from
such a hash: it needs HA1 = H(user:realm:password) for MD5 and for SHA-256, so those
are kept too, bound to this device's realm (docs/design/auth.md says why that is
acceptable and what it costs). A VMS that polls with Basic would pay one scrypt per
request; a keyed in-memory cache of the last good verification per account avoids
that (VerifiedCache below).

Sessions (browser cookies) are held in memory only: a restart logs browsers out,
which is the safe direction.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from nvrd.api.roles import Role
from nvrd.db import Database
from nvrd.errors import Conflict, CredentialFailure, Forbidden, Invalid, NotFound, Unauthenticated

MAX_ACCOUNTS = 100
MAX_TOKENS_PER_ACCOUNT = 50
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,32}")
PASSWORD_MAX = 64
# Roles an account can hold; anonymous is what nobody logged in has.
ACCOUNT_ROLES = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)
DIGEST_ALGORITHMS = ("SHA-256", "MD5")
TOKEN_PREFIX = "nvrd_"
SESSION_LIFETIME = timedelta(hours=8)
MAX_SESSIONS = 1000
# How long a successful Basic verification stands in for scrypt (see VerifiedCache).
VERIFIED_TTL_S = 600.0


class WrongPassword(CredentialFailure, Forbidden):
    """A logged-in account gave a wrong current password (403: the session stands)."""


class BadCredentials(CredentialFailure, Unauthenticated):
    """A login with a wrong name or password."""


class SetupRequired(Unauthenticated):
    """No account exists yet: nothing can log in before the first administrator."""

    code = "setup-required"

    def __init__(self) -> None:
        super().__init__("no administrator exists yet: create the first one with POST /api/v1/setup")


def check_name(name: str, field: str = "username") -> None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise Invalid(
            f"{field}: 1 to 32 letters, digits, '-', '_' or '.'", field=field
        )


def check_password(password: str, field: str = "password") -> None:
    """1 to 64 printable ASCII characters (codes 32 to 126), as the reference
    recorder defines them: anything else cannot be typed the same way on every VMS."""
    if not isinstance(password, str) or not password:
        raise Invalid(f"{field}: must not be empty", field=field)
    if len(password) > PASSWORD_MAX:
        raise Invalid(f"{field}: at most {PASSWORD_MAX} characters", field=field)
    bad = next((c for c in password if not 32 <= ord(c) <= 126), None)
    if bad is not None:
        raise Invalid(
            f"{field}: only printable ASCII characters (codes 32 to 126); "
            f"found code {ord(bad)}",
            field=field,
        )


def parse_role(value: str, field: str = "role") -> Role:
    for role in ACCOUNT_ROLES:
        if role.label == value:
            return role
    raise Invalid(f"{field}: one of viewer, operator, admin", field=field)


@dataclass(frozen=True)
class ScryptCost:
    """scrypt parameters. The default costs 32 MiB and about 0.12 s on the 2-core
    build machine; tests pass a cheap one. Each hash records its own parameters, so
    raising the default later still verifies the old hashes."""

    n: int = 2**15
    r: int = 8
    p: int = 1


def hash_password(password: str, cost: ScryptCost) -> str:
    salt = secrets.token_bytes(16)
    key = Scrypt(salt=salt, length=32, n=cost.n, r=cost.r, p=cost.p).derive(password.encode())
    return "$".join(
        ["scrypt", str(cost.n), str(cost.r), str(cost.p), _b64(salt), _b64(key)]
    )


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    derived = Scrypt(salt=_unb64(salt), length=32, n=int(n), r=int(r), p=int(p)).derive(
        password.encode()
    )
    return hmac.compare_digest(derived, _unb64(key))


def digest_hash(algorithm: str, data: str) -> str:
    if algorithm == "MD5":
        return hashlib.md5(data.encode(), usedforsecurity=False).hexdigest()
    if algorithm == "SHA-256":
        return hashlib.sha256(data.encode()).hexdigest()
    raise ValueError(f"unsupported digest algorithm {algorithm!r}")


def digest_ha1(name: str, realm: str, password: str, algorithm: str) -> str:
    return digest_hash(algorithm, f"{name}:{realm}:{password}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@dataclass(frozen=True)
class Account:
    name: str
    role: Role
    password_hash: str
    ha1: dict[str, str]  # digest algorithm -> HA1 hex, for `realm`
    realm: str
    created: datetime
    updated: datetime


@dataclass(frozen=True)
class Token:
    id: str
    account: str
    name: str
    secret_hash: str  # sha256 hex of the secret; the secret itself is shown once
    created: datetime
    expires: datetime | None

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires


@dataclass(frozen=True)
class Session:
    account: str
    csrf_token: str
    created: datetime
    expires: datetime


@dataclass(frozen=True)
class Principal:
    """Who a request is: an account and how it proved it, or anonymous."""

    account: str | None
    role: Role
    method: str  # "basic", "digest", "bearer", "session" or "none"
    token_id: str | None = None
    session_csrf: str | None = None


ANONYMOUS = Principal(account=None, role=Role.ANONYMOUS, method="none")


@dataclass
class VerifiedCache:
    """The last successful password verification of each account, so that a VMS
    polling with Basic pays one scrypt per TTL instead of one per request.

    An entry is HMAC-SHA256(key, name NUL password) under a random key made at
    start-up and never written anywhere. Only a verification that scrypt confirmed
    makes an entry; a password change or deletion drops it. A different password
    misses and goes to scrypt (and, if wrong, to the brute-force count), so the
    cache never accepts anything scrypt would refuse within its TTL."""

    ttl_s: float = VERIFIED_TTL_S
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    entries: dict[str, tuple[bytes, float]] = field(default_factory=dict)

    def _mac(self, name: str, password: str) -> bytes:
        return hmac.new(self.key, f"{name}\0{password}".encode(), hashlib.sha256).digest()

    def hit(self, name: str, password: str) -> bool:
        entry = self.entries.get(name)
        if entry is None or time.monotonic() >= entry[1]:
            return False
        return hmac.compare_digest(entry[0], self._mac(name, password))

    def remember(self, name: str, password: str) -> None:
        self.entries[name] = (self._mac(name, password), time.monotonic() + self.ttl_s)

    def forget(self, name: str) -> None:
        self.entries.pop(name, None)


def _account_from_row(row: sqlite3.Row) -> Account:
    return Account(
        name=row["name"],
        role=Role[row["role"].upper()],
        password_hash=row["password_hash"],
        ha1={"MD5": row["ha1_md5"], "SHA-256": row["ha1_sha256"]},
        realm=row["realm"],
        created=datetime.fromisoformat(row["created"]),
        updated=datetime.fromisoformat(row["updated"]),
    )


def _token_from_row(row: sqlite3.Row) -> Token:
    return Token(
        id=row["id"],
        account=row["account"],
        name=row["name"],
        secret_hash=row["secret_hash"],
        created=datetime.fromisoformat(row["created"]),
        expires=_parse(row["expires"]),
    )


def _secret_hash(secret: str) -> str:
    # Tokens and session ids are 256-bit random: a fast hash is enough, and it keeps
    # a database copy from being usable as credentials.
    return hashlib.sha256(secret.encode()).hexdigest()


class AccountsService:
    def __init__(self, db: Database, realm: str, cost: ScryptCost | None = None) -> None:
        self._db = db
        self.realm = realm
        self._cost = cost or ScryptCost()
        self._accounts: dict[str, Account] = {}
        self._tokens: dict[str, Token] = {}  # by secret hash
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # by id hash
        self._verified = VerifiedCache()
        # Check-then-write changes (the last admin, the account limit) must not
        # interleave.
        self._lock = asyncio.Lock()
        # scrypt takes 32 MiB and a core for 0.1 s: at most two at once, so a burst
        # of logins cannot take the recorder's memory or both cores.
        self._hashing = asyncio.Semaphore(2)
        # Unknown names still cost one scrypt, so timing doesn't tell which exist.
        self._dummy_hash: str | None = None

    async def load(self) -> None:
        def _load(conn: sqlite3.Connection) -> tuple[list[Account], list[Token]]:
            accounts = [_account_from_row(r) for r in conn.execute("SELECT * FROM account")]
            tokens = [_token_from_row(r) for r in conn.execute("SELECT * FROM token")]
            return accounts, tokens

        accounts, tokens = await self._db.run(_load)
        self._accounts = {a.name: a for a in accounts}
        self._tokens = {t.secret_hash: t for t in tokens}

    # --- accounts ----------------------------------------------------------------

    @property
    def setup_required(self) -> bool:
        return not self._accounts

    def list(self) -> list[Account]:
        return sorted(self._accounts.values(), key=lambda a: a.name)

    def get(self, name: str) -> Account:
        try:
            return self._accounts[name]
        except KeyError:
            raise NotFound(f"no account {name!r}", account=name) from None

    def find(self, name: str) -> Account | None:
        return self._accounts.get(name)

    async def _hash(self, password: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(hash_password, password, self._cost)

    def _ha1(self, name: str, password: str) -> dict[str, str]:
        return {a: digest_ha1(name, self.realm, password, a) for a in DIGEST_ALGORITHMS}

    async def setup(self, name: str, password: str) -> Account:
        """The first administrator; only while no account exists."""
        check_name(name)
        check_password(password)
        password_hash = await self._hash(password)
        async with self._lock:
            if self._accounts:
                raise Conflict("setup is done: an administrator already exists")
            return await self._insert(name, Role.ADMIN, password, password_hash)

    async def create(self, name: str, password: str, role: Role) -> Account:
        check_name(name)
        check_password(password)
        if role not in ACCOUNT_ROLES:
            raise Invalid("role: one of viewer, operator, admin", field="role")
        password_hash = await self._hash(password)
        async with self._lock:
            if name in self._accounts:
                raise Conflict(f"an account {name!r} exists", account=name)
            if len(self._accounts) >= MAX_ACCOUNTS:
                raise Conflict(f"at most {MAX_ACCOUNTS} accounts")
            return await self._insert(name, role, password, password_hash)

    async def _insert(self, name: str, role: Role, password: str, password_hash: str) -> Account:
        now = _now()
        account = Account(
            name=name, role=role, password_hash=password_hash, ha1=self._ha1(name, password),
            realm=self.realm, created=now, updated=now,
        )

        def _write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO account (name, role, password_hash, ha1_md5, ha1_sha256, realm,"
                " created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, role.label, password_hash, account.ha1["MD5"], account.ha1["SHA-256"],
                 self.realm, _iso(now), _iso(now)),
            )

        await self._db.run(_write)
        self._accounts[name] = account
        return account

    def _admins(self) -> int:
        return sum(1 for a in self._accounts.values() if a.role == Role.ADMIN)

    async def update(self, name: str, role: Role | None = None, password: str | None = None) -> Account:
        if password is not None:
            check_password(password)
        if role is not None and role not in ACCOUNT_ROLES:
            raise Invalid("role: one of viewer, operator, admin", field="role")
        password_hash = await self._hash(password) if password is not None else None
        async with self._lock:
            account = self.get(name)
            if role is not None and account.role == Role.ADMIN and role != Role.ADMIN and self._admins() == 1:
                raise Conflict("the last administrator cannot be demoted", account=name, field="role")
            changed = replace(account, updated=_now())
            if role is not None:
                changed = replace(changed, role=role)
            if password is not None and password_hash is not None:
                changed = replace(
                    changed, password_hash=password_hash, ha1=self._ha1(name, password), realm=self.realm
                )
            await self._db.run(lambda conn: self._write_account(conn, changed, password is not None))
            self._accounts[name] = changed
            if password is not None:
                self._end_credentials(name)
            return changed

    def _write_account(self, conn: sqlite3.Connection, account: Account, password_changed: bool) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "UPDATE account SET role = ?, password_hash = ?, ha1_md5 = ?, ha1_sha256 = ?,"
                " realm = ?, updated = ? WHERE name = ?",
                (account.role.label, account.password_hash, account.ha1["MD5"],
                 account.ha1["SHA-256"], account.realm, _iso(account.updated), account.name),
            )
            if password_changed:
                # A password change ends every token: whoever held the old password
                # may have made them.
                conn.execute("DELETE FROM token WHERE account = ?", (account.name,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _end_credentials(self, name: str) -> None:
        """Drop every session, token and cached verification of an account."""
        self._verified.forget(name)
        self._tokens = {h: t for h, t in self._tokens.items() if t.account != name}
        for key in [k for k, s in self._sessions.items() if s.account == name]:
            del self._sessions[key]

    async def change_own_password(self, name: str, current: str, new: str) -> Account:
        """Self-service: any account, given its current password."""
        check_password(new, field="new_password")
        if await self.verify_password(name, current) is None:
            raise WrongPassword("the current password is wrong", field="current_password")
        return await self.update(name, password=new)

    async def delete(self, name: str) -> None:
        async with self._lock:
            account = self.get(name)
            if account.role == Role.ADMIN and self._admins() == 1:
                raise Conflict("the last administrator cannot be deleted", account=name)
            # Tokens go with the account (ON DELETE CASCADE).
            await self._db.run(lambda conn: conn.execute("DELETE FROM account WHERE name = ?", (name,)))
            del self._accounts[name]
            self._end_credentials(name)

    # --- passwords ---------------------------------------------------------------

    async def verify_password(self, name: str, password: str) -> Account | None:
        """The account if the password is right, else None. Costs one scrypt unless
        the same password was verified for this account within the cache TTL."""
        account = self._accounts.get(name)
        if account is not None and self._verified.hit(name, password):
            return account
        async with self._hashing:
            if account is None:
                if self._dummy_hash is None:
                    self._dummy_hash = await asyncio.to_thread(hash_password, "-", self._cost)
                await asyncio.to_thread(verify_password, password, self._dummy_hash)
                return None
            ok = await asyncio.to_thread(verify_password, password, account.password_hash)
        if not ok:
            return None
        # The account may have changed while scrypt ran (its password, or deleted).
        current = self._accounts.get(name)
        if current is None or current.password_hash != account.password_hash:
            return None
        self._verified.remember(name, password)
        if current.realm != self.realm:
            current = await self._rebind_realm(current, password)
        return current

    async def _rebind_realm(self, account: Account, password: str) -> Account:
        """The device's realm changed since this HA1 was made: Digest for this
        account works again once the password has been seen once (Basic or login)."""
        changed = replace(account, ha1=self._ha1(account.name, password), realm=self.realm)
        await self._db.run(lambda conn: self._write_account(conn, changed, False))
        self._accounts[account.name] = changed
        return changed

    def digest_ha1(self, name: str, algorithm: str) -> tuple[Account, str] | None:
        account = self._accounts.get(name)
        if account is None or account.realm != self.realm:
            return None
        return account, account.ha1[algorithm]

    # --- tokens ------------------------------------------------------------------

    def tokens(self, account: str | None = None) -> list[Token]:
        now = _now()
        return sorted(
            (t for t in self._tokens.values() if (account is None or t.account == account) and not t.expired(now)),
            key=lambda t: (t.created, t.id),
        )

    async def create_token(self, account: str, name: str, expires: datetime | None) -> tuple[Token, str]:
        """A new token and its secret; the secret is never stored or shown again."""
        if not name or len(name) > 64:
            raise Invalid("name: 1 to 64 characters", field="name")
        now = _now()
        if expires is not None:
            if expires.tzinfo is None:
                raise Invalid("expires: give a time zone (e.g. Z)", field="expires")
            if expires <= now:
                raise Invalid("expires: must be in the future", field="expires")
        async with self._lock:
            self.get(account)
            if len(self.tokens(account)) >= MAX_TOKENS_PER_ACCOUNT:
                raise Conflict(f"at most {MAX_TOKENS_PER_ACCOUNT} tokens per account; revoke one first")
            secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
            token = Token(
                id=secrets.token_hex(8), account=account, name=name,
                secret_hash=_secret_hash(secret), created=now, expires=expires,
            )

            def _write(conn: sqlite3.Connection) -> None:
                # Expired tokens are dropped here rather than by a timer.
                conn.execute("DELETE FROM token WHERE expires IS NOT NULL AND expires <= ?", (_iso(now),))
                conn.execute(
                    "INSERT INTO token (id, account, name, secret_hash, created, expires)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (token.id, account, name, token.secret_hash, _iso(now),
                     None if expires is None else _iso(expires)),
                )

            await self._db.run(_write)
            self._tokens = {h: t for h, t in self._tokens.items() if not t.expired(now)}
            self._tokens[token.secret_hash] = token
            return token, secret

    async def revoke_token(self, token_id: str, by: Principal) -> Token:
        """Revoke one's own token; an administrator may revoke anyone's."""
        token = next((t for t in self._tokens.values() if t.id == token_id), None)
        if token is None or (by.role < Role.ADMIN and token.account != by.account):
            raise NotFound(f"no token {token_id!r}", token=token_id)
        await self._db.run(lambda conn: conn.execute("DELETE FROM token WHERE id = ?", (token_id,)))
        self._tokens.pop(token.secret_hash, None)
        return token

    def bearer(self, secret: str) -> Principal | None:
        token = self._tokens.get(_secret_hash(secret))
        if token is None or token.expired(_now()):
            return None
        account = self._accounts.get(token.account)
        if account is None:
            return None
        return Principal(account=account.name, role=account.role, method="bearer", token_id=token.id)

    # --- sessions ----------------------------------------------------------------

    def start_session(self, account: Account) -> tuple[str, Session]:
        """A browser session: the cookie value and the session (with its CSRF token)."""
        now = _now()
        session_id = secrets.token_urlsafe(32)
        session = Session(
            account=account.name, csrf_token=secrets.token_urlsafe(24),
            created=now, expires=now + SESSION_LIFETIME,
        )
        self._sessions[_secret_hash(session_id)] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session_id, session

    def session(self, session_id: str) -> Principal | None:
        key = _secret_hash(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        if _now() >= session.expires:
            del self._sessions[key]
            return None
        account = self._accounts.get(session.account)
        if account is None:
            return None
        return Principal(
            account=account.name, role=account.role, method="session", session_csrf=session.csrf_token
        )

    def end_session(self, session_id: str) -> None:
        self._sessions.pop(_secret_hash(session_id), None)
