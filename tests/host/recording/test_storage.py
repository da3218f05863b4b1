"""Storage coupling and retention, with real recording."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from nvrd.recording.cameras import CameraCreate
from nvrd.recording.recorder import CameraState, RecorderSettings
from nvrd.recording.retention import RetentionSettings, free_bytes
from nvrd.storage.volume import VolumeState

from .conftest import index_rows, volume_files, wait_for

MB = 1024 * 1024


async def test_locked_volume_pauses_and_resumes_with_a_storage_gap(make_recorder, shared_server) -> None:
    harness = await make_recorder()
    recorder = harness.recorder
    await recorder.create(CameraCreate(id="a", url=shared_server.url("h264-aac"), segment_seconds=2))
    sup = recorder.supervisors["a"]
    await wait_for(lambda: sup.segments_closed >= 2, 60, what="recording")

    harness.volume.set(VolumeState.LOCKED, "encrypted volume locked")
    # Paused, and nothing touches the volume: no ffmpeg, the index closed.
    await wait_for(lambda: sup.state is CameraState.PAUSED and recorder.index is None, 30, what="paused")
    assert sup.process is None
    assert sup.last_error == "encrypted volume locked"
    await asyncio.sleep(3)
    harness.volume.set(VolumeState.READY)
    closed = sup.segments_closed
    await wait_for(lambda: sup.segments_closed >= closed + 2, 60, what="recording again")

    runs, gaps = await recorder.runs_and_gaps(["a"], 0, 2**62)
    assert len(runs) == 2
    assert [(g.reason, g.start_ms, g.end_ms) for g in gaps] == [("storage-locked", runs[0].end_ms, runs[1].start_ms)]
    assert gaps[0].end_ms - gaps[0].start_ms >= 3000
    assert volume_files(harness.volume.path) == {r["path"] for r in index_rows(harness.volume.path)}


@pytest.fixture
def small_volume(tmp_path: Path):
    """A 48 MB tmpfs: a disk that fills up in seconds."""
    path = tmp_path / "small"
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "nvrd-test", str(path)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


async def test_retention_keeps_the_floor_deletes_oldest_first_and_never_stops(
    make_recorder, shared_server, small_volume: Path
) -> None:
    # 4 cameras at 4 Mbit/s: 2 MB/s into 48 MB. Floor: 4 s of the write rate + 8 MB.
    retention = RetentionSettings(floor_window_s=4, floor_slack_bytes=8 * MB, rate_window_s=20, max_floor_fraction=0.5)
    harness = await make_recorder(settings=RecorderSettings(retention=retention), volume_path=small_volume)
    recorder = harness.recorder
    cameras = [f"c{i}" for i in range(4)]
    for name in cameras:
        await recorder.create(CameraCreate(id=name, url=shared_server.url("h264-4m"), segment_seconds=2))

    lowest_free = None
    deleted_before = 0
    elapsed = 0.0
    # Record until retention has replaced the volume's content about twice over.
    while elapsed < 120 and (recorder.retention is None or recorder.retention.deleted_bytes < 64 * MB):
        free = free_bytes(small_volume)
        lowest_free = free if lowest_free is None else min(lowest_free, free)
        await asyncio.sleep(0.1)
        elapsed += 0.1
    assert recorder.retention is not None and recorder.retention.deleted_bytes >= 64 * MB
    floor = recorder.retention.floor()

    # Free space never fell below the slack: the floor's rate part is what the
    # segments being written use between two retention passes.
    assert lowest_free is not None and lowest_free >= retention.floor_slack_bytes, (lowest_free, floor)
    # Nothing stopped: no disk-full exits, every camera recorded until now, no gaps.
    for name in cameras:
        sup = recorder.supervisors[name]
        assert sup.state is CameraState.RECORDING
        assert sup.anomalies.get("commit-failed", 0) == 0
    runs, gaps = await recorder.runs_and_gaps(cameras, 0, 2**62)
    assert gaps == []
    # Oldest first across cameras: what is left is the newest of all of them.
    rows = index_rows(small_volume)
    assert recorder.retention.deleted > 0
    assert recorder.retention.newest_deleted_start_ms is not None
    assert min(r["start_ms"] for r in rows) >= recorder.retention.newest_deleted_start_ms
    assert volume_files(small_volume) == {r["path"] for r in rows}
    for run in runs:  # the runs' extents follow the deletions
        mine = [r for r in rows if r["run_id"] == run.id]
        assert run.start_ms == min(r["start_ms"] for r in mine)
        assert run.bytes == sum(r["bytes"] for r in mine)

