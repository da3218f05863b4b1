"""The recording service: cameras, one supervised ffmpeg each, the index, retention,
and the coupling to the volume's state.

Recording runs while the volume is ready (mounted, writable). When it is locked,
write-protected, being repaired or gone, every ffmpeg is stopped (each finishes its
segment), the index is closed, and the gap that follows carries the reason; when
the volume is ready again, the index is reopened, reconciled, and recording resumes
on its own. The volume's state arrives on the bus as `volume.changed`.

Supervision per camera: restart when ffmpeg exits, or when no segment closed for
max(2 × segment + 30 s, 120 s); reconnect with capped exponential backoff. A camera
that can't be reached is watched with a TCP connect once a second (no ffmpeg is
started for it), so a camera that comes back is recorded within about a second, and
256 cameras that are off cost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nvrd.bus import Bus
from nvrd.db import Database
from nvrd.errors import Conflict, NotFound
from nvrd.recording import playback, segments
from nvrd.recording.cameras import (
    MAX_CAMERAS, Camera, CameraCreate, CameraPatch, CameraStore, apply_patch, from_create,
)
from nvrd.recording.clock import Clock
from nvrd.recording.ffmpeg import COPYABLE_AUDIO, FFMPEG, Exit, FfmpegProcess, classify_exit, record_command
from nvrd.recording.index import Gap, RecordingIndex, Run, SegmentRow
from nvrd.recording.mp4 import Mp4Error
from nvrd.recording.retention import Retention, RetentionSettings, WriteRate
from nvrd.recording.segments import Layout, Timeline
from nvrd.storage.volume import TOPIC as VOLUME_TOPIC, VolumeState, VolumeStatus

log = logging.getLogger(__name__)


class CameraState(StrEnum):
    RECORDING = "recording"
    CONNECTING = "connecting"
    OFFLINE = "offline"
    DISABLED = "disabled"
    PAUSED = "paused"  # the volume is not writable; resumes on its own


GAP_OF_VOLUME = {
    VolumeState.LOCKED: "storage-locked",
    VolumeState.WRITE_PROTECTED: "storage-write-protected",
    VolumeState.REPAIRING: "storage-repairing",
    VolumeState.UNAVAILABLE: "storage-unavailable",
}

GAP_OF_EXIT = {
    Exit.OFFLINE: "offline",
    Exit.UNAUTHORIZED: "offline",
    Exit.NOT_FOUND: "offline",
    Exit.DISK_FULL: "disk-full",
    Exit.STORAGE: "storage-unavailable",
    Exit.FAILED: "restart",
}


@dataclass(frozen=True)
class RecorderSettings:
    ffmpeg: str = FFMPEG
    backoff_min_s: float = 1.0
    backoff_max_s: float = 30.0
    probe_interval_s: float = 1.0
    stop_grace_s: float = 10.0
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    retention_interval_s: float = 60.0
    retention_min_gap_s: float = 1.0


# One clip or playlist: 31 days of 30 s segments.
MAX_CLIP_SEGMENTS = 100_000


def stall_limit_s(segment_seconds: int) -> float:
    return max(2 * segment_seconds + 30, 120)


async def reachable(url: str, timeout: float = 2.0) -> bool:
    """Does anything answer on the camera's RTSP port? (A TCP connect, no RTSP.)"""
    parts = urlsplit(url)
    port = parts.port or (322 if parts.scheme == "rtsps" else 554)
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class CameraSupervisor:
    """Keeps one camera's ffmpeg running while it should, and commits its segments."""

    def __init__(self, recorder: Recorder, camera: Camera) -> None:
        self.recorder = recorder
        self.camera = camera
        self.state = CameraState.CONNECTING if camera.enabled else CameraState.DISABLED
        self.last_error: str | None = None
        self.last_segment_end_ms: int | None = None
        self.last_segment_mono: float | None = None
        self.audio_codec: str | None = None
        self.video_codec: str | None = None
        self.anomalies: Counter[str] = Counter()
        self.segments_closed = 0
        self.process: FfmpegProcess | None = None
        self.pending_reason: str | None = "restart"  # why the next run has a gap before it
        self.run_id: int | None = None
        self.run_tail: tuple[int, int] | None = None  # (end_ms, seq) of this run's last segment
        self._wake = asyncio.Event()
        self._offline = False
        self._closing = False
        self._step_logged = 0
        self.task: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def name(self) -> str:
        return self.camera.id

    def start(self) -> None:
        self.task = asyncio.create_task(self._supervise(), name=f"camera-{self.name}")

    def wake(self) -> None:
        self._wake.set()

    def interrupt(self, reason: str) -> None:
        """Stop the current ffmpeg (it finishes its segment); `reason` becomes the
        gap reason before the next run."""
        if self.pending_reason is None:
            self.pending_reason = reason
        if self.process is not None:
            self.process.terminate()
        self.wake()

    async def close(self) -> None:
        self._closing = True
        self.interrupt("restart")
        if self.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), self.recorder.settings.stop_grace_s + 5)
            except TimeoutError:
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task

    def status(self) -> dict[str, Any]:
        since = None
        if self.last_segment_end_ms is not None:
            since = max(0.0, (self.recorder.clock.wall_ms() - self.last_segment_end_ms) / 1000)
        return {
            "state": self.state.value,
            "last_error": self.last_error,
            "last_segment_end": _dt(self.last_segment_end_ms),
            "seconds_since_segment": round(since, 1) if since is not None else None,
            "video_codec": self.video_codec,
            "audio_codec": self.audio_codec,
            "segments_closed": self.segments_closed,
            "anomalies": dict(self.anomalies),
        }

    def _set_state(self, state: CameraState, error: str | None = None, keep_error: bool = False) -> None:
        if not keep_error:
            error_changed = error != self.last_error
            self.last_error = error
        else:
            error_changed = False
        if state != self.state or error_changed:
            self.state = state
            self.recorder.publish_camera(self)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, or return early when woken (a settings or volume change)."""
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _supervise(self) -> None:
        settings = self.recorder.settings
        backoff = settings.backoff_min_s
        while not self._closing:
            if not self.camera.enabled:
                self._set_state(CameraState.DISABLED)
                if self.pending_reason is None:
                    self.pending_reason = "disabled"
                await self._sleep(3600)
                continue
            if not self.recorder.ready:
                self._set_state(CameraState.PAUSED, self.recorder.volume_reason)
                await self._sleep(3600)
                continue
            if self._offline:
                if not await reachable(self.camera.url):
                    self._set_state(CameraState.OFFLINE, keep_error=True)
                    await self._sleep(settings.probe_interval_s)
                    continue
                self._offline = False
            started = time.monotonic()
            segments_before = self.segments_closed
            try:
                outcome, detail = await self._record_once()
            except Exception as exc:  # noqa: BLE001 - the supervisor never dies
                log.exception("camera %s: recording failed", self.name)
                outcome, detail = Exit.FAILED, f"internal error: {exc}"
            if self._closing:
                break
            recorded = self.segments_closed > segments_before
            if recorded or time.monotonic() - started > 60:
                backoff = settings.backoff_min_s
            if outcome is Exit.STOPPED:
                continue
            if outcome == "audio":
                continue  # restart at once with the audio policy applied
            reason = GAP_OF_EXIT.get(outcome, "restart")
            if self.pending_reason is None:
                self.pending_reason = reason
            if outcome in (Exit.OFFLINE, Exit.NOT_FOUND, Exit.UNAUTHORIZED):
                self._offline = outcome is Exit.OFFLINE
                self._set_state(CameraState.OFFLINE, detail)
                if outcome is Exit.OFFLINE:
                    log.warning("camera %s offline: %s", self.name, detail)
                    continue
            else:
                self._set_state(CameraState.CONNECTING, detail)
            log.warning("camera %s: ffmpeg ended (%s: %s); retrying in %.0f s", self.name, outcome, detail, backoff)
            await self._sleep(backoff)
            backoff = min(backoff * 2, settings.backoff_max_s)

    async def _record_once(self) -> tuple[Exit | str, str | None]:
        recorder = self.recorder
        layout = recorder.layout
        assert layout is not None
        token = f"{recorder.clock.wall_ms():x}{secrets.token_hex(2)}"
        incoming = layout.incoming(self.name)
        await asyncio.to_thread(segments.make_dirs, incoming)
        used_audio = self.audio_codec
        argv = record_command(
            self.camera.source,
            layout.pattern(self.name, token),
            self.camera.segment_seconds,
            used_audio,
            self.camera.g711,
            recorder.settings.ffmpeg,
        )
        process = FfmpegProcess(argv, self.name)
        # Every ffmpeg run is a new run in the index: its timeline is anchored anew.
        self.run_id = None
        self._step_logged = 0
        timeline = Timeline(not_before_ms=self.last_segment_end_ms or 0)
        self.idle.clear()
        self._set_state(CameraState.CONNECTING, keep_error=True)
        try:
            await process.start()
        except OSError as exc:
            self.idle.set()
            return Exit.FAILED, f"cannot start ffmpeg: {exc}"
        self.process = process
        self.last_segment_mono = time.monotonic()
        watch = asyncio.create_task(self._watch(process))
        try:
            async for closed in process.segments():
                self.last_segment_mono = time.monotonic()
                try:
                    await self._closed(closed, token, timeline, process)
                except Exception:  # noqa: BLE001 - one bad segment must not stop the camera
                    self.anomalies["commit-failed"] += 1
                    log.exception("camera %s: segment %s could not be committed", self.name, closed.filename)
                    self.run_id = None
                    if self.pending_reason is None:
                        self.pending_reason = "restart"
            await process.wait()
        finally:
            watch.cancel()
            self.process = None
            self.idle.set()
        audio = process.codecs.get("audio")
        if audio is not None:
            self.audio_codec = audio
            if used_audio is None and audio not in COPYABLE_AUDIO:
                log.info("camera %s sends %s audio: restarting with g711=%s", self.name, audio, self.camera.g711)
                return "audio", None
        if process.stop_requested:
            return Exit.STOPPED, None
        rc = process.proc.returncode if process.proc else None
        outcome, detail = classify_exit(list(process.tail))
        if rc == 0 and outcome is Exit.FAILED:
            outcome, detail = Exit.OFFLINE, "the camera ended the stream"
        return outcome, detail

    async def _watch(self, process: FfmpegProcess) -> None:
        """Connecting → recording once output starts; restart on a stall."""
        limit = stall_limit_s(self.camera.segment_seconds)
        started = asyncio.create_task(process.output_started.wait())
        try:
            await asyncio.wait_for(asyncio.shield(started), limit)
            video = process.codecs.get("video")
            if video:
                self.video_codec = {"hevc": "h265"}.get(video, video)
            if "audio" in process.codecs:
                self.audio_codec = process.codecs["audio"]
            self._set_state(CameraState.RECORDING)
        except TimeoutError:
            pass
        while True:
            assert self.last_segment_mono is not None
            remaining = self.last_segment_mono + limit - time.monotonic()
            if remaining <= 0:
                log.warning("camera %s: no segment closed in %.0f s: restarting ffmpeg", self.name, limit)
                self.anomalies["stall"] += 1
                if self.pending_reason is None:
                    self.pending_reason = "restart"
                process.terminate()
                await asyncio.sleep(self.recorder.settings.stop_grace_s)
                process.kill()
                return
            await asyncio.sleep(min(remaining, 5.0))

    async def _closed(self, closed: segments.ClosedSegment, token: str, timeline: Timeline, process: FfmpegProcess) -> None:
        recorder = self.recorder
        layout = recorder.layout
        index = recorder.index
        assert layout is not None and index is not None
        incoming = layout.incoming(self.name) / closed.filename
        parsed = segments.parse_incoming_name(closed.filename)
        seq = parsed[1] if parsed else 0
        start_ms, end_ms, discontinuous = timeline.place(closed, recorder.clock.wall_ms())
        if timeline.clock_step_ms and abs(timeline.clock_step_ms - self._step_logged) > timeline.step_ms:
            self._step_logged = timeline.clock_step_ms
            self.anomalies["clock-step"] += 1
            log.warning(
                "camera %s: the wall clock is %+d ms off this run's timeline (a clock step?): "
                "keeping the stream's time until the next run",
                self.name, timeline.clock_step_ms,
            )
        verdict = await asyncio.to_thread(segments.judge, incoming)
        if not verdict.keep:
            self.anomalies[verdict.problem.split(":")[0]] += 1  # type: ignore[union-attr]
            await asyncio.to_thread(segments.remove, incoming)
            if verdict.problem != "empty":
                log.warning("camera %s: segment %s dropped: %s", self.name, closed.filename, verdict.problem)
                self.run_id = None
                if self.pending_reason is None:
                    self.pending_reason = "corrupt"
            return
        info = verdict.info
        assert info is not None
        if verdict.note:
            for note in verdict.note.split(","):
                self.anomalies[note] += 1
            log.info("camera %s: segment %s is %s (%.2f s, %d frames)", self.name, closed.filename,
                     verdict.note, info.video_seconds, info.frames)
        if discontinuous:
            self.anomalies["stream-gap"] += 1
            self.run_id = None
            if self.pending_reason is None:
                self.pending_reason = "stream-gap"
        final = layout.final(self.name, start_ms, token, seq)
        try:
            await asyncio.to_thread(segments.commit, incoming, final)
        except OSError as exc:
            self.anomalies["commit-failed"] += 1
            log.error("camera %s: segment %s could not be kept: %s", self.name, closed.filename, exc)
            self.run_id = None
            if self.pending_reason is None:
                self.pending_reason = "storage-unavailable"
            return
        row = SegmentRow(
            camera=self.name, start_ms=start_ms, end_ms=end_ms, bytes=info.bytes, frames=info.frames,
            keyframes=info.keyframes, codec=info.codec, audio=_audio_name(info),
            path=layout.relative(final), note=verdict.note, run_id=self.run_id, media=verdict.media,
        )
        row = await index.insert(row, self.pending_reason or "restart")
        self.run_id = row.run_id
        self.pending_reason = None
        self.last_segment_end_ms = end_ms
        self.segments_closed += 1
        self.video_codec = info.codec
        recorder.segment_closed(row)


def _audio_name(info: Any) -> str | None:
    audio = info.audio
    if audio is None:
        return None
    return {"mp4a": "aac"}.get(audio.codec, audio.codec)


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


@dataclass
class ReconcileReport:
    finished_deletes: int = 0
    recovered: int = 0  # files without rows, indexed
    removed_files: int = 0  # files without rows that could not be indexed
    dropped_rows: int = 0  # rows without files
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Recorder:
    def __init__(
        self,
        device_db: Database,
        volume: Any,  # has .status: VolumeStatus (DirectoryVolume, or the storage service)
        bus: Bus,
        clock: Clock | None = None,
        settings: RecorderSettings | None = None,
    ) -> None:
        self.store = CameraStore(device_db)
        self.volume = volume
        self.bus = bus
        self.clock = clock or Clock()
        self.settings = settings or RecorderSettings()
        self.supervisors: dict[str, CameraSupervisor] = {}
        self.index: RecordingIndex | None = None
        self.layout: Layout | None = None
        self.retention: Retention | None = None
        self.rate = WriteRate(self.settings.retention.rate_window_s)
        self.ready = False
        self.volume_reason: str | None = "the volume is not ready yet"
        self.gap_reason = "restart"
        self.last_reconcile: ReconcileReport | None = None
        self.problems: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._volume_lock = asyncio.Lock()
        self._retention_wake = asyncio.Event()
        self._mutate = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        for camera in await self.store.load():
            self.supervisors[camera.id] = CameraSupervisor(self, camera)
        subscription = self.bus.subscribe([VOLUME_TOPIC])
        await self._apply_volume(self.volume.status)
        for supervisor in self.supervisors.values():
            supervisor.start()
        self._tasks.append(asyncio.create_task(self._follow_volume(subscription), name="recorder-volume"))
        self._tasks.append(asyncio.create_task(self._retention_loop(), name="recorder-retention"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(s.close() for s in self.supervisors.values()))
        if self.index is not None:
            await self.index.close()
            self.index = None

    async def _follow_volume(self, subscription: Any) -> None:
        try:
            async for _event in subscription:
                await self._apply_volume(self.volume.status)
        finally:
            subscription.close()

    async def _apply_volume(self, status: VolumeStatus) -> None:
        async with self._volume_lock:
            if status.writable and status.path is not None:
                if self.ready and self.layout is not None and self.layout.volume == status.path:
                    return
                if self.ready:
                    await self._pause("storage-unavailable", "the volume moved")
                await self._resume(status.path)
            elif self.ready or self.index is None:
                reason = GAP_OF_VOLUME.get(status.state, "storage-unavailable")
                await self._pause(reason, status.reason or status.state.value)

    async def _resume(self, path: Path) -> None:
        layout = Layout(path)
        index = RecordingIndex(path)
        try:
            await asyncio.to_thread(segments.make_dirs, layout.root)
            await index.open()
        except Exception as exc:  # noqa: BLE001 - a bad index pauses recording, never the daemon
            log.error("recordings index on %s can't be opened: %s", path, exc)
            self.problems.append(f"recordings index: {exc}")
            self.volume_reason = f"index: {exc}"
            return
        self.layout, self.index = layout, index
        self.retention = Retention(index, path, self.settings.retention, self.rate)
        self.last_reconcile = await reconcile(self, layout, index)
        for supervisor in self.supervisors.values():
            last = await index.last_segment(supervisor.name)
            supervisor.last_segment_end_ms = last.end_ms if last else None
        self.ready = True
        self.volume_reason = None
        log.info("recording on %s", path)
        for supervisor in self.supervisors.values():
            supervisor.wake()
        self._retention_wake.set()

    async def _pause(self, reason: str, detail: str) -> None:
        self.ready = False
        self.volume_reason = detail
        for supervisor in self.supervisors.values():
            supervisor.interrupt(reason)
        await asyncio.gather(*(self._wait_idle(s) for s in self.supervisors.values()))
        for supervisor in self.supervisors.values():
            # A run resumes only after a gap: the reason stays the storage's.
            supervisor.pending_reason = reason
            supervisor.wake()
        if self.index is not None:
            await self.index.close()
        self.index, self.retention = None, None
        log.warning("recording paused: %s (%s)", reason, detail)

    async def _wait_idle(self, supervisor: CameraSupervisor) -> None:
        try:
            await asyncio.wait_for(supervisor.idle.wait(), self.settings.stop_grace_s)
        except TimeoutError:
            if supervisor.process is not None:
                supervisor.process.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(supervisor.idle.wait(), 5)

    # -- events ----------------------------------------------------------------

    def publish_camera(self, supervisor: CameraSupervisor, deleted: bool = False) -> None:
        data = self.describe(supervisor)
        if deleted:
            data["deleted"] = True
        self.bus.publish("camera.changed", data)

    def segment_closed(self, row: SegmentRow) -> None:
        self.rate.add(row.bytes)
        self.bus.publish(
            "segment.closed",
            {
                "camera": row.camera, "id": row.id, "run": row.run_id, "start": _dt(row.start_ms),
                "end": _dt(row.end_ms), "bytes": row.bytes, "frames": row.frames,
                "keyframes": row.keyframes, "codec": row.codec, "audio": row.audio, "note": row.note,
            },
        )
        self._retention_wake.set()

    # -- retention -------------------------------------------------------------

    async def _retention_loop(self) -> None:
        """The floor after closed segments (at most once a second: at 128 cameras a
        segment closes every few ms), the ages once per retention interval."""
        last_age = -float("inf")
        while True:
            try:
                await asyncio.wait_for(self._retention_wake.wait(), self.settings.retention_interval_s)
            except TimeoutError:
                pass
            self._retention_wake.clear()
            retention = self.retention
            if retention is None or not self.ready:
                continue
            try:
                if time.monotonic() - last_age >= self.settings.retention_interval_s:
                    last_age = time.monotonic()
                    ages = {s.name: s.camera.retention_days for s in self.supervisors.values()}
                    await retention.enforce_age(ages, self.clock.wall_ms())
                await retention.enforce_floor()
                await asyncio.sleep(self.settings.retention_min_gap_s)
            except Exception:  # noqa: BLE001 - retention must keep going
                log.exception("retention failed; will retry")
                await asyncio.sleep(1)

    # -- cameras ---------------------------------------------------------------

    def describe(self, supervisor: CameraSupervisor) -> dict[str, Any]:
        return {**supervisor.camera.public(), **supervisor.status()}

    def cameras(self) -> list[dict[str, Any]]:
        return [self.describe(s) for _, s in sorted(self.supervisors.items())]

    def supervisor(self, camera_id: str) -> CameraSupervisor:
        try:
            return self.supervisors[camera_id]
        except KeyError:
            raise NotFound(f"no camera {camera_id!r}", camera=camera_id) from None

    async def create(self, body: CameraCreate) -> dict[str, Any]:
        async with self._mutate:
            if body.id in self.supervisors:
                raise Conflict(f"camera {body.id!r} exists", field="id")
            if len(self.supervisors) >= MAX_CAMERAS:
                raise Conflict(f"at most {MAX_CAMERAS} cameras", field="id")
            camera = from_create(body)
            await self.store.create(camera)
            supervisor = CameraSupervisor(self, camera)
            if self.index is not None:
                last = await self.index.last_segment(camera.id)
                supervisor.last_segment_end_ms = last.end_ms if last else None
            self.supervisors[camera.id] = supervisor
            supervisor.start()
            self.publish_camera(supervisor)
            return self.describe(supervisor)

    async def update(self, camera_id: str, patch: CameraPatch) -> dict[str, Any]:
        async with self._mutate:
            supervisor = self.supervisor(camera_id)
            old = supervisor.camera
            new = apply_patch(old, patch)
            await self.store.update(new)
            supervisor.camera = new
            if not new.enabled and old.enabled:
                supervisor.interrupt("disabled")
                supervisor.state = CameraState.DISABLED
            elif new.enabled and not old.enabled:
                supervisor.state = CameraState.CONNECTING
            elif new.recording_settings() != old.recording_settings():
                if new.url != old.url:
                    supervisor.audio_codec = None
                supervisor.interrupt("restart")
            supervisor.wake()
            self.publish_camera(supervisor)
            return self.describe(supervisor)

    async def delete(self, camera_id: str) -> None:
        async with self._mutate:
            supervisor = self.supervisor(camera_id)
            await self.store.delete(camera_id)
            del self.supervisors[camera_id]
        await supervisor.close()
        self.publish_camera(supervisor, deleted=True)

    # -- recordings ------------------------------------------------------------

    def _index(self) -> RecordingIndex:
        if self.index is None:
            raise Conflict(f"the recordings index is not available: {self.volume_reason}")
        return self.index

    async def runs_and_gaps(self, cameras: list[str] | None, from_ms: int, to_ms: int) -> tuple[list[Run], list[Gap]]:
        runs, gaps = await self._index().runs_and_gaps(cameras, from_ms, to_ms)
        # The gap still open: a camera not recording now, from its last run to now.
        now = self.clock.wall_ms()
        last_end: dict[str, int] = {}
        for run in runs:
            last_end[run.camera] = max(last_end.get(run.camera, 0), run.end_ms)
        for camera, end in last_end.items():
            supervisor = self.supervisors.get(camera)
            if supervisor is None or supervisor.state is CameraState.RECORDING:
                continue
            if any(g.camera == camera and g.start_ms == end for g in gaps):
                continue  # a later run already closes this gap
            if end < to_ms and now - end > 1000 * (supervisor.camera.segment_seconds + 5):
                reason = supervisor.pending_reason or "offline"
                gaps.append(Gap(camera, end, min(now, to_ms), reason))
        return runs, gaps

    async def segments(self, camera: str, from_ms: int, to_ms: int, limit: int) -> list[SegmentRow]:
        return await self._index().segments(camera, from_ms, to_ms, limit)

    async def require_camera(self, camera: str) -> None:
        """A camera that exists, or whose recordings do (a deleted camera's footage
        stays until retention removes it); anything else is not found."""
        if camera not in self.supervisors and not await self._index().has_camera(camera):
            raise NotFound(f"no camera {camera!r}", field="camera", camera=camera)

    async def clip(self, camera: str, from_ms: int, to_ms: int) -> playback.Clip:
        """The MP4 plan for [from, to]; NotFound when nothing was recorded in it."""
        await self.require_camera(camera)
        index = self._index()
        assert self.layout is not None
        rows = await index.clip_rows(camera, from_ms, to_ms, limit=MAX_CLIP_SEGMENTS)
        _runs, gaps = await self.runs_and_gaps([camera], from_ms, to_ms)
        gaps = [g for g in gaps if g.end_ms > from_ms and g.start_ms < to_ms]
        clip = await asyncio.to_thread(playback.plan_clip, self.layout.volume, camera, rows, from_ms, to_ms, gaps)
        if clip is None:
            raise NotFound(f"camera {camera!r} recorded nothing between from and to", field="from", camera=camera)
        return clip

    async def playlist(self, camera: str, from_ms: int, to_ms: int | None) -> str:
        """HLS over the stored segments; `to` None: live, up to now and growing."""
        await self.require_camera(camera)
        rows = await self._index().segments(camera, from_ms, to_ms or 2**62, limit=MAX_CLIP_SEGMENTS)
        if not rows and to_ms is not None:
            raise NotFound(f"camera {camera!r} recorded nothing between from and to", field="from", camera=camera)
        supervisor = self.supervisors.get(camera)
        target = supervisor.camera.segment_seconds if supervisor else 1
        return playback.playlist(rows, live=to_ms is None, target_s=target)

    async def stored_segment(self, camera: str, segment_id: int) -> SegmentRow:
        row = await self._index().segment(segment_id)
        if row is None or row.camera != camera:
            raise NotFound(f"no segment {segment_id} of camera {camera!r}", segment=segment_id)
        return row

    async def hls_segment(self, camera: str, segment_id: int) -> playback.Clip:
        return await self._from_segment(playback.hls_segment, camera, segment_id)

    async def hls_init(self, camera: str, segment_id: int) -> bytes:
        return await self._from_segment(playback.hls_init, camera, segment_id)

    async def _from_segment(self, make: Any, camera: str, segment_id: int) -> Any:
        row = await self.stored_segment(camera, segment_id)
        assert self.layout is not None
        try:
            return await asyncio.to_thread(make, self.layout.volume, row)
        except (OSError, Mp4Error) as exc:
            # Removed by retention since the playlist was made, or damaged.
            raise NotFound(f"segment {segment_id} of camera {camera!r} can't be read: {exc}", segment=segment_id) from None

    async def delete_range(self, camera: str, from_ms: int, to_ms: int) -> list[SegmentRow]:
        """Delete the whole segments inside [from, to], crash-safe (retention's
        order). A run cut in the middle becomes two; the gap between says `deleted`."""
        await self.require_camera(camera)
        index = self._index()
        retention = self.retention
        assert retention is not None
        rows = await index.segments_within(camera, from_ms, to_ms)
        if not rows:
            return []
        ends: dict[int, int] = {}
        for row in rows:
            assert row.run_id is not None
            ends[row.run_id] = max(ends.get(row.run_id, 0), row.end_ms)
        for run_id, end_ms in ends.items():
            # The run's segments after the deleted ones (if any) go on as their own
            # run, so the hole shows as a gap instead of hiding inside one run.
            await index.split_run(run_id, end_ms)
        await retention.delete_chosen(rows)
        log.info("camera %s: %d segments (%d bytes) deleted on request", camera, len(rows), sum(r.bytes for r in rows))
        return rows

    def status(self) -> dict[str, Any]:
        retention = self.retention
        return {
            "ready": self.ready,
            "reason": self.volume_reason,
            "cameras": len(self.supervisors),
            "recording": sum(1 for s in self.supervisors.values() if s.state is CameraState.RECORDING),
            "write_rate_bytes_per_s": round(self.rate.bytes_per_s),
            "floor_bytes": retention.floor() if retention else None,
            "deleted_segments": retention.deleted if retention else 0,
            "reconcile": self.last_reconcile.as_dict() if self.last_reconcile else None,
            "problems": list(self.problems),
        }


async def reconcile(recorder: Recorder | None, layout: Layout, index: RecordingIndex) -> ReconcileReport:
    """Make the index and the files agree after a crash (design.md §3).

    Where a crash can leave them apart is known, so start-up looks only there, and
    its cost does not grow with the size of the archive:
    - rows marked `deleting`: finish the delete;
    - files in `.incoming/`: the segment being written (readable up to its last
      fragment); indexed when it continues the camera's last segment, else removed;
    - each camera's newest hour directories (from its last row's hour on): files
      without rows are indexed (committed, crash before the insert) and rows without
      files are dropped.
    Each is counted and logged.
    """
    started = time.monotonic()
    report = ReconcileReport()
    pending = await index.deleting()
    if pending:
        from nvrd.recording.retention import unlink_all

        await asyncio.to_thread(unlink_all, layout.volume, [r.path for r in pending])
        await index.drop([r.id for r in pending if r.id is not None])
        report.finished_deletes = len(pending)
    cameras = set(await index.cameras())
    if layout.root.is_dir():
        cameras |= {p.name for p in await asyncio.to_thread(lambda: list(layout.root.iterdir())) if p.is_dir()}
    for camera in sorted(cameras):
        await _reconcile_camera(layout, index, camera, report)
    report.seconds = round(time.monotonic() - started, 3)
    if report.recovered or report.removed_files or report.dropped_rows or report.finished_deletes:
        log.warning("reconciled the recordings index: %s", report.as_dict())
    else:
        log.info("recordings index and files agree (checked in %.2f s)", report.seconds)
    return report


async def _reconcile_camera(layout: Layout, index: RecordingIndex, camera: str, report: ReconcileReport) -> None:
    last = await index.last_segment(camera)
    # 1. Committed files without rows, and rows without files, in the newest hours.
    since_ms = (last.start_ms // 3_600_000) * 3_600_000 if last else 0
    rows = await index.paths_since(camera, since_ms)
    files = await asyncio.to_thread(_final_files_since, layout, camera, since_ms)
    for relative, row in rows.items():
        if relative not in files:
            await index.drop([row.id]) if row.id is not None else None
            report.dropped_rows += 1
            log.warning("camera %s: index row without a file dropped: %s", camera, relative)
    for relative in sorted(set(files) - set(rows)):
        parsed = segments.parse_final_name(Path(relative).name)
        verdict = await asyncio.to_thread(segments.judge, layout.volume / relative)
        if parsed is None or not verdict.keep or verdict.info is None:
            await asyncio.to_thread(segments.remove, layout.volume / relative)
            report.removed_files += 1
            log.warning("camera %s: unindexable file removed: %s", camera, relative)
            continue
        start_ms = parsed[0]
        end_ms = start_ms + round(verdict.info.video_seconds * 1000)
        last = await index.last_segment(camera)
        same_run = last is not None and abs(last.end_ms - start_ms) <= 1000 and parsed[1] in last.path
        row = SegmentRow(
            camera=camera, start_ms=start_ms, end_ms=end_ms, bytes=verdict.info.bytes,
            frames=verdict.info.frames, keyframes=verdict.info.keyframes, codec=verdict.info.codec,
            audio=_audio_name(verdict.info), path=relative, note="recovered",
            run_id=last.run_id if same_run and last else None, media=verdict.media,
        )
        await index.insert(row, "restart")
        report.recovered += 1
        log.warning("camera %s: file without an index row indexed: %s", camera, relative)
    # 2. The segment being written when nvrd stopped.
    incoming = layout.incoming(camera)
    names = await asyncio.to_thread(lambda: sorted(os.listdir(incoming)) if incoming.is_dir() else [])
    for name in names:
        path = incoming / name
        parsed_in = segments.parse_incoming_name(name)
        verdict = await asyncio.to_thread(segments.judge, path)
        last = await index.last_segment(camera)
        follows = (
            parsed_in is not None and last is not None
            and Path(last.path).name.endswith(f"-{parsed_in[0]}-{parsed_in[1] - 1:06d}.mp4")
        )
        if not verdict.keep or verdict.info is None or not follows or last is None or parsed_in is None:
            await asyncio.to_thread(segments.remove, path)
            report.removed_files += 1
            why = verdict.problem or "it does not follow the camera's last segment, so its time is unknown"
            log.warning("camera %s: partial segment %s removed: %s", camera, name, why)
            continue
        start_ms = last.end_ms
        end_ms = start_ms + max(1, round(verdict.info.video_seconds * 1000))
        final = layout.final(camera, start_ms, parsed_in[0], parsed_in[1])
        await asyncio.to_thread(segments.commit, path, final)
        row = SegmentRow(
            camera=camera, start_ms=start_ms, end_ms=end_ms, bytes=verdict.info.bytes,
            frames=verdict.info.frames, keyframes=verdict.info.keyframes, codec=verdict.info.codec,
            audio=_audio_name(verdict.info), path=layout.relative(final),
            note="recovered" + (",truncated" if verdict.info.truncated else ""), run_id=last.run_id,
            media=verdict.media,
        )
        await index.insert(row, "restart")
        report.recovered += 1
        log.warning("camera %s: segment interrupted by a stop recovered: %s (%.1f s)", camera, name,
                    verdict.info.video_seconds)


def _final_files_since(layout: Layout, camera: str, since_ms: int) -> set[str]:
    base = layout.camera_dir(camera)
    if not base.is_dir():
        return set()
    since = datetime.fromtimestamp(since_ms / 1000, UTC)
    first_day, first_hour = f"{since:%Y-%m-%d}", f"{since:%H}"
    found = set()
    for day in sorted(os.listdir(base)):
        if day.startswith(".") or day < first_day or not (base / day).is_dir():
            continue
        for hour in sorted(os.listdir(base / day)):
            if day == first_day and hour < first_hour:
                continue
            directory = base / day / hour
            if not directory.is_dir():
                continue
            for name in os.listdir(directory):
                if name.endswith(".mp4"):
                    found.add(layout.relative(directory / name))
    return found
