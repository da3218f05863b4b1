"""Exports: a range of one camera's recordings as a file to download, made by a job.

The clip (playback.plan_clip: the stored fragments, stream copy) carries the
metadata a handed-over file must have (camera, UTC start and end, the recorder's
serial): an MP4 export is the clip itself with the tags in its moov, written
directly; an MKV export is the clip fed to ffmpeg, which remuxes it with the tags. With a password the file is
then put in a ZIP with WinZip AES-256 (pyzipper), which 7-Zip and the usual tools
open with the password and nothing opens without it.

Files are made in a staging area on the volume (`exports/<id>/`), so they count
against the volume's free space like recordings do; an export that would not fit
is refused. They expire (config `[exports] expire_after_hours`). Exports are jobs
(kind `export`), at most `[exports] max_concurrent` running, the rest queued.

A finished export survives a restart (a package upgrade must not throw away the
footage an operator is about to hand over): beside its file, `export.json` says
what it is and when it expires, written (atomically, fsynced) only once the file
is complete. At start-up, or when the volume first becomes available, every
staged export with such a manifest and its file is taken back; anything else in
the staging area (an export cut short by the stop) is removed. Queued and running
exports are not resumed: their jobs ended with the process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hmac
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import pyzipper
import pyzipper.zipfile
import pyzipper.zipfile_aes
from Cryptodome.Cipher import AES
from Cryptodome.Protocol.KDF import PBKDF2
from Cryptodome.Util import Counter

from nvrd.errors import Conflict, NotFound
from nvrd.jobs import Job, JobContext, Jobs, job_summary
from nvrd.recording.ffmpeg import export_command, run_export
from nvrd.recording.playback import CHUNK, Clip, iso
from nvrd.recording.retention import free_bytes

log = logging.getLogger(__name__)

STAGING = "exports"
MANIFEST = "export.json"
JOB_KIND = "export"
# Left free on the volume beside an export (recording goes on meanwhile).
HEADROOM_BYTES = 1024**3


class ExportFormat(StrEnum):
    MKV = "mkv"
    MP4 = "mp4"




@dataclass(frozen=True)
class ExportSettings:
    expire_after_s: float = 24 * 3600.0
    sweep_interval_s: float = 60.0


@dataclass
class Export:
    id: str
    camera: str
    camera_name: str
    from_ms: int
    to_ms: int
    format: ExportFormat
    encrypted: bool
    created_by: str | None
    job: Job | None = None
    path: Path | None = None  # the finished file
    bytes: int | None = None
    expires_mono: float | None = None
    expires: datetime | None = None
    first_frame_ms: int | None = None
    last_frame_ms: int | None = None
    password: str | None = field(default=None, repr=False)
    created: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    @property
    def state(self) -> str:
        if self.job is not None:
            return self.job.state.value
        # Taken back after a restart: only finished exports are.
        return "succeeded" if self.path is not None else "queued"

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "camera": self.camera,
            "camera_name": self.camera_name,
            "from": _dt(self.from_ms),
            "to": _dt(self.to_ms),
            "format": self.format.value,
            "encrypted": self.encrypted,
            "created_by": self.created_by,
            "state": self.state,
            "job": job_summary(self.job) if self.job else None,
            "file": f"/api/v1/exports/{self.id}/file" if self.path else None,
            "filename": self.path.name if self.path else None,
            "bytes": self.bytes,
            "expires": self.expires,
            "created": self.created,
        }

    def manifest(self) -> dict[str, Any]:
        """What `export.json` keeps of a finished export (never the password)."""
        assert self.path is not None and self.expires is not None
        return {
            "id": self.id, "camera": self.camera, "camera_name": self.camera_name,
            "from_ms": self.from_ms, "to_ms": self.to_ms, "format": self.format.value,
            "encrypted": self.encrypted, "created_by": self.created_by, "filename": self.path.name,
            "bytes": self.bytes, "expires": self.expires.isoformat(), "created": self.created.isoformat(),
            "first_frame_ms": self.first_frame_ms, "last_frame_ms": self.last_frame_ms,
        }

    @classmethod
    def from_manifest(cls, directory: Path, data: dict[str, Any]) -> Export:
        """Raises KeyError/ValueError/TypeError on a manifest that isn't one."""
        if data["id"] != directory.name or "/" in data["filename"]:
            raise ValueError(f"manifest of {data['id']!r} in {directory.name}")
        expires = datetime.fromisoformat(data["expires"])
        return cls(
            id=data["id"], camera=str(data["camera"]), camera_name=str(data["camera_name"]),
            from_ms=int(data["from_ms"]), to_ms=int(data["to_ms"]), format=ExportFormat(data["format"]),
            encrypted=bool(data["encrypted"]), created_by=data["created_by"],
            path=directory / data["filename"], bytes=int(data["bytes"]), expires=expires,
            expires_mono=time.monotonic() + (expires - datetime.now(UTC)).total_seconds(),
            first_frame_ms=data["first_frame_ms"], last_frame_ms=data["last_frame_ms"],
            created=datetime.fromisoformat(data["created"]),
        )


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


class ExportService:
    def __init__(self, recorder: Any, jobs: Jobs, serial: str, settings: ExportSettings) -> None:
        self.recorder = recorder
        self.jobs = jobs
        self.serial = serial
        self.settings = settings
        self.exports: dict[str, Export] = {}
        self._sweeper: asyncio.Task[None] | None = None
        # The staging area whose earlier exports were taken back (a new volume,
        # e.g. after a format, is looked at again).
        self._adopted: Path | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self._adopt)
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="exports-expiry")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    def _staging(self, must: bool = True) -> Path | None:
        layout = self.recorder.layout
        if layout is None or not self.recorder.ready:
            if must:
                raise Conflict(f"the volume is not available: {self.recorder.volume_reason}")
            return None
        return layout.volume / STAGING

    def _adopt(self) -> None:
        """Take back the finished exports an earlier run left in the staging area
        and remove the rest, once per staging area. Small reads: the caller may
        run it on the loop."""
        staging = self._staging(must=False)
        if staging is None or staging == self._adopted:
            return
        self._adopted = staging
        if not staging.is_dir():
            return
        for directory in staging.iterdir():
            if directory.name in self.exports:
                continue
            try:
                export = Export.from_manifest(directory, json.loads((directory / MANIFEST).read_text()))
                if export.path is None or export.path.stat().st_size != export.bytes:
                    raise ValueError(f"{export.path} is not the file its manifest describes")
            except (OSError, KeyError, ValueError, TypeError) as exc:
                log.info("export %s left unfinished by an earlier run removed (%s)", directory.name, exc)
                shutil.rmtree(directory, ignore_errors=True)
                continue
            self.exports[export.id] = export
            log.info("export %s of camera %s taken back after a restart", export.id, export.camera)

    # -- requests --------------------------------------------------------------

    async def create(
        self, camera: str, from_ms: int, to_ms: int, fmt: ExportFormat, password: str | None, account: str | None
    ) -> Export:
        clip = await self.recorder.clip(camera, from_ms, to_ms)  # NotFound when nothing is in range
        staging = self._staging()
        assert staging is not None
        self._adopt()
        needed = clip.size * (2 if password else 1) + HEADROOM_BYTES
        free = await asyncio.to_thread(free_bytes, staging.parent)
        if free < needed:
            raise Conflict(f"not enough free space for the export: {needed} bytes needed, {free} free")
        supervisor = self.recorder.supervisors.get(camera)
        export = Export(
            id=secrets.token_hex(8), camera=camera, camera_name=supervisor.camera.name if supervisor else camera,
            from_ms=from_ms, to_ms=to_ms, format=fmt, encrypted=password is not None, created_by=account,
            password=password,
        )
        self.exports[export.id] = export
        export.job = self.jobs.submit(JOB_KIND, lambda ctx: self._run(export, ctx), target=export.id)
        return export

    def list(self) -> list[Export]:
        self._adopt()
        self._expire()
        return sorted(self.exports.values(), key=lambda e: e.created)

    def get(self, export_id: str) -> Export:
        self._adopt()
        self._expire()
        try:
            return self.exports[export_id]
        except KeyError:
            raise NotFound(f"no export {export_id!r}", export=export_id) from None

    def file(self, export_id: str) -> Path:
        export = self.get(export_id)
        if export.path is None:
            state = export.job.state.value if export.job else "queued"
            raise Conflict(f"export {export_id} is not ready ({state})", export=export_id)
        return export.path

    async def delete(self, export_id: str) -> None:
        export = self.get(export_id)
        del self.exports[export_id]
        if export.job is not None and not export.job.done:
            self.jobs.cancel(export.job.id)
        await self._remove_files(export)

    # -- the job ---------------------------------------------------------------

    async def _run(self, export: Export, ctx: JobContext) -> dict[str, Any]:
        # Planned again now: a queued export may have waited while retention ran.
        clip = await self.recorder.clip(export.camera, export.from_ms, export.to_ms)
        staging = self._staging()
        assert staging is not None
        directory = staging / export.id
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        export.first_frame_ms, export.last_frame_ms = clip.start_ms, clip.end_ms
        stamp = datetime.fromtimestamp(clip.from_ms / 1000, UTC).strftime("%Y%m%dT%H%M%SZ")
        media = directory / f"{export.camera}-{stamp}.{export.format.value}"
        metadata = {
            "title": f"{export.camera_name} {iso(clip.from_ms)} to {iso(export.to_ms)}",
            "comment": f"camera {export.camera_name} ({export.camera}), {iso(clip.from_ms)} to "
                       f"{iso(clip.end_ms)} UTC, recorder {self.serial}",
            "creation_time": iso(clip.start_ms),
            "camera": export.camera_name,
            "camera_id": export.camera,
            "start_utc": iso(clip.from_ms),
            "end_utc": iso(min(clip.end_ms, export.to_ms)),
            "first_frame_utc": iso(clip.start_ms),
            "recorder_serial": self.serial,
        }
        loop = asyncio.get_running_loop()
        # An MKV with a password is written, then encrypted: two halves of the bar.
        halves = export.password is not None and export.format is ExportFormat.MKV
        copying = ByteProgress(ctx, clip.size, 0.0, 0.5 if halves else 1.0, "copying", loop)
        encrypting: ByteProgress | None = None
        try:
            if export.format is ExportFormat.MP4:
                # The clip is an MP4 already: written as it is, tags in its moov;
                # no process, the bytes copied once (near `cat` speed); with a
                # password straight into the ZIP, the plain file never on the disk.
                tagged = clip.tagged(metadata)
                if export.password is None:
                    result = media
                    await asyncio.to_thread(_write, tagged, media, copying.from_thread)
                else:
                    result = media.with_suffix(media.suffix + ".zip")
                    await asyncio.to_thread(
                        _encrypt, tagged.read_into, tagged.size, media.name, result, export.password,
                        copying.from_thread,
                    )
            else:
                feed = functools.partial(clip.splice_to, progress=copying.from_thread)
                await run_export(export_command("matroska", metadata, media), feed)
                result = media
                if export.password is None:
                    await asyncio.to_thread(_fsync, media)
                else:
                    # Matroska is written with seeks (cues, sizes): it can't be
                    # streamed into the archive, so it is encrypted afterwards
                    # (not fsynced first: it is removed once encrypted).
                    result = media.with_suffix(media.suffix + ".zip")
                    size = (await asyncio.to_thread(media.stat)).st_size
                    encrypting = ByteProgress(ctx, size, 0.5, 0.5, "encrypting", loop)
                    await asyncio.to_thread(_encrypt_file, media, result, export.password, encrypting.from_thread)
                    await asyncio.to_thread(media.unlink)
            export.password = None  # not kept longer than needed
        except BaseException:
            for progress in (copying, encrypting):
                if progress is not None:
                    progress.stop()
            await self._remove_files(export)
            raise
        if export.id not in self.exports:  # deleted while it ran
            await self._remove_files(export)
            raise NotFound(f"export {export.id} was deleted")
        export.path = result
        export.bytes = (await asyncio.to_thread(result.stat)).st_size
        export.expires_mono = time.monotonic() + self.settings.expire_after_s
        export.expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=self.settings.expire_after_s)
        # Last: an export is taken back after a restart only with its manifest.
        await asyncio.to_thread(_write_manifest, directory / MANIFEST, export.manifest())
        log.info("export %s of camera %s ready: %s (%d bytes)", export.id, export.camera, result.name, export.bytes)
        return {"export": export.id, "bytes": export.bytes}

    async def _remove_files(self, export: Export) -> None:
        staging = self._staging(must=False)
        if staging is not None:
            await asyncio.to_thread(shutil.rmtree, staging / export.id, True)

    # -- expiry ----------------------------------------------------------------

    def _expire(self) -> list[Export]:
        now = time.monotonic()
        gone = [e for e in self.exports.values() if e.expires_mono is not None and e.expires_mono <= now]
        staging = self._staging(must=False)
        for export in gone:
            del self.exports[export.id]
            if staging is not None:
                shutil.rmtree(staging / export.id, ignore_errors=True)
            log.info("export %s expired", export.id)
        return gone

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                await asyncio.to_thread(self._expire)
            except Exception:  # noqa: BLE001 - expiry keeps going
                log.exception("export expiry failed")


def _write(clip: Clip, target: Path, progress: Callable[[int], None]) -> None:
    """The clip into `target`, fsynced: an export is handed over, so it must be on
    the disk when the job says it is done. Runs in a thread."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        clip.write_to(fd, progress)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_manifest(target: Path, manifest: dict[str, Any]) -> None:
    """`manifest` as JSON at `target`, whole or not at all (a crash leaves no
    half-written manifest); runs in a thread."""
    part = target.with_name(target.name + ".part")
    with open(part, "w", encoding="utf-8") as f:
        json.dump(manifest, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, target)
    _fsync(target.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ByteProgress:
    """Bytes done of `total` → the job's progress, from `base` over `span`."""

    def __init__(
        self, ctx: JobContext, total: int, base: float, span: float, message: str, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.ctx, self.total, self.base, self.span, self.message, self.loop = ctx, max(total, 1), base, span, message, loop
        self.done = 0
        self.stopped = False

    def __call__(self, n: int) -> None:
        self.done += n
        self.ctx.progress(self.base + self.span * min(self.done / self.total, 1.0), self.message)

    def from_thread(self, n: int) -> None:
        """Progress from a worker thread; raises Stopped once `stop()` was called,
        so a cancelled job's thread ends at its next report instead of running on
        (a thread can't be cancelled from outside)."""
        if self.stopped:
            raise Stopped("the job was stopped")
        self.loop.call_soon_threadsafe(self, n)

    def stop(self) -> None:
        self.stopped = True


class Stopped(Exception):
    """Raised in a job's worker thread after the job was cancelled or failed."""


# Bytes per unit of encryption work: a multiple of the AES block (16), so each
# unit's CTR counter starts on a block boundary.
AES_CHUNK = CHUNK
# Units encrypted ahead of the one being written (memory: 1 MiB each).
AES_AHEAD = 4
AES_WORKERS = 2

# (offset, buffer) -> how many bytes from `offset` were read into `buffer`:
# what gets encrypted (read into the buffer it is then encrypted in).
Reader = Callable[[int, bytearray], int]


def _encrypt_file(path: Path, target: Path, password: str, progress: Callable[[int], None]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        _encrypt(lambda offset, buffer: os.preadv(fd, [buffer], offset), size, path.name, target, password, progress)
    finally:
        os.close(fd)


def _encrypt(
    read: Reader, size: int, name: str, target: Path, password: str, progress: Callable[[int], None]
) -> None:
    """`size` bytes from `read` as the file `name` in a ZIP at `target`, WinZip
    AES-256 (AE-2), stored (video doesn't compress), fsynced. Runs in a thread.

    pyzipper writes the archive (headers, salt, password verifier, ZIP64, the
    central directory), but its one-thread write path (CRC, pycryptodome's CTR
    allocating its output, pycryptodome's own SHA-1 for the HMAC, the write) ran
    at ~245 MiB/s here, 4.7 times `cat`. So the bulk work is spread over the two
    cores: AES_WORKERS threads read and encrypt units ahead (pycryptodome's
    AES-CTR, each unit from its own block counter), a thread takes the HMAC-SHA1
    in order (hashlib: OpenSSL, SHA-NI), and this one writes. All of them release
    the GIL for the bulk of their work."""
    with _SealingZipFile(target, "w", compression=pyzipper.ZIP_STORED, encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(password.encode("utf-8"))
        dst = zf.open(name, "w", force_zip64=True)
        encrypter = dst.encrypter
        assert isinstance(dst, _SealedWriteFile) and isinstance(encrypter, _SealingEncrypter)
        try:
            with dst, ThreadPoolExecutor(AES_WORKERS, thread_name_prefix="export-aes") as pool:
                _seal_in_order(read, size, name, encrypter, pool, dst, progress)
        finally:  # after dst's close, which takes the last of the HMAC
            encrypter.close()
    _fsync(target)


def _seal_in_order(
    read: Reader, size: int, name: str, encrypter: _SealingEncrypter, pool: ThreadPoolExecutor,
    dst: _SealedWriteFile, progress: Callable[[int], None],
) -> None:
    """Units encrypted by `pool`, up to AES_AHEAD ahead, written to `dst` in order."""

    def seal(offset: int, n: int) -> bytearray:
        # Read into a new bytearray and encrypted in place: pycryptodome's own
        # output is copied into a bytes again (600 vs 970 MiB/s here).
        sealed = bytearray(n)
        if read(offset, sealed) != n:
            raise OSError(f"{name}: could not read {n} bytes at {offset}")
        encrypter.cipher_at(offset).encrypt(sealed, output=sealed)
        return sealed

    offsets = iter(range(0, size, AES_CHUNK))
    pending: collections.deque[Future[bytearray]] = collections.deque()

    def submit() -> None:
        offset = next(offsets, None)
        if offset is not None:
            pending.append(pool.submit(seal, offset, min(AES_CHUNK, size - offset)))

    for _ in range(AES_AHEAD):
        submit()
    try:
        while pending:
            sealed = pending.popleft().result()
            submit()
            dst.write_sealed(sealed)
            progress(len(sealed))
    finally:
        for future in pending:
            future.cancel()


class _SealingEncrypter(pyzipper.zipfile_aes.AESZipEncrypter):
    """pyzipper's WinZip AES-256 encrypter (salt, key derivation, password
    verifier, header fields), AE-2 (no CRC stored, so none is computed), for
    data encrypted elsewhere: `cipher_at` gives the AES-CTR for any unit, and
    `authenticate` takes the HMAC of the ciphertext, in order, in a thread of its
    own. `close()` when done (that thread)."""

    KEY_BYTES = 32  # AES-256

    def __init__(self, pwd: bytes) -> None:
        super().__init__(pwd, nbits=256, force_wz_aes_version=pyzipper.zipfile_aes.WZ_AES_V2)
        # The same derivation as pyzipper's __init__ (which keeps only its cipher
        # objects): the AES key, the HMAC key, the 2-byte password verifier.
        keys = PBKDF2(pwd, self.salt, count=1000, dkLen=2 * self.KEY_BYTES + 2)
        assert keys[2 * self.KEY_BYTES :] == self.encpwdverify
        self.key = keys[: self.KEY_BYTES]
        self.mac = hmac.new(keys[self.KEY_BYTES : 2 * self.KEY_BYTES], digestmod="sha1")
        # One thread: the updates run in the order they were submitted.
        self._hashing = ThreadPoolExecutor(1, thread_name_prefix="export-hmac")
        self._hashed: collections.deque[Future[None]] = collections.deque()

    def cipher_at(self, offset: int) -> Any:
        """pycryptodome's AES-CTR for the data from `offset` (a multiple of 16):
        WinZip's counter is little-endian, 1 for the first block."""
        counter = Counter.new(128, initial_value=1 + offset // 16, little_endian=True)
        return AES.new(self.key, AES.MODE_CTR, counter=counter)

    def authenticate(self, sealed: bytearray) -> None:
        self._hashed.append(self._hashing.submit(self.mac.update, sealed))
        if len(self._hashed) > AES_AHEAD:  # not too far behind: memory
            self._hashed.popleft().result()

    def encrypt(self, data: bytes) -> bytes:
        # pyzipper's close() passes its (empty) compressor flush through here;
        # the data itself comes sealed (_SealedWriteFile.write_sealed).
        if data:
            raise RuntimeError("plain data written to a sealed ZIP entry")
        return b""

    def flush(self) -> bytes:
        while self._hashed:
            self._hashed.popleft().result()
        return self.mac.digest()[: self.hmac_size]

    def close(self) -> None:
        self._hashing.shutdown(cancel_futures=True)


class _SealedWriteFile(pyzipper.zipfile._ZipWriteFile):  # noqa: SLF001 - pyzipper's hook (zipwritefile_cls)
    """An entry being written from ciphertext: stored, so sizes are the data's."""

    @property
    def encrypter(self) -> Any:
        return self._encrypter

    def write_sealed(self, sealed: bytearray) -> None:
        self._file_size += len(sealed)
        self._compress_size += len(sealed)
        self._encrypter.authenticate(sealed)
        self._fileobj.write(sealed)


class _SealingZipFile(pyzipper.AESZipFile):
    """An AESZipFile whose entries are written from ciphertext (`_SealedWriteFile`)."""

    zipwritefile_cls = _SealedWriteFile

    def get_encrypter(self) -> _SealingEncrypter:
        return _SealingEncrypter(self.pwd)
