"""A closed segment: where it lives, when it was, whether it is sound, and how it is
made durable before the index learns of it.

Order (design.md §3): fsync the file, put it in place, fsync the directories, then
insert the row. A crash at any point leaves a file without a row (start-up indexes
it) or nothing, never a row without a file.

ffmpeg writes each camera's segments into `recordings/<camera>/.incoming/` on the
volume, named by its run and a sequence number; at close the file moves by rename()
into `recordings/<camera>/<YYYY-MM-DD>/<HH>/` (UTC, from the segment's start on the
anchored timeline). The rename moves no data: it is the same filesystem, one
directory over. ffmpeg cannot name files by stream time itself: its strftime names
come from its own wall clock, rounded to the second, so a clock step back could
make it overwrite an hour-old segment.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from nvrd.recording.ffmpeg import ClosedSegment
from nvrd.recording.fmp4 import Media, scan, summarize
from nvrd.recording.mp4 import Mp4Error, Mp4Info, inspect

log = logging.getLogger(__name__)

RECORDINGS = "recordings"
INCOMING = ".incoming"
SHORTEST_S = 1.0

_FINAL_NAME = re.compile(r"^(\d{8}T\d{6}\.\d{3}Z)-([0-9a-z]+)-(\d{6})\.mp4$")
_INCOMING_NAME = re.compile(r"^([0-9a-z]+)-(\d{6})\.mp4$")


@dataclass(frozen=True)
class Layout:
    volume: Path

    @property
    def root(self) -> Path:
        return self.volume / RECORDINGS

    def camera_dir(self, camera: str) -> Path:
        return self.root / camera

    def incoming(self, camera: str) -> Path:
        return self.camera_dir(camera) / INCOMING

    def pattern(self, camera: str, token: str) -> Path:
        return self.incoming(camera) / f"{token}-%06d.mp4"

    def final(self, camera: str, start_ms: int, token: str, seq: int) -> Path:
        """`<camera>/2026-11-25/15/20261125T152345.123Z-<token>-000017.mp4`: UTC."""
        t = datetime.fromtimestamp(start_ms / 1000, UTC)
        name = f"{t:%Y%m%dT%H%M%S}.{start_ms % 1000:03d}Z-{token}-{seq:06d}.mp4"
        return self.camera_dir(camera) / f"{t:%Y-%m-%d}" / f"{t:%H}" / name

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.volume))


def parse_final_name(name: str) -> tuple[int, str, int] | None:
    """(start_ms, token, seq) from a final segment name, or None."""
    match = _FINAL_NAME.match(name)
    if not match:
        return None
    t = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)
    return int(t.timestamp() * 1000), match.group(2), int(match.group(3))


def parse_incoming_name(name: str) -> tuple[str, int] | None:
    match = _INCOMING_NAME.match(name)
    return (match.group(1), int(match.group(2))) if match else None


class Timeline:
    """Places one ffmpeg run's segments on the UTC timeline, in milliseconds.

    Durations come from the stream's timestamps (the segment list), so consecutive
    segments meet exactly. The run is anchored to the wall clock once, at its first
    segment: the list line for segment N arrives when segment N+1's first packet is
    muxed, i.e. at segment N's end in real time, so start = now − duration. A run
    never starts before the camera's previous end (`not_before_ms`): a clock stepped
    back cannot reorder or overlap anything.

    Afterwards the wall clock only nudges the timeline: a drift beyond the dead band
    (camera clocks drift tens of ppm) is corrected by at most `slew_ppm` of each
    segment's length, by stretching the segment, never by moving its start. A jump
    beyond `step_ms` is a clock step: logged, and not followed; the stream's own
    time stays the truth until the next run re-anchors.
    """

    def __init__(
        self,
        not_before_ms: int = 0,
        slew_ppm: int = 1000,
        deadband_ms: int = 500,
        step_ms: int = 30_000,
        max_jump_s: float = 1.0,
    ) -> None:
        self.not_before_ms = not_before_ms
        self.slew_ppm = slew_ppm
        self.deadband_ms = deadband_ms
        self.step_ms = step_ms
        self.max_jump_s = max_jump_s
        self.position_ms: int | None = None
        self.previous_end_s: float | None = None
        self.clock_step_ms = 0  # the last step seen (for the log), 0 if none

    def place(self, segment: ClosedSegment, wall_now_ms: int) -> tuple[int, int, bool]:
        """(start_ms, end_ms, discontinuous): discontinuous when the stream itself
        jumped forward, so the caller starts a new run."""
        duration_ms = max(0.0, (segment.end - segment.start) * 1000)
        discontinuous = False
        if self.position_ms is None or self.previous_end_s is None:
            start = max(round(wall_now_ms - duration_ms), self.not_before_ms)
        else:
            jump = segment.start - self.previous_end_s
            start = self.position_ms
            if jump > self.max_jump_s:
                start += round(jump * 1000)
                discontinuous = True
        end = start + round(duration_ms)
        error = wall_now_ms - end
        self.clock_step_ms = 0
        if abs(error) >= self.step_ms:
            self.clock_step_ms = error
        elif abs(error) > self.deadband_ms:
            limit = duration_ms * self.slew_ppm / 1_000_000
            end += round(max(-limit, min(limit, error)))
        end = max(end, start + 1)
        self.position_ms, self.previous_end_s = end, segment.end
        return start, end, discontinuous


@dataclass(frozen=True)
class Verdict:
    info: Mp4Info | None
    problem: str | None  # unreadable, no-keyframe, empty: the file is not kept
    note: str | None  # short, truncated: kept, counted
    media: Media | None = None  # for the index: what playback needs without reading the file

    @property
    def keep(self) -> bool:
        return self.problem is None


def judge(path: Path) -> Verdict:
    """Look at a closed file and say whether it is a usable segment."""
    try:
        info = inspect(path)
    except FileNotFoundError:
        return Verdict(None, "missing", None)
    except (Mp4Error, OSError) as exc:
        size = path.stat().st_size if path.exists() else 0
        # A segment opened just as ffmpeg stopped holds only its header: nothing lost.
        return Verdict(None, "empty" if size < 1024 else f"unreadable: {exc}", None)
    if info.frames == 0:
        return Verdict(info, "empty", None)
    if info.keyframes == 0:
        return Verdict(info, "no-keyframe", None)
    notes = []
    if info.truncated:
        notes.append("truncated")
    if info.video_seconds < SHORTEST_S:
        notes.append("short")
    return Verdict(info, None, ",".join(notes) or None, _media(path))


def _media(path: Path) -> Media | None:
    """The segment's fmp4.Media (its moofs, a few KiB, read once more while they
    are in the page cache); None if fmp4 can't follow it: playback reads it then."""
    try:
        return summarize(scan(path))
    except (Mp4Error, OSError) as exc:
        log.warning("segment %s: no fragment table for the index: %s", path, exc)
        return None


def fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """mkdir -p, fsyncing each parent whose entries changed."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        fsync_path(d.parent, directory=True)


def commit(incoming: Path, final: Path) -> None:
    """fsync the file, rename it into place, fsync both directories. Runs in a thread."""
    fsync_path(incoming)
    make_dirs(final.parent)
    if final.exists():
        # Names hold the start in ms, the run and the sequence: a clash means a bug;
        # never overwrite a recording.
        raise FileExistsError(errno.EEXIST, "segment already exists", str(final))
    try:
        os.rename(incoming, final)
    except FileNotFoundError:
        if not incoming.exists():
            raise
        # Retention removed the (then empty) hour directory in between: make it again.
        make_dirs(final.parent)
        os.rename(incoming, final)
    fsync_path(final.parent, directory=True)
    fsync_path(incoming.parent, directory=True)


def remove(path: Path) -> None:
    """Unlink a rejected file and fsync its directory."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_path(path.parent, directory=True)
