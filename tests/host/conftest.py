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

import pytest

from nvrd.api.app import make_app
from nvrd.config import Config, DaemonConfig, HttpConfig, StorageConfig


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
async def client(aiohttp_client, config: Config):
    return await aiohttp_client(make_app(config))


@dataclass
class DaemonProcess:
    """A real `nvrd` process on free loopback ports."""

    config_path: Path
    state_dir: Path
    http_port: int
    https_port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nvrd.daemon", "--config", str(self.config_path)],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **self.env},
        )

    def wait_listening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc and self.proc.poll() is None, "nvrd exited during start-up"
            try:
                socket.create_connection(("127.0.0.1", self.http_port), timeout=1).close()
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


def write_config(path: Path, state_dir: Path, http_port: int, https_port: int, level: str = "info") -> None:
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
listen = "127.0.0.1"
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
