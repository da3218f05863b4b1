"""USB sticks for export: which removable disks may be written, and mounting them.

A USB target is a filesystem (a partition, or a whole disk formatted without a
partition table as many sticks are) of a supported type on a whole disk that

- is removable media or on the USB bus (sysfs `removable` is 1 for sticks, 0 for
  many USB hard disks, which udev marks ID_BUS=usb),
- matches one of `[exports] usb_disks` (fnmatch globs on the device node and its
  udev links, like `[storage] disks`), and
- matches none of `[storage] disks`: a disk the recorder may use for its volume
  is never a copy target, whatever else it looks like.

Anything else is not listed and never mounted. Supported filesystems: vfat and
exfat (what sticks come formatted with, readable on every desktop) and ext4 (for
Linux workstations). NTFS is not: the kernel driver before 5.15 could not write it
and ntfs3 is not what forensic users expect.

Mounts are short: `<state_dir>/usb/<name>` for one copy (or one free-space
look), nosuid,nodev,noexec, then unmounted so the stick can be pulled.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nvrd.errors import Conflict, Gone, NotFound
from nvrd.storage import fs, tools
from nvrd.storage.disks import SECTOR, Disk, Pyudev, UdevDb, candidate_names, matches
from nvrd.storage.sysfs import read_attr

log = logging.getLogger(__name__)

SUPPORTED_FILESYSTEMS = ("vfat", "exfat", "ext4")
# FAT32 cannot hold a file of 4 GiB or more.
VFAT_MAX_FILE_BYTES = 4 * 1024**3 - 1
# No device, no set-uid, no programs: a stick is untrusted input. noatime: no
# writes but ours.
BASE_OPTIONS = "nosuid,nodev,noexec,noatime"


def usb_disk_refusal(
    props: Mapping[str, str], removable: bool, names: Iterable[str], allowed: Sequence[str], storage: Sequence[str]
) -> str | None:
    """Why this whole disk is not a USB export target, or None when it is one.

    `props` are the disk's udev properties, `names` its device node and links.
    """
    names = list(names)
    if props.get("DEVTYPE", "disk") != "disk":
        return "not a whole disk"
    if props.get("ID_CDROM") == "1" or props.get("ID_TYPE") == "cd":
        return "an optical drive"
    if storage and matches(names, storage):
        return "one of the [storage] disks"
    if not (removable or props.get("ID_BUS") == "usb"):
        return "neither removable nor on USB"
    if not matches(names, allowed):
        return "not among [exports] usb_disks"
    return None


def filesystem_problem(fs_type: str | None) -> str | None:
    """Why a filesystem can't take an export, or None when it can."""
    if not fs_type:
        return "has no filesystem"
    if fs_type not in SUPPORTED_FILESYSTEMS:
        return f"has a {fs_type} filesystem; supported: {', '.join(SUPPORTED_FILESYSTEMS)}"
    return None


@dataclass(frozen=True)
class UsbFilesystem:
    """One filesystem on an allowed USB disk, as udev and sysfs describe it now."""

    device: Path  # /dev/sda1, or /dev/sda for a stick without partitions
    disk: str  # sda
    filesystem: str | None
    label: str | None
    uuid: str | None
    size_bytes: int
    model: str | None
    serial: str | None
    by_id: str | None
    problem: str | None  # why it can't be written (unsupported filesystem), or None

    @property
    def name(self) -> str:
        return self.device.name

    @property
    def names(self) -> list[str]:
        return [str(self.device), *([self.by_id] if self.by_id else [])]

    def summary(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "disk": f"/dev/{self.disk}",
            "by_id": self.by_id,
            "filesystem": self.filesystem,
            "label": self.label,
            "uuid": self.uuid,
            "size_bytes": self.size_bytes,
            "model": self.model,
            "serial": self.serial,
            "supported": self.problem is None,
            "problem": self.problem,
        }


def usb_filesystems(
    allowed: Sequence[str],
    storage: Sequence[str],
    *,
    sysfs: Path = Path("/sys"),
    udev: UdevDb | None = None,
) -> list[UsbFilesystem]:
    """The filesystems on the allowed USB disks present now, by device name.

    A disk with no filesystem at all is listed once (whole disk, with its problem),
    so that a user sees the stick and why it can't be used.
    """
    if not allowed:
        return []
    udev = udev if udev is not None else Pyudev()
    found: list[UsbFilesystem] = []
    for name in candidate_names(sysfs):
        disk = Disk(name, sysfs=sysfs, udev=udev)
        try:
            props = disk.properties
            if usb_disk_refusal(props, disk.removable, disk.names, allowed, storage) is not None:
                continue
            if disk.capacity_bytes == 0:
                continue  # a card reader without a card
            found += _filesystems_of(disk, props, udev, sysfs)
        except Gone:
            continue
    return sorted(found, key=lambda f: f.name)


def _filesystems_of(disk: Disk, props: Mapping[str, str], udev: UdevDb, sysfs: Path) -> list[UsbFilesystem]:
    model, serial = disk.model, disk.serial
    by_id = disk.by_id

    def entry(name: str, p: Mapping[str, str], size: int, link: str | None) -> UsbFilesystem:
        fs_type = p.get("ID_FS_TYPE") or None
        return UsbFilesystem(
            device=Path("/dev") / name, disk=disk.name, filesystem=fs_type,
            label=p.get("ID_FS_LABEL") or None, uuid=p.get("ID_FS_UUID") or None, size_bytes=size,
            model=model, serial=serial, by_id=link, problem=filesystem_problem(fs_type),
        )

    if props.get("ID_FS_TYPE") or not disk.partitions:
        return [entry(disk.name, props, disk.capacity_bytes, by_id)]
    entries = []
    for part in disk.partitions:
        part_props = udev.properties(part) or {}
        if not part_props.get("ID_FS_TYPE"):
            continue  # an extended partition, or one never formatted
        size = int(read_attr(sysfs / "class" / "block" / part, "size") or 0) * SECTOR
        links = [link for link in part_props.get("DEVLINKS", "").split() if by_id and link.startswith(by_id + "-part")]
        entries.append(entry(part, part_props, size, links[0] if links else None))
    return entries or [entry(disk.name, props, disk.capacity_bytes, by_id)]


def choose(filesystems: Sequence[UsbFilesystem], device: str | None) -> UsbFilesystem:
    """The filesystem a copy goes to: the one `device` names (its node, a link to
    it, or its disk when the disk holds only one), else the only usable one.

    Raises NotFound for an unknown device, Conflict when there is none, when the
    choice is ambiguous, or when the chosen one can't be written.
    """
    if device is not None:
        real = os.path.realpath(device) if device.startswith("/dev/") else f"/dev/{device}"
        named = [f for f in filesystems if real in (str(f.device), f"/dev/{f.disk}") or device in f.names]
        if not named:
            raise NotFound(f"{device} is not an allowed USB disk that is present", device=device)
        if len(named) > 1:
            raise Conflict(
                f"{device} holds several filesystems; name one of {', '.join(str(f.device) for f in named)}",
                device=device,
            )
        chosen = named[0]
    else:
        if not filesystems:
            raise Conflict("no USB disk is present (or none that [exports] usb_disks allows)")
        usable = [f for f in filesystems if f.problem is None]
        if len(usable) > 1:
            raise Conflict(
                f"several USB disks are present; choose one with `device`: "
                f"{', '.join(str(f.device) for f in usable)}"
            )
        chosen = usable[0] if usable else filesystems[0]
    if chosen.problem is not None:
        raise Conflict(f"USB disk {chosen.device} {chosen.problem}", device=str(chosen.device))
    return chosen


# ---- mounting --------------------------------------------------------------------


def mount_options(fs_type: str, read_only: bool) -> str:
    options = [BASE_OPTIONS]
    if fs_type in ("vfat", "exfat"):
        # FAT has no owners: the files appear as the daemon's, not world-writable.
        options.append(f"uid={os.getuid()},gid={os.getgid()},fmask=0133,dmask=0022")
    if read_only:
        # noload: a read-only look must not replay an ext4 journal (a write).
        options.append("ro,noload" if fs_type == "ext4" else "ro")
    return ",".join(options)


class UsbMount:
    """A USB filesystem mounted at `mountpoint` for as long as the `async with` lasts.

    Unmounting flushes what the kernel still holds; only after it is the stick safe
    to pull. The mountpoint directory is removed again.
    """

    def __init__(self, target: UsbFilesystem, mountpoint: Path, read_only: bool = False) -> None:
        self.target, self.mountpoint, self.read_only = target, mountpoint, read_only

    async def __aenter__(self) -> Path:
        assert self.target.filesystem in SUPPORTED_FILESYSTEMS
        await asyncio.to_thread(self.mountpoint.mkdir, parents=True, exist_ok=True)
        if await asyncio.to_thread(fs.mounted_device, self.mountpoint) is not None:
            raise Conflict(f"{self.mountpoint} is in use", device=str(self.target.device))
        try:
            await tools.run(
                "mount", "-t", self.target.filesystem, "-o", mount_options(self.target.filesystem, self.read_only),
                str(self.target.device), str(self.mountpoint), timeout=60,
            )
        except tools.CommandFailed as exc:
            await asyncio.to_thread(_rmdir, self.mountpoint)
            raise Conflict(f"USB disk {self.target.device} could not be mounted: {exc.stderr.strip()}",
                           device=str(self.target.device)) from exc
        return self.mountpoint

    async def __aexit__(self, *exc: object) -> None:
        # Shielded: a cancelled copy must still leave the stick unmounted.
        await asyncio.shield(self._unmount())

    async def _unmount(self) -> None:
        await fs.unmount(self.mountpoint)
        await asyncio.to_thread(_rmdir, self.mountpoint)


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


async def unmount_leftovers(root: Path) -> None:
    """Unmount what a previous run left under `root` (it died mid-copy)."""
    if not root.is_dir():
        return
    for mountpoint in sorted(root.iterdir()):
        if fs.mounted_device(mountpoint) is not None:
            log.warning("unmounting %s, left mounted by a previous run", mountpoint)
            await tools.run("umount", "--lazy", str(mountpoint), timeout=60)
        _rmdir(mountpoint)


# ---- hot-plug --------------------------------------------------------------------


class UsbWatcher:
    """Calls `on_change(action, device_name)` on the loop when a block device on USB
    comes or goes (udev add/remove of a disk or a partition; `change` after a
    format too). The caller re-lists: the event only says that something moved."""

    def __init__(self, on_change: Callable[[str, str], None]) -> None:
        self._on_change = on_change
        self._monitor: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        try:
            import pyudev

            monitor = pyudev.Monitor.from_netlink(pyudev.Context())
            monitor.filter_by("block")
            monitor.start()
        except Exception as exc:  # no udev (a container): listing still works on request
            log.warning("no udev monitor, USB disks are seen only when listed: %s", exc)
            return
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(monitor.fileno(), self._ready)
        self._monitor = monitor

    def _ready(self) -> None:
        while (device := self._monitor.poll(timeout=0)) is not None:
            if device.action not in ("add", "remove", "change"):
                continue
            if device.properties.get("ID_BUS") != "usb" or "/devices/virtual/" in device.sys_path:
                continue
            self._on_change(device.action, device.sys_name)

    def stop(self) -> None:
        if self._monitor is not None and self._loop is not None:
            self._loop.remove_reader(self._monitor.fileno())
        self._monitor = None
