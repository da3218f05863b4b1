"""Authenticated API requests: Basic over HTTPS, Digest over HTTP, Bearer over HTTP.

Issue 6's targets on the 2-core machine: >= 2,000 req/s with a Bearer token and
>= 1,000 req/s with Basic, p99 under 50 ms, for authenticated GET /api/v1/status
(answered from memory) with 32 keep-alive connections. The load client is aiohttp in this
same machine, so it takes CPU from the daemon: the figures are a floor.

Loopback only; a bounded number of requests per run.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import secrets
import ssl
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.daemon_api import free_port, start_to_listening, stop, write_config

CONNECTIONS = 32
REQUESTS = 8000
ROUNDS = 3  # each figure is the median round by req/s: this machine is shared
PATH = "/api/v1/status"
USER, PASSWORD = "bench", "bench password 1"


def _setup(http: str) -> str:
    """Create the administrator and a token; returns the token."""
    def post(path: str, body: dict, authorization: str | None = None) -> dict:
        request = urllib.request.Request(
            http + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        if authorization:
            request.add_header("Authorization", authorization)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    post("/api/v1/setup", {"username": USER, "password": PASSWORD})
    return post("/api/v1/auth/tokens", {"name": "bench"}, _basic())["token"]


def _basic() -> str:
    return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


class DigestSigner:
    """One client's Digest state: a nonce from the first 401, then nc = 1, 2, ...
    (what curl and aiohttp's DigestAuthMiddleware do on a kept connection)."""

    def __init__(self, challenge: str) -> None:
        fields = dict(re.findall(r'(\w+)="?([^",]+)"?', challenge))
        self.realm, self.nonce, self.opaque = fields["realm"], fields["nonce"], fields["opaque"]
        self.algorithm = fields["algorithm"]
        self.count = 0
        self.ha1 = self._h(f"{USER}:{self.realm}:{PASSWORD}")

    def _h(self, text: str) -> str:
        return (hashlib.md5 if self.algorithm == "MD5" else hashlib.sha256)(text.encode()).hexdigest()

    def header(self, method: str, uri: str) -> str:
        self.count += 1
        nc, cnonce = f"{self.count:08x}", secrets.token_hex(8)
        response = self._h(f"{self.ha1}:{self.nonce}:{nc}:{cnonce}:auth:{self._h(f'{method}:{uri}')}")
        return (
            f'Digest username="{USER}", realm="{self.realm}", nonce="{self.nonce}", uri="{uri}",'
            f" algorithm={self.algorithm}, qop=auth, nc={nc}, cnonce=\"{cnonce}\","
            f' response="{response}", opaque="{self.opaque}"'
        )


async def load(
    url: str, headers_for: Callable[[int], Callable[[], dict[str, str]]], tls: ssl.SSLContext | None
) -> tuple[float, float, float]:
    """(req/s, p50 ms, p99 ms) for REQUESTS requests over CONNECTIONS connections."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=CONNECTIONS, ssl=tls if tls else True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(number: int) -> None:
            headers = headers_for(number)
            for _ in range(REQUESTS // CONNECTIONS):
                started = time.perf_counter()
                async with session.get(url, headers=headers()) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url}: HTTP {response.status}")
                latencies.append(time.perf_counter() - started)

        # Warm up: connections, TLS sessions, the Basic verification cache.
        await asyncio.gather(*(worker(n) for n in range(CONNECTIONS)))
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(CONNECTIONS)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return (
        len(latencies) / elapsed,
        latencies[len(latencies) // 2] * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
    )


async def identify_cost(count: int = 20000) -> dict[str, float]:
    """Microseconds the server spends identifying one request, per method, without
    the network or the load client: what authentication itself costs."""
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    from nvrd.accounts import AccountsService
    from nvrd.api.auth import identify
    from nvrd.api.authstate import Authenticator
    from nvrd.api.digest import challenges
    from nvrd.db import Database
    from nvrd.device import MIGRATIONS

    with tempfile.TemporaryDirectory() as tmp:
        db = Database(Path(tmp) / "device.db", MIGRATIONS)
        await db.open()
        accounts = AccountsService(db, "nvrd BENCH")
        await accounts.load()
        await accounts.setup(USER, PASSWORD)
        _, secret = await accounts.create_token(USER, "bench", None)
        auth = Authenticator(accounts)
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda key, default=None: (
            ("127.0.0.1", 40000) if key == "peername" else default
        )
        signer = DigestSigner(challenges(auth.realm, auth.nonces.issue(), auth.nonces.opaque)[0])

        def request(header: str) -> web.Request:
            return make_mocked_request("GET", PATH, headers={"Authorization": header}, transport=transport)

        await identify(request(_basic()), auth)  # the one scrypt, then cached
        costs = {}
        for name, header in (
            ("Bearer", lambda: f"Bearer {secret}"),
            ("Basic (verification cached)", _basic),
            ("Digest SHA-256", lambda: signer.header("GET", PATH)),
        ):
            requests = [request(header()) for _ in range(count)]
            started = time.perf_counter()
            for each in requests:
                await identify(each, auth)
            costs[name] = (time.perf_counter() - started) / count * 1e6
        started = time.perf_counter()
        await accounts.verify_password(USER, "a wrong password")
        costs["a wrong password (one scrypt, N=2^15)"] = (time.perf_counter() - started) * 1e6
        await db.close()
    return costs


async def _challenge(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.headers.getall("WWW-Authenticate")[0]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        http_port, https_port = free_port(), free_port()
        config = write_config(directory, http_port, https_port)
        _, proc = start_to_listening(config, https_port)
        http, https = f"http://127.0.0.1:{http_port}", f"https://127.0.0.1:{https_port}"
        insecure = ssl.create_default_context()
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
        try:
            token = _setup(http)
            bearer = {"Authorization": f"Bearer {token}"}
            basic = {"Authorization": _basic()}

            def fixed(headers: dict[str, str]) -> Callable[[int], Callable[[], dict[str, str]]]:
                return lambda _: lambda: headers

            # One client per connection, each with its own nonce from its own 401
            # and its own counts, kept from the warm-up into the measured run.
            signers = [DigestSigner(asyncio.run(_challenge(http + PATH))) for _ in range(CONNECTIONS)]

            def digest(number: int) -> Callable[[], dict[str, str]]:
                return lambda: {"Authorization": signers[number].header("GET", PATH)}

            scenarios = {
                "anonymous GET /info, HTTP (no auth, for scale)": (http + "/api/v1/info", fixed({}), None),
                "Bearer, HTTP": (http + PATH, fixed(bearer), None),
                "Bearer, HTTPS": (https + PATH, fixed(bearer), insecure),
                "Basic, HTTPS": (https + PATH, fixed(basic), insecure),
                "Digest SHA-256, HTTP": (http + PATH, digest, None),
            }
            results = {}
            for name, (url, headers_for, tls) in scenarios.items():
                rounds = sorted(asyncio.run(load(url, headers_for, tls)) for _ in range(ROUNDS))
                results[name] = rounds[len(rounds) // 2]
        finally:
            stop(proc)
    print(
        f"auth_api: GET {PATH}, {CONNECTIONS} keep-alive connections, {REQUESTS} requests,"
        f" median of {ROUNDS} rounds ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})"
    )
    for name, (rps, p50, p99) in results.items():
        print(f"  {name:<48} {rps:7.0f} req/s  p50 {p50:5.1f} ms  p99 {p99:5.1f} ms")
    for name, micros in asyncio.run(identify_cost()).items():
        print(f"  server time to identify a request, {name:<46} {micros:9.1f} us")
    ratio = results["Basic, HTTPS"][0] / results["Bearer, HTTPS"][0]
    print(f"  targets: Bearer >= 2000 req/s, Basic >= 1000 req/s, p99 < 50 ms;"
          f" Basic/Bearer over HTTPS {ratio:.2f}")


if __name__ == "__main__":
    main()
