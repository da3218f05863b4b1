"""Export to USB: a finished export's file copied onto a stick, as a job.

The job mounts the stick (nvrd/storage/removable.py decides which disks may be
written and how they are mounted), checks the free space, copies the file in
1 MiB chunks with progress into `nvrd-exports/` as a hidden `.part` file, fsyncs
it, renames it to its name, fsyncs the directory, and unmounts: when the job says
`succeeded` the stick can be pulled. The request waits for the checks that need
the stick mounted (free space), so that they answer as a 409 rather than as a
failed job; the copy itself outlives the request.

One job per stick at a time. USB disks coming and going are announced on the
bus (`usb.added`, `usb.removed`, `usb.changed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nvrd.bus import Bus
from nvrd.errors import Busy, Conflict
from nvrd.jobs import Job, JobContext, Jobs
from nvrd.recording.exports import ByteProgress, ExportService
from nvrd.recording.playback import CHUNK
from nvrd.storage import fs
from nvrd.storage.removable import (
    VFAT_MAX_FILE_BYTES, UsbFilesystem, UsbMount, UsbWatcher, choose, unmount_leftovers, usb_filesystems,
)

log = logging.getLogger(__name__)

JOB_KIND = "usb-copy"
TARGET_DIR = "nvrd-exports"  # on the stick
# Room for the directory entry and FAT/extent metadata beside the file.
MARGIN_BYTES = 1024 * 1024
# The copy takes this share of the bar; syncing and unmounting the rest.
COPY_SHARE = 0.95
_TOPICS = {"add": "usb.added", "remove": "usb.removed", "change": "usb.changed"}


class UsbExports:
    def __init__(
        self, exports: ExportService, jobs: Jobs, bus: Bus, allowed: Sequence[str], storage: Sequence[str],
        state_dir: Path,
    ) -> None:
        self.exports, self.jobs, self.bus = exports, jobs, bus
        self.allowed, self.storage = list(allowed), list(storage)
        self.mount_root = state_dir / "usb"
        self._busy: set[str] = set()  # device names mounted by us right now
        self._watcher = UsbWatcher(self._usb_changed)

    async def start(self) -> None:
        await unmount_leftovers(self.mount_root)
        if self.allowed:
            self._watcher.start()

    async def close(self) -> None:
        self._watcher.stop()

    def _usb_changed(self, action: str, name: str) -> None:
        self.bus.publish(_TOPICS[action], {"device": f"/dev/{name}"})

    async def _present(self) -> list[UsbFilesystem]:
        return await asyncio.to_thread(usb_filesystems, self.allowed, self.storage)

    # -- listing ---------------------------------------------------------------

    async def list(self) -> list[dict[str, Any]]:
        """The allowed USB filesystems present, with free space: each usable one not
        in use is mounted read-only for a moment to measure it."""
        rows = []
        for target in await self._present():
            row = target.summary() | {"free_bytes": None, "in_use": target.name in self._busy}
            if target.problem is None and not row["in_use"]:
                self._busy.add(target.name)
                try:
                    async with UsbMount(target, self.mount_root / target.name, read_only=True) as mounted:
                        row["free_bytes"] = (await asyncio.to_thread(fs.space, mounted)).free_bytes
                except Conflict as exc:
                    row["problem"] = exc.detail
                finally:
                    self._busy.discard(target.name)
            rows.append(row)
        return rows

    # -- copying ---------------------------------------------------------------

    async def copy(self, export_id: str, device: str | None) -> tuple[Job, UsbFilesystem]:
        """Start copying the export's file to the USB disk; returns the job and the
        chosen filesystem once the stick is mounted and the file fits. Raises
        NotFound/Conflict otherwise."""
        source = self.exports.file(export_id)  # Conflict while not finished
        size = (await asyncio.to_thread(source.stat)).st_size
        target = choose(await self._present(), device)
        if target.filesystem == "vfat" and size > VFAT_MAX_FILE_BYTES:
            raise Conflict(
                f"the export ({size} bytes) is larger than a vfat (FAT32) file can be (4 GiB); "
                "use a stick formatted exfat or ext4", device=str(target.device),
            )
        if target.name in self._busy:
            raise Busy(f"USB disk {target.device} is in use", device=str(target.device))
        self._busy.add(target.name)
        checked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        job = self.jobs.submit(
            JOB_KIND, lambda ctx: self._run(source, size, target, checked, ctx), target=export_id
        )
        # Shielded: a client that goes away must not cancel the job's checks.
        await asyncio.shield(checked)
        return job, target

    async def _run(
        self, source: Path, size: int, target: UsbFilesystem, checked: asyncio.Future[None], ctx: JobContext
    ) -> dict[str, Any]:
        try:
            ctx.progress(0.0, f"mounting {target.device}")
            async with UsbMount(target, self.mount_root / target.name) as mounted:
                free = (await asyncio.to_thread(fs.space, mounted)).free_bytes
                if free < size + MARGIN_BYTES:
                    raise Conflict(
                        f"not enough free space on USB disk {target.device}: {size + MARGIN_BYTES} bytes "
                        f"needed, {free} free", device=str(target.device),
                    )
                checked.set_result(None)
                progress = ByteProgress(ctx, size, 0.0, COPY_SHARE, "copying", asyncio.get_running_loop())
                await _copy_in_thread(source, mounted / TARGET_DIR, progress.from_thread)
                ctx.progress(COPY_SHARE, f"unmounting {target.device}")
            # Unmounted (flushed) here: the stick can be pulled.
        except BaseException as exc:
            if not checked.done():
                checked.set_exception(exc if isinstance(exc, Exception) else Conflict("the copy was cancelled"))
            raise
        finally:
            self._busy.discard(target.name)
        log.info("export %s copied to USB disk %s (%s)", source.name, target.device, target.label)
        return {
            "device": str(target.device), "filesystem": target.filesystem, "label": target.label,
            "path": f"{TARGET_DIR}/{source.name}", "bytes": size, "unmounted": True,
        }


async def _copy_in_thread(source: Path, directory: Path, progress: Callable[[int], None]) -> None:
    """`_copy` in a thread; a cancelled job stops it at the next chunk and waits for
    it, so that nothing writes to the stick while it is unmounted."""
    stop = threading.Event()
    task = asyncio.ensure_future(asyncio.to_thread(_copy, source, directory, progress, stop))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(Exception):
            await task
        raise


class _Stopped(Exception):
    pass


def _copy(source: Path, directory: Path, progress: Callable[[int], None], stop: threading.Event) -> None:
    """Copy `source` to `directory/<name>` through a `.part` file, fsynced, then
    renamed, then the directory fsynced: a stick pulled early holds either the
    whole file or a `.part`, never a short file under the real name."""
    directory.mkdir(exist_ok=True)
    final = directory / source.name
    part = directory / f".{source.name}.part"
    try:
        with open(source, "rb") as src, open(part, "wb") as dst:
            while chunk := src.read(CHUNK):
                if stop.is_set():
                    raise _Stopped()
                dst.write(chunk)
                progress(len(chunk))
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(part, final)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
