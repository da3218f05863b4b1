"""HTTP Digest (RFC 7616): challenges, parsing, nonces and response checking.

Only `qop=auth`, with SHA-256 (offered first, as RFC 7616 §3.7 asks) and MD5 (what
most cameras' and VMSes' clients still send). `-sess` variants and `auth-int` are
not offered. Nonces are random, held by the server, valid for `lifetime_s`, and each
(nonce, nc) pair is accepted once: the nonce count must be new within a sliding
window of the highest count seen, so a captured request cannot be replayed while a
client that sends several requests on one nonce over parallel connections (whose
counts arrive slightly out of order) still works. An unknown or expired nonce with
an otherwise correct response gets `stale=true`, and clients retry without asking
the user again.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from nvrd.accounts import digest_hash

ALGORITHMS = ("SHA-256", "MD5")
REPLAY_WINDOW = 256

_PARAM = re.compile(r'\s*([A-Za-z0-9_*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))\s*(?:,|$)')


def parse_params(text: str) -> dict[str, str] | None:
    """`k=v, k="v"` pairs of an Authorization header (after the scheme), or None if
    it is not well formed."""
    params: dict[str, str] = {}
    position = 0
    text = text.strip()
    while position < len(text):
        match = _PARAM.match(text, position)
        if match is None:
            return None
        key = match.group(1).lower()
        quoted, token = match.group(2), match.group(3)
        params[key] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else token
        position = match.end()
    return params


class NonceState(Enum):
    OK = "ok"
    STALE = "stale"  # unknown, evicted or expired: ask again with stale=true
    REPLAY = "replay"  # this nonce count was already used


@dataclass
class _Nonce:
    issued: float
    highest: int = 0
    seen: int = 0  # bit i set: count (highest - i) was used


class DigestNonces:
    """Nonces the server handed out. Bounded: past `max_outstanding`, the oldest are
    forgotten, which only makes their clients retry once (stale=true)."""

    def __init__(
        self,
        lifetime_s: float = 300.0,
        max_outstanding: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifetime_s = lifetime_s
        self.max_outstanding = max_outstanding
        self._clock = clock
        self._nonces: OrderedDict[str, _Nonce] = OrderedDict()
        self.opaque = secrets.token_hex(16)

    def issue(self) -> str:
        nonce = secrets.token_urlsafe(24)
        self._nonces[nonce] = _Nonce(issued=self._clock())
        while len(self._nonces) > self.max_outstanding:
            self._nonces.popitem(last=False)
        return nonce

    def use(self, nonce: str, count: int) -> NonceState:
        """Mark (nonce, count) used; call only once the response itself checked out."""
        state = self._nonces.get(nonce)
        if state is None:
            return NonceState.STALE
        if self._clock() - state.issued >= self.lifetime_s:
            del self._nonces[nonce]
            return NonceState.STALE
        if count < 1:
            return NonceState.REPLAY
        if count > state.highest:
            shift = count - state.highest
            state.seen = ((state.seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            state.highest = count
            return NonceState.OK
        offset = state.highest - count
        if offset >= REPLAY_WINDOW or state.seen & (1 << offset):
            return NonceState.REPLAY
        state.seen |= 1 << offset
        return NonceState.OK


def challenges(
    realm: str, nonce: str, opaque: str, stale: bool = False, algorithms: tuple[str, ...] = ALGORITHMS
) -> list[str]:
    """WWW-Authenticate values in order of preference (SHA-256 first); they share
    the nonce."""
    extra = ", stale=true" if stale else ""
    return [
        f'Digest realm="{realm}", qop="auth", algorithm={algorithm}, nonce="{nonce}",'
        f' opaque="{opaque}"{extra}'
        for algorithm in algorithms
    ]


@dataclass(frozen=True)
class DigestCredentials:
    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    cnonce: str
    nc: str
    qop: str

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> DigestCredentials | None:
        """None when a required parameter is missing or not supported."""
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm not in ALGORITHMS or params.get("qop") != "auth":
            return None
        try:
            credentials = cls(
                username=params["username"], realm=params["realm"], nonce=params["nonce"],
                uri=params["uri"], response=params["response"].lower(), algorithm=algorithm,
                cnonce=params["cnonce"], nc=params["nc"], qop="auth",
            )
        except KeyError:
            return None
        if not re.fullmatch(r"[0-9a-fA-F]{8}", credentials.nc):
            return None
        return credentials

    @property
    def count(self) -> int:
        return int(self.nc, 16)

    def expected(self, ha1: str, method: str) -> str:
        ha2 = digest_hash(self.algorithm, f"{method}:{self.uri}")
        return digest_hash(
            self.algorithm, f"{ha1}:{self.nonce}:{self.nc}:{self.cnonce}:{self.qop}:{ha2}"
        )

    def matches(self, ha1: str, method: str) -> bool:
        return hmac.compare_digest(self.expected(ha1, method), self.response)
