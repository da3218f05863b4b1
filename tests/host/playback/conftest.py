"""Playback tests: a ten-minute recording made faster than real time.

A synthetic clip (lavfi testsrc2 with per-frame noise, 15 fps, GOP 1 s, AAC audio;
tests/host/recording/conftest.py caches it) is cut by real ffmpeg with the
recorder's own segment muxer options (`segment_options`), and each closed segment
goes through the recorder's own path: Timeline placement, judge, commit, index
insert. It is built once per machine (build/test-recordings, keyed by the recipe)
and each test gets a copy (segment files hard-linked, the index copied), so a test
may delete from it.

Source frame i is at T0 + i/15 s on the recording's timeline: the segment list's
stream times anchor every segment exactly, as Timeline does for a live camera.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import ffmpeg as ffmpeg_python
import pytest

from nvrd.recording import segments
from nvrd.recording.ffmpeg import parse_segment_line, segment_options
from nvrd.recording.index import MIGRATIONS, RecordingIndex, SegmentRow
from nvrd.recording.segments import Layout, Timeline

from ..conftest import ADMIN, ADMIN_PASSWORD, basic
from ..recording.conftest import TOP, clip

CAMERA = "lobby"
T0 = 1_795_514_400_000  # 2026-11-24T10:00:00Z
FPS = 15
GOP = 15  # frames: one keyframe a second
DURATION_S = 600
SEGMENT_S = 20
SOURCE = "h264-aac-600-gop15"
RECORDINGS = TOP / "build" / "test-recordings"
AUTH = {"Authorization": basic(ADMIN, ADMIN_PASSWORD)}


def iso(ms: int) -> str:
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


async def build_recording(
    volume: Path, source: Path, camera: str, t0_ms: int, segment_s: int, input_options: dict[str, Any] | None = None
) -> None:
    """Cut `source` into segments with the recorder's segment muxer options and
    commit and index each the way the recorder does, the first at `t0_ms`. Also
    used by bench/playback.py."""
    layout = Layout(volume)
    incoming = layout.incoming(camera)
    incoming.mkdir(parents=True)
    argv = ffmpeg_python.output(
        ffmpeg_python.input(str(source), **(input_options or {})), str(layout.pattern(camera, "synth")), map="0",
        **segment_options(segment_s),
    ).get_args()
    listing = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", *argv], check=True,
                             capture_output=True, text=True).stdout
    index = RecordingIndex(volume)
    await index.open()
    try:
        timeline = Timeline()
        run_id = None
        for line in listing.splitlines():
            closed = parse_segment_line(line)
            assert closed is not None, line
            # The list line arrives at the segment's end: that is the wall clock.
            start_ms, end_ms, _ = timeline.place(closed, t0_ms + round(closed.end * 1000))
            path = incoming / closed.filename
            verdict = segments.judge(path)
            assert verdict.keep and verdict.info is not None, verdict
            seq = segments.parse_incoming_name(closed.filename)
            assert seq is not None
            final = layout.final(camera, start_ms, "synth", seq[1])
            segments.commit(path, final)
            row = await index.insert(
                SegmentRow(camera, start_ms, end_ms, verdict.info.bytes, verdict.info.frames,
                           verdict.info.keyframes, verdict.info.codec, "aac" if verdict.info.audio else None,
                           layout.relative(final), verdict.note, run_id, media=verdict.media),
                "restart",
            )
            run_id = row.run_id
    finally:
        await index.close()


@pytest.fixture(scope="session")
def recording() -> Path:
    """The cached volume holding the ten-minute recording of camera `lobby`."""
    source = clip(SOURCE)
    # The schema version too: a newer schema records more of each segment at commit.
    recipe = f"{source.name} {segment_options(SEGMENT_S)} {T0} {len(MIGRATIONS)}"
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:10]
    volume = RECORDINGS / f"{SOURCE}-{digest}"
    if not (volume / "done").exists():
        shutil.rmtree(volume, ignore_errors=True)
        asyncio.run(build_recording(volume, source, CAMERA, T0, SEGMENT_S))
        (volume / "done").touch()
    return volume


@pytest.fixture
def recording_volume(recording: Path, config: Any) -> Path:
    """This test's copy of the recording, where the app's volume is."""
    return copy_recording(recording, config.storage.directory)


def copy_recording(recording: Path, volume: Path) -> Path:
    """Segment files hard-linked (a delete unlinks only the copy's link), the index
    copied."""
    shutil.copytree(recording, volume, copy_function=os.link, ignore=shutil.ignore_patterns("index.db*", "done"))
    shutil.copy(recording / "recordings" / "index.db", volume / "recordings" / "index.db")
    return volume


@pytest.fixture
async def played(recording_volume: Path, client: Any) -> Any:
    """The app (as the administrator) over a volume with the recording."""
    return client


@pytest.fixture(scope="session")
def source_packets() -> list[tuple[float, str]]:
    """(pts s, md5) of every video packet of the source: a clip's packets are found
    in it by their hashes (stream copy keeps them byte for byte)."""
    return packet_hashes(clip(SOURCE))


@pytest.fixture(scope="session")
def source_keyframes() -> list[float]:
    """pts (s) of the source's keyframes (x264 adds some at scene cuts: not only
    every GOP frames)."""
    packets = ffprobe(clip(SOURCE), "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags")["packets"]
    return [float(p["pts_time"]) for p in packets if "K" in p["flags"]]


def packet_hashes(path: Path | str, extra: list[str] | None = None) -> list[tuple[float, str]]:
    """Video packets as (pts in seconds, md5), in order, without decoding."""
    out = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-copyts", *(extra or []), "-i", str(path), "-map", "0:v:0",
         "-c", "copy", "-f", "framemd5", "-"],
        check=True, capture_output=True, text=True,
    ).stdout
    packets = []
    timebase = 1.0
    for line in out.splitlines():
        if line.startswith("#tb 0:"):
            num, den = line.split(":", 1)[1].strip().split("/")
            timebase = int(num) / int(den)
        if line.startswith("#") or not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        packets.append((int(fields[2]) * timebase, fields[5]))
    return packets


def ffprobe(path: Path | str, *args: str) -> Any:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", *args, str(path)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)
