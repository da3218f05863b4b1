"""Host tier: the real app over real loopback HTTP, and the daemon as a process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import base64
import json
import ssl
import urllib.error
import urllib.request

import pytest

from nvrd.accounts import ScryptCost
from nvrd.api.app import make_app
from nvrd.config import Config, DaemonConfig, HttpConfig, StorageConfig

# scrypt at a cost that takes microseconds: the host tier checks behaviour, and
# the real cost is exercised by the daemon-process tests and the benchmark.
CHEAP_SCRYPT = ScryptCost(n=16, r=8, p=1)
ADMIN, ADMIN_PASSWORD = "admin", "admin password 1"

INSECURE = ssl.create_default_context()
INSECURE.check_hostname = False
INSECURE.verify_mode = ssl.CERT_NONE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(
        daemon=DaemonConfig(state_dir=tmp_path / "state"),
        storage=StorageConfig(mode="directory", directory=tmp_path / "volume"),
        http=HttpConfig(listen="127.0.0.1", http_port=0, https_port=0),
    )


@pytest.fixture
async def anon_client(aiohttp_client, config: Config):
    """The app before setup, with no credentials."""
    return await aiohttp_client(make_app(config, scrypt=CHEAP_SCRYPT))


@pytest.fixture
async def client(aiohttp_client, config: Config):
    """The app after setup, every request as the administrator (Basic over loopback)."""
    client = await aiohttp_client(
        make_app(config, scrypt=CHEAP_SCRYPT), headers={"Authorization": basic(ADMIN, ADMIN_PASSWORD)}
    )
    response = await client.post("/api/v1/setup", json={"username": ADMIN, "password": ADMIN_PASSWORD})
    assert response.status == 201, await response.text()
    return client


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def call(
    url: str, method: str = "GET", body: object = None, authorization: str | None = None,
    timeout: float = 10,
) -> tuple[int, object]:
    """One request with urllib; (status, JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if authorization:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=INSECURE) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


@dataclass
class DaemonProcess:
    """A real `nvrd` process on free loopback ports."""

    config_path: Path
    state_dir: Path
    http_port: int
    https_port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    host: str = "127.0.0.1"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def https(self) -> str:
        return f"https://{self.host}:{self.https_port}"

    @property
    def stderr_path(self) -> Path:
        return self.config_path.parent / "nvrd.stderr"

    def start(self) -> None:
        # To a file, not a pipe: nobody reads a pipe while the test runs, and a
        # daemon that fills one (64 KiB of log) blocks on its next log line.
        with open(self.stderr_path, "a") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nvrd.daemon", "--config", str(self.config_path)],
                stderr=stderr,
                text=True,
                env={**os.environ, **self.env},
            )

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def setup_admin(self) -> str:
        """Create the first administrator; returns its Basic Authorization value."""
        status, body = call(
            self.http + "/api/v1/setup", "POST", {"username": ADMIN, "password": ADMIN_PASSWORD}
        )
        assert status == 201, body
        return basic(ADMIN, ADMIN_PASSWORD)

    def wait_listening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc and self.proc.poll() is None, "nvrd exited during start-up"
            try:
                socket.create_connection((self.host, self.http_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("nvrd did not listen")

    def signal(self, signum: int) -> None:
        assert self.proc
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15) -> int:
        assert self.proc
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def write_config(
    path: Path, state_dir: Path, http_port: int, https_port: int, level: str = "info",
    listen: str = "127.0.0.1",
) -> None:
    path.write_text(
        f"""
[daemon]
state_dir = "{state_dir}"
[log]
level = "{level}"
[storage]
mode = "directory"
directory = "{path.parent / 'volume'}"
[http]
listen = "{listen}"
http_port = {http_port}
https_port = {https_port}
"""
    )


@pytest.fixture
def daemon_process(tmp_path: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(
        config_path=tmp_path / "nvrd.toml",
        state_dir=tmp_path / "state",
        http_port=free_port(),
        https_port=free_port(),
    )
    write_config(process.config_path, process.state_dir, process.http_port, process.https_port)
    yield process
    if process.proc is not None and process.proc.poll() is None:
        process.stop()
