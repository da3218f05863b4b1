"""Recording tests: real ffmpeg against the real GStreamer RTSP test server
(tools/test-camera, run with Debian's /usr/bin/python3), on 127.0.0.1 only.

Clips are made once (cached in build/test-clips, keyed by their recipe) and the
shared server is one per session; tests that stop or count a server get their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nvrd.bus import Bus
from nvrd.db import Database
from nvrd.device import MIGRATIONS as DEVICE_MIGRATIONS
from nvrd.recording.clock import Clock
from nvrd.recording.recorder import Recorder, RecorderSettings
from nvrd.storage.volume import VolumeState, VolumeStatus, TOPIC as VOLUME_TOPIC

from ..conftest import free_port

TOP = Path(__file__).resolve().parents[3]
CLIPS = TOP / "build" / "test-clips"
SYSTEM_PYTHON = "/usr/bin/python3"

# name → ffmpeg arguments (after `ffmpeg -y`), output appended. Low resolution keeps
# the machine free; the benchmark uses 1080p.
_BASE = "-f lavfi -i testsrc2=size=640x360:rate=15,noise=alls=8:allf=t -f lavfi -i sine=frequency=440:sample_rate=16000"
RECIPES: dict[str, str] = {
    "h264-aac-60": f"{_BASE} -t 60 -c:v libx264 -preset ultrafast -b:v 1M -g 30 -bf 0 -c:a aac -b:a 32k",
    "h264-4m-60": (
        "-f lavfi -i testsrc2=size=640x360:rate=15,noise=alls=40:allf=t -t 60 -c:v libx264 -preset ultrafast"
        " -b:v 4M -minrate 4M -maxrate 4M -bufsize 1M -g 30 -bf 0"
    ),
    # Playback tests: ten minutes, GOP 1 s, small frames (made in seconds, not
    # recorded in real time: tests/host/playback/conftest.py segments it).
    "h264-aac-600-gop15": (
        "-f lavfi -i testsrc2=size=320x180:rate=15,noise=alls=8:allf=t"
        " -f lavfi -i sine=frequency=440:sample_rate=16000 -t 600"
        " -c:v libx264 -preset ultrafast -b:v 400k -g 15 -bf 0 -c:a aac -b:a 32k"
    ),
    "h265-aac-30": (
        f"{_BASE} -t 30 -c:v libx265 -preset ultrafast -x265-params log-level=error:keyint=30:bframes=0"
        " -b:v 1M -c:a aac -b:a 32k"
    ),
}
# Derived clips: (source, ffmpeg input options, output options) - copies, cheap.
DERIVED: dict[str, tuple[str, str, str]] = {
    "h264-aac-30": ("h264-aac-60", "", "-t 30 -c copy"),
    "h264-aac-180": ("h264-aac-60", "-stream_loop 2", "-c copy"),
    "h264-aac-600": ("h264-aac-60", "-stream_loop 9", "-c copy"),
    "h264-g711-60": ("h264-aac-60", "", "-c:v copy -c:a pcm_mulaw -ar 8000 -ac 1"),
    "h264-4m-600": ("h264-4m-60", "-stream_loop 9", "-c copy"),
}


def clip(name: str) -> Path:
    """The clip, made now if it isn't cached (keyed by its recipe)."""
    if name in DERIVED:
        source, in_opts, out_opts = DERIVED[name]
        recipe = f"{clip(source)} {in_opts} {out_opts}"
        args = [*in_opts.split(), "-i", str(clip(source)), *out_opts.split()]
    else:
        recipe = RECIPES[name]
        args = recipe.split()
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:10]
    path = CLIPS / f"{name}-{digest}.mkv"
    if not path.exists():
        CLIPS.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part.mkv")
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args, str(partial)], check=True)
        partial.rename(path)
    return path


@dataclass
class RtspServer:
    """tools/test-camera as a process. `events` collects its JSON lines."""

    mounts: dict[str, Path]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    _lines: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)

    def url(self, mount: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{mount.lstrip('/')}"

    def start(self) -> RtspServer:
        argv = [SYSTEM_PYTHON, str(TOP / "tools" / "test-camera"), "--port", str(self.port)]
        for mount, path in self.mounts.items():
            argv += ["--mount", f"/{mount.lstrip('/')}={path}"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        self.wait_event("ready", 30)
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.events.append(event)
            self._lines.put(event)

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"test camera: no {name!r} event")
            try:
                event = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if event.get("event") == name:
                return event

    def stop(self) -> dict[str, Any] | None:
        """SIGTERM; returns the exit event (frame counts of media still running)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return None
        proc.send_signal(signal.SIGTERM)
        try:
            event = self.wait_event("exit", 10)
        except TimeoutError:
            event = None
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return event

    def frames(self, mount: str) -> int:
        """Frames handed to the payloader for every finished media of `mount`."""
        return sum(e["frames"] for e in self.events if e.get("event") == "media-done" and e["mount"] == f"/{mount.lstrip('/')}")


@pytest.fixture(scope="session")
def shared_server() -> Iterator[RtspServer]:
    server = RtspServer(
        {
            "h264-aac": clip("h264-aac-600"),
            "h265-aac": clip("h265-aac-30"),
            "h264-g711": clip("h264-g711-60"),
            "h264-4m": clip("h264-4m-600"),
        }
    ).start()
    yield server
    server.stop()


class FakeVolume:
    """A volume whose state a test sets, published as the storage service does."""

    def __init__(self, path: Path, bus: Bus) -> None:
        self.path, self.bus = path, bus
        self.status = VolumeStatus(VolumeState.READY, path)

    def set(self, state: VolumeState, reason: str | None = None) -> None:
        self.status = VolumeStatus(state, self.path if state is VolumeState.READY else None, reason)
        self.bus.publish(VOLUME_TOPIC, self.status.as_event())


@dataclass
class Harness:
    recorder: Recorder
    volume: FakeVolume
    bus: Bus
    device_db: Database


@pytest.fixture
async def make_recorder(tmp_path: Path) -> AsyncIterator[Any]:
    """make_recorder(clock=..., settings=...) → a started Recorder on tmp_path."""
    made: list[Harness] = []

    async def make(
        clock: Clock | None = None, settings: RecorderSettings | None = None, volume_path: Path | None = None
    ) -> Harness:
        bus = Bus()
        db = Database(tmp_path / "state" / "device.db", DEVICE_MIGRATIONS)
        await db.open()
        volume = FakeVolume(volume_path or tmp_path / "volume", bus)
        volume.path.mkdir(parents=True, exist_ok=True)
        recorder = Recorder(db, volume, bus, clock=clock, settings=settings)
        await recorder.start()
        harness = Harness(recorder, volume, bus, db)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        try:
            await asyncio.wait_for(harness.recorder.close(), 30)
        except TimeoutError:
            for t in asyncio.all_tasks():
                t.print_stack()
            raise
        await harness.device_db.close()


async def wait_for(predicate: Any, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


def volume_files(volume: Path) -> set[str]:
    """Committed segment files, relative to the volume."""
    root = volume / "recordings"
    return {
        str(p.relative_to(volume))
        for p in root.rglob("*.mp4")
        if ".incoming" not in p.parts
    }


def index_rows(volume: Path) -> list[dict[str, Any]]:
    import sqlite3

    conn = sqlite3.connect(volume / "recordings" / "index.db")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM segment ORDER BY id")]
    finally:
        conn.close()


def api(base: str, method: str, path: str, body: Any = None, timeout: float = 10) -> tuple[int, Any]:
    """A JSON request to a daemon process; (status, decoded body)."""
    import urllib.error
    import urllib.request

    from ..conftest import ADMIN, ADMIN_PASSWORD, basic

    data = json.dumps(body).encode() if body is not None else None
    # As the administrator start_daemon set up (Basic is accepted from loopback).
    headers = {"Authorization": basic(ADMIN, ADMIN_PASSWORD)}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def start_daemon(directory: Path) -> Any:
    """A real nvrd process with directory storage in `directory/volume`."""
    from ..conftest import DaemonProcess, write_config

    directory.mkdir(parents=True, exist_ok=True)
    process = DaemonProcess(
        config_path=directory / "nvrd.toml", state_dir=directory / "state",
        http_port=free_port(), https_port=0,
    )
    write_config(process.config_path, process.state_dir, process.http_port, 0)
    process.start()
    process.wait_listening()
    # A restart on the same state directory finds the administrator already there.
    if api(process.http, "GET", "/api/v1/info")[1]["setup_required"]:
        process.setup_admin()
    return process


@pytest.fixture(scope="session")
def _long_recording_started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RtspServer, Any, Path]]:
    directory = tmp_path_factory.mktemp("long")
    server = RtspServer({"long": clip("h264-aac-180")}).start()
    daemon = start_daemon(directory / "nvrd")
    try:
        status, body = api(daemon.http, "POST", "/api/v1/cameras",
                           {"id": "long", "url": server.url("long"), "segment_seconds": 10})
        assert status == 201, body
        yield server, daemon, directory / "nvrd" / "volume"
    finally:
        daemon.stop()
        server.stop()


@pytest.fixture(autouse=True, scope="session")
def _start_long_recording_early(request: pytest.FixtureRequest) -> None:
    """The three-minute recording runs beside the other recording tests, not after
    them: the host tier stays short. Started only when its test is selected."""
    if any(item.name.startswith("test_three_minutes") for item in request.session.items):
        request.getfixturevalue("_long_recording_started")


@pytest.fixture
def long_recording(_long_recording_started):  # noqa: ANN001, ANN201
    return _long_recording_started
