"""The authentication state of one app, on an AppKey (no module-level state)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nvrd.accounts import AccountsService
from nvrd.api.digest import DigestNonces
from nvrd.ratelimit import FailureLimiter


@dataclass
class Authenticator:
    accounts: AccountsService
    limiter: FailureLimiter = field(default_factory=FailureLimiter)
    nonces: DigestNonces = field(default_factory=DigestNonces)

    @property
    def realm(self) -> str:
        return self.accounts.realm
