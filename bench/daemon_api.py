"""The daemon process: start-up to listening, and API requests per second.

Loopback only; bounded counts. The start-up figure is what `make run` costs after
the first time, and what a restart by the systemd watchdog costs in lost API time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REQUESTS = 2000
CONCURRENCY = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(directory: Path, http_port: int, https_port: int) -> Path:
    path = directory / "nvrd.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "{directory / "state"}"\n[log]\nlevel = "warning"\n'
        f'[storage]\nmode = "directory"\ndirectory = "{directory / "volume"}"\n'
        f'[http]\nlisten = "127.0.0.1"\nhttp_port = {http_port}\nhttps_port = {https_port}\n'
    )
    return path


def start_to_listening(config: Path, port: int) -> tuple[float, subprocess.Popen[bytes]]:
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nvrd.daemon", "--config", str(config)],
        stderr=subprocess.DEVNULL,
    )
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return time.monotonic() - started, proc
        except OSError:
            if time.monotonic() - started > 60:
                proc.kill()
                raise TimeoutError("nvrd did not listen within 60 s")
            time.sleep(0.01)


def stop(proc: subprocess.Popen[bytes]) -> float:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    return time.monotonic() - started


async def requests_per_second(url: str, ssl_context: ssl.SSLContext | None) -> tuple[float, float]:
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=CONCURRENCY, ssl=ssl_context if ssl_context else True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(count: int) -> None:
            for _ in range(count):
                t = time.perf_counter()
                async with session.get(url) as response:
                    await response.read()
                    assert response.status == 200
                latencies.append(time.perf_counter() - t)

        started = time.perf_counter()
        await asyncio.gather(*(worker(REQUESTS // CONCURRENCY) for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    p95 = statistics.quantiles(latencies, n=20)[-1]
    return len(latencies) / elapsed, p95 * 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        http_port, https_port = free_port(), free_port()
        config = write_config(directory, http_port, https_port)
        cold, proc = start_to_listening(config, https_port)
        stop_cold = stop(proc)
        warm, proc = start_to_listening(config, https_port)
        insecure = ssl.create_default_context()
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
        try:
            http_rps, http_p95 = asyncio.run(
                requests_per_second(f"http://127.0.0.1:{http_port}/api/v1/info", None)
            )
            https_rps, https_p95 = asyncio.run(
                requests_per_second(f"https://127.0.0.1:{https_port}/api/v1/info", insecure)
            )
        finally:
            stop_warm = stop(proc)
    print("daemon_api:")
    print(f"  start to listening, first start (makes db and certificate): {cold:.2f} s")
    print(f"  start to listening, later start:                           {warm:.2f} s")
    print(f"  SIGTERM to exit: {stop_cold:.2f} s and {stop_warm:.2f} s (target < 10 s)")
    print(f"  GET /info over HTTP:  {http_rps:.0f} req/s, p95 {http_p95:.1f} ms ({CONCURRENCY} clients, {REQUESTS} requests)")
    print(f"  GET /info over HTTPS: {https_rps:.0f} req/s, p95 {https_p95:.1f} ms (keep-alive)")
    print(f"  ratio HTTPS/HTTP throughput: {https_rps / http_rps:.2f} ({os.cpu_count()} cores)")
