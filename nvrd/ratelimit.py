"""Brute-force limit on failed logins, per client address.

After `max_failures` failures from one address within `window_s`, that address is
refused (429, Retry-After) for `base_block_s`, doubling with each further block up
to `max_block_s`. Accounts are never locked: an attacker must not be able to lock
the administrator out by failing on purpose, and a correct login from any other
address still works.

Memory is bounded: at most `max_addresses` are tracked, the least recently failing
dropped first (which only forgives that address early).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Address:
    failures: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0
    blocks: int = 0  # consecutive blocks; a quiet window resets it


class FailureLimiter:
    def __init__(
        self,
        max_failures: int = 10,
        window_s: float = 300.0,
        base_block_s: float = 60.0,
        max_block_s: float = 3600.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.base_block_s = base_block_s
        self.max_block_s = max_block_s
        self.max_addresses = max_addresses
        self._clock = clock
        self._addresses: OrderedDict[str, _Address] = OrderedDict()

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until `address` may try again, or None if it may now."""
        entry = self._addresses.get(address)
        if entry is None:
            return None
        remaining = entry.blocked_until - self._clock()
        return math.ceil(remaining) if remaining > 0 else None

    def failure(self, address: str) -> int | None:
        """Count a failure; returns the block in seconds if this one starts a block."""
        now = self._clock()
        entry = self._addresses.pop(address, None) or _Address()
        self._addresses[address] = entry  # most recent last
        while len(self._addresses) > self.max_addresses:
            self._addresses.popitem(last=False)
        while entry.failures and entry.failures[0] <= now - self.window_s:
            entry.failures.popleft()
        if not entry.failures and now - entry.blocked_until > self.window_s:
            entry.blocks = 0  # a quiet window since the last block forgives
        entry.failures.append(now)
        if len(entry.failures) < self.max_failures:
            return None
        block = min(self.base_block_s * 2**entry.blocks, self.max_block_s)
        entry.blocks += 1
        entry.blocked_until = now + block
        entry.failures.clear()
        return math.ceil(block)
