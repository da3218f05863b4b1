"""File systems on the volume: make, mount, check, repair, and space.

ext4 is the default: it is what fsck tools on any rescue system know, and a
crash-interrupted segment costs at most that file. xfs is offered for large
arrays, where its mkfs is instant and its allocation keeps big files contiguous.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from nvrd.errors import Invalid
from nvrd.storage import tools

FILESYSTEMS = ("ext4", "xfs")
MOUNT_OPTIONS = "noatime"


@dataclass(frozen=True)
class Space:
    total_bytes: int
    free_bytes: int


def check_filesystem(name: str) -> str:
    if name not in FILESYSTEMS:
        raise Invalid(f"filesystem must be one of {', '.join(FILESYSTEMS)}", field="filesystem")
    return name


async def make(device: Path, filesystem: str, label: str = "nvrd") -> None:
    check_filesystem(filesystem)
    if filesystem == "ext4":
        # No reserved blocks: nothing on the volume runs as root but the recorder,
        # and retention keeps its own free-space floor.
        await tools.run("mkfs.ext4", "-F", "-q", "-m", "0", "-L", label, str(device), timeout=1800)
    else:
        await tools.run("mkfs.xfs", "-f", "-q", "-L", label, str(device), timeout=1800)


async def mount(device: Path, mountpoint: Path, read_only: bool = False) -> None:
    mountpoint.mkdir(parents=True, exist_ok=True)
    options = MOUNT_OPTIONS + (",ro" if read_only else "")
    await tools.run("mount", "-o", options, str(device), str(mountpoint))


# The volume's users (the recorder's index and open segments) let go when they see
# the volume leave `ready` on the bus, a moment after the storage job announced it.
UNMOUNT_BUSY_TRIES = 60
UNMOUNT_BUSY_WAIT_S = 0.5
EXIT_MOUNT_FAILURE = 32


async def unmount(mountpoint: Path) -> None:
    """Unmount, waiting up to 30 s while the file system is still busy."""
    for attempt in range(UNMOUNT_BUSY_TRIES):
        try:
            await tools.run("umount", str(mountpoint), timeout=300)
            return
        except tools.CommandFailed as exc:
            busy = exc.returncode == EXIT_MOUNT_FAILURE and "busy" in exc.stderr
            if not busy or attempt == UNMOUNT_BUSY_TRIES - 1:
                raise
        await asyncio.sleep(UNMOUNT_BUSY_WAIT_S)


async def remount(mountpoint: Path, read_only: bool) -> None:
    await tools.run("mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(mountpoint))


async def check(device: Path, filesystem: str) -> tuple[bool, str]:
    """Read-only check of an unmounted file system: (clean, report)."""
    if filesystem == "xfs":
        argv = ["xfs_repair", "-n", str(device)]
    else:
        argv = ["e2fsck", "-f", "-n", str(device)]
    try:
        report = await tools.run(*argv, timeout=6 * 3600)
    except tools.CommandFailed as exc:
        return False, exc.stderr
    return True, report


async def repair(device: Path, filesystem: str) -> str:
    if filesystem == "xfs":
        return await tools.run("xfs_repair", str(device), timeout=6 * 3600)
    # e2fsck: 1 = errors corrected, 2 = corrected and reboot advised; both are done.
    return await tools.run("e2fsck", "-f", "-y", str(device), timeout=6 * 3600, ok_codes=(0, 1, 2))


def mounted_device(mountpoint: Path, mounts: Path = Path("/proc/self/mounts")) -> tuple[str, str, set[str]] | None:
    """(device, fstype, options) mounted at `mountpoint`, from the kernel's table."""
    target = str(mountpoint)
    found = None
    for line in mounts.read_text().splitlines():
        device, where, fstype, options, *_ = line.split()
        if where.replace("\\040", " ") == target:
            found = (device, fstype, set(options.split(",")))  # the last one wins
    return found


def space(mountpoint: Path) -> Space:
    stat = os.statvfs(mountpoint)
    return Space(stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize)
