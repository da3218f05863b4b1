"""Retention: per-camera age, then a free-space floor, oldest first across cameras.

The floor is about one hour of the current aggregate write rate plus slack
(design.md §3): while free space is above it, nothing is deleted that a camera's
retention_days still wants; below it, the oldest segments go, whichever camera they
belong to, so recording never stops because the disk is full.

Delete order, crash-safe: mark the rows `deleting` (one transaction), unlink the
files, fsync their directories, then drop the rows (another transaction). A crash
in between leaves marked rows, which start-up finishes deleting; a row never points
at a file that is gone without being marked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from nvrd.recording.index import RecordingIndex, SegmentRow
from nvrd.recording.segments import fsync_path

log = logging.getLogger(__name__)

GIB = 1024**3
DAY_MS = 86_400_000


@dataclass(frozen=True)
class RetentionSettings:
    floor_window_s: float = 3600.0  # keep this long of the current write rate free
    floor_slack_bytes: int = GIB
    rate_window_s: float = 600.0  # the write rate is measured over this long
    batch: int = 64  # segments deleted per transaction
    # On a volume smaller than a few hours of writes, an hour's floor would delete
    # everything: the floor never asks for more than this share of the volume.
    max_floor_fraction: float = 0.25


def floor_bytes(rate_bytes_per_s: float, settings: RetentionSettings, total_bytes: int | None = None) -> int:
    floor = int(rate_bytes_per_s * settings.floor_window_s) + settings.floor_slack_bytes
    if total_bytes is not None:
        floor = min(floor, int(total_bytes * settings.max_floor_fraction))
    return floor


def total_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


class WriteRate:
    """Bytes per second written over the recent window, from closed segments."""

    def __init__(self, window_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._monotonic = monotonic
        self._started = monotonic()
        self._samples: deque[tuple[float, int]] = deque()
        self._total = 0

    def add(self, nbytes: int) -> None:
        now = self._monotonic()
        self._samples.append((now, nbytes))
        self._total += nbytes
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._total -= self._samples.popleft()[1]

    @property
    def bytes_per_s(self) -> float:
        now = self._monotonic()
        self._expire(now)
        span = min(self.window_s, max(now - self._started, 1.0))
        return self._total / span


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def expired(rows: Iterable[SegmentRow], now_ms: int, days: int) -> list[SegmentRow]:
    cutoff = now_ms - days * DAY_MS
    return [r for r in rows if r.end_ms <= cutoff]


class Retention:
    def __init__(
        self,
        index: RecordingIndex,
        volume: Path,
        settings: RetentionSettings,
        rate: WriteRate,
        free: Callable[[Path], int] = free_bytes,
    ) -> None:
        self.index = index
        self.volume = volume
        self.settings = settings
        self.rate = rate
        self._free = free
        self.deleted = 0
        self.deleted_bytes = 0
        self.newest_deleted_start_ms: int | None = None
        self._lock = asyncio.Lock()
        self._total: int | None = None

    def floor(self) -> int:
        if self._total is None:
            try:
                self._total = total_bytes(self.volume)
            except OSError:
                return floor_bytes(self.rate.bytes_per_s, self.settings)
        return floor_bytes(self.rate.bytes_per_s, self.settings, self._total)

    async def enforce_floor(self) -> int:
        """Delete oldest-first until free space is back above the floor."""
        deleted = 0
        async with self._lock:
            while True:
                floor = self.floor()
                free = await asyncio.to_thread(self._free, self.volume)
                if free >= floor:
                    break
                # Enough of the oldest to cover the shortfall, at most one batch.
                rows = await self.index.oldest(self.settings.batch)
                if not rows:
                    log.warning("free space %d B is below the floor %d B and nothing is left to delete", free, floor)
                    break
                chosen, covered = [], 0
                for row in rows:
                    chosen.append(row)
                    covered += row.bytes
                    if free + covered >= floor:
                        break
                log.info(
                    "free space %d MB below the floor %d MB: deleting %d oldest segments",
                    free // 2**20, floor // 2**20, len(chosen),
                )
                await self.delete(chosen)
                deleted += len(chosen)
        return deleted

    async def enforce_age(self, cameras: dict[str, int | None], now_ms: int) -> int:
        deleted = 0
        async with self._lock:
            for camera, days in cameras.items():
                if not days:
                    continue
                while True:
                    rows = await self.index.oldest(self.settings.batch, camera, before_ms=now_ms - days * DAY_MS)
                    rows = expired(rows, now_ms, days)
                    if not rows:
                        break
                    await self.delete(rows)
                    deleted += len(rows)
        return deleted

    async def delete_chosen(self, rows: list[SegmentRow]) -> None:
        """Delete segments a user chose (DELETE /recordings): the same crash-safe
        order, never interleaved with retention's own deletes."""
        async with self._lock:
            await self.delete(rows)

    async def delete(self, rows: list[SegmentRow]) -> None:
        ids = [r.id for r in rows if r.id is not None]
        await self.index.mark_deleting(ids)
        await asyncio.to_thread(unlink_all, self.volume, [r.path for r in rows])
        await self.index.drop(ids)
        self.deleted += len(ids)
        self.deleted_bytes += sum(r.bytes for r in rows)
        newest = max((r.start_ms for r in rows), default=None)
        if newest is not None and (self.newest_deleted_start_ms is None or newest > self.newest_deleted_start_ms):
            self.newest_deleted_start_ms = newest


def unlink_all(volume: Path, paths: list[str]) -> None:
    directories = set()
    for relative in paths:
        path = volume / relative
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        directories.add(path.parent)
    for directory in directories:
        try:
            fsync_path(directory, directory=True)
        except FileNotFoundError:
            continue
        # Empty hour and day directories go too (not the camera's own).
        for d in (directory, directory.parent):
            try:
                d.rmdir()
            except OSError:
                break
