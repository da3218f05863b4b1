"""The authentication state of one app, on an AppKey (no module-level state)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nvrd.accounts import AccountsService
from nvrd.api.digest import ALGORITHMS, DigestNonces
from nvrd.ratelimit import FailureLimiter


@dataclass
class Authenticator:
    accounts: AccountsService
    limiter: FailureLimiter = field(default_factory=FailureLimiter)
    nonces: DigestNonces = field(default_factory=DigestNonces)
    # The Digest algorithms offered and accepted, in order of preference; a
    # deployment whose clients all speak SHA-256 can drop MD5.
    digest_algorithms: tuple[str, ...] = ALGORITHMS

    @property
    def realm(self) -> str:
        return self.accounts.realm
