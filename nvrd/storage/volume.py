"""The volume that recordings live on, as the rest of nvrd sees it.

Whatever is underneath (a plain directory, or md RAID with LUKS and a filesystem),
consumers such as recording only need: where is it, and may I write now? That is a
`VolumeStatus`. The storage service owns it; it goes out on the bus as
`volume.changed` whenever it changes, and `app[VOLUME].status` gives the current one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from nvrd.bus import Bus

log = logging.getLogger(__name__)

TOPIC = "volume.changed"


class VolumeState(StrEnum):
    READY = "ready"  # mounted and writable: record
    WRITE_PROTECTED = "write_protected"  # mounted read-only on request: play back only
    LOCKED = "locked"  # encrypted and not unlocked
    REPAIRING = "repairing"  # a repair or format runs; hands off
    UNAVAILABLE = "unavailable"  # no volume: no array, not mounted, or failed


@dataclass(frozen=True)
class VolumeStatus:
    state: VolumeState
    path: Path | None  # where recordings go, when mounted
    reason: str | None = None  # why it is not ready, for logs and gap reasons

    @property
    def writable(self) -> bool:
        return self.state is VolumeState.READY

    def as_event(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        data["path"] = str(self.path) if self.path else None
        data["writable"] = self.writable
        return data


class Volume(Protocol):
    """What the API and recording need of either kind of storage."""

    status: VolumeStatus

    def snapshot(self) -> dict[str, Any]: ...


class DirectoryVolume:
    """`[storage] mode = "directory"`: a plain directory is the volume.

    Created if missing (a development instance starts from nothing); a directory
    that can't be written is reported as unavailable with the reason, not a crash.
    """

    def __init__(self, directory: Path, bus: Bus) -> None:
        self.directory = directory
        self._bus = bus
        self.status = VolumeStatus(VolumeState.UNAVAILABLE, None, "not checked yet")

    async def start(self) -> None:
        self._set(await asyncio.to_thread(self._check))

    def _check(self) -> VolumeStatus:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return VolumeStatus(VolumeState.UNAVAILABLE, None, f"{self.directory}: {exc.strerror}")
        if not os.access(self.directory, os.W_OK | os.X_OK):
            return VolumeStatus(VolumeState.UNAVAILABLE, None, f"{self.directory} is not writable")
        return VolumeStatus(VolumeState.READY, self.directory)

    def snapshot(self) -> dict[str, Any]:
        mounted = self.status.path is not None
        stat = os.statvfs(self.directory) if mounted else None
        return {
            "mode": "directory",
            "raid": None,
            "encrypted": False,
            "locked": False,
            "mounted": mounted,
            "write_protected": False,
            "filesystem": None,
            "total_bytes": stat.f_blocks * stat.f_frsize if stat else None,
            "free_bytes": stat.f_bavail * stat.f_frsize if stat else None,
            "volume": self.status.state.value,
            "reason": self.status.reason,
            "operation": None,
            "problems": [],
        }

    def _set(self, status: VolumeStatus) -> None:
        if status == self.status:
            return
        self.status = status
        if status.reason:
            log.warning("volume %s: %s", status.state.value, status.reason)
        self._bus.publish(TOPIC, status.as_event())
