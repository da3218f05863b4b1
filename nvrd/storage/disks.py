"""Disk inventory: the whole disks that `[storage] disks` allows, and nothing else.

A `Disk` is a handle around one block device (`/sys/block/<name>`): every property
reads sysfs or the udev database again, so a disk that was pulled raises `Gone`
instead of answering with what it was. `inventory()` lists the allowed disks with a
stable slot each; `foreign_data_reason()` says what a disk already carries;
`DiskMonitor` delivers udev add/remove/change events for whole disks to the event loop.

Which disks: a pattern is an fnmatch glob matched against the device node
(`/dev/nvme0n1`) and every udev DEVLINKS entry (`/dev/disk/by-id/nvme-...`,
`/dev/disk/by-path/...`). Only whole disks with a physical device behind them are
candidates: partitions, md, dm, loop and zram devices never are, whatever a pattern
says.

Slots: by udev ID_PATH order (1, 2, ...), or a map slot → by-path given by the
caller. A map keeps slot numbers stable while a disk is out: persist
`slot_map(inventory(...))` once and pass it back in.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from nvrd.errors import Gone, NotFound
from nvrd.storage.sysfs import read_attr

if TYPE_CHECKING:  # pyudev is imported lazily: unit tests run without udev.
    import pyudev


SECTOR = 512  # /sys/block/*/size counts 512-byte sectors whatever the disk's block size
BY_ID = "/dev/disk/by-id/"
BY_PATH = "/dev/disk/by-path/"
# by-id links named after a WWN/EUI rather than model and serial: a poor label.
_OPAQUE_BY_ID = ("wwn-", "nvme-eui.", "nvme-nvme.", "nvme-uuid.")


class UdevDb(Protocol):
    """Where udev properties come from. `Pyudev` in production, a dict in unit tests."""

    def properties(self, name: str) -> Mapping[str, str] | None:
        """The udev properties of block device `name` now, or None if udev has none."""
        ...


class Pyudev:
    """udev properties through pyudev (libudev): uevent plus the udev database."""

    def __init__(self, context: pyudev.Context | None = None) -> None:
        import pyudev

        self._pyudev = pyudev
        self.context = context if context is not None else pyudev.Context()

    def properties(self, name: str) -> Mapping[str, str] | None:
        try:
            device = self._pyudev.Devices.from_name(self.context, "block", name)
        except self._pyudev.DeviceNotFoundError:
            return None
        return dict(device.properties)


def _read(path: Path) -> str | None:
    """An attribute, or None when missing (read_attr raises Gone if its directory went)."""
    try:
        return read_attr(path.parent, path.name)
    except Gone:
        return None


def _udev_decode(value: str) -> str:
    r"""udev's *_ENC values escape bytes as \xNN (ID_MODEL_ENC pads with \x20)."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


def normalize_md_uuid(uuid: str) -> str:
    """An md array UUID in mdadm's form (`xxxxxxxx:xxxxxxxx:xxxxxxxx:xxxxxxxx`).

    udev/blkid spell it `45df4147-7bd6-4219-6098-f11eda69fb1f` (ID_FS_UUID of a member);
    mdadm --detail and /dev/disk/by-id/md-uuid-* use colons. Both give the same value.
    """
    digits = re.sub(r"[^0-9a-fA-F]", "", uuid).lower()
    if len(digits) != 32:
        raise ValueError(f"not an md UUID: {uuid!r}")
    return ":".join(digits[i : i + 8] for i in range(0, 32, 8))


class Disk:
    """A whole block disk, read fresh from sysfs and udev on every access.

    `slot` is the only stored value: it is the inventory's numbering, not kernel state.
    The handle remembers the kernel's `diskseq` at lookup, so a name that is reused
    by a different disk after a hot-swap raises `Gone` instead of answering for it.
    """

    def __init__(
        self,
        name: str,
        *,
        sysfs: Path = Path("/sys"),
        udev: UdevDb | None = None,
        slot: int | None = None,
    ) -> None:
        self.name = name
        self.sysfs_root = sysfs
        self.udev: UdevDb = udev if udev is not None else Pyudev()
        self.slot = slot
        self._diskseq = _read(self._block / "diskseq")

    @classmethod
    def lookup(
        cls, device: str | os.PathLike[str], *, sysfs: Path = Path("/sys"), udev: UdevDb | None = None
    ) -> Disk:
        """The whole disk `nvme0n1`, `/dev/nvme0n1` or a /dev/disk/... link to it.

        Raises NotFound if there is no such block device or it is not a whole disk
        with a physical device behind it (a partition, md, dm, loop).
        """
        text = os.fspath(device)
        name = os.path.basename(os.path.realpath(text)) if text.startswith("/") else text
        block = sysfs / "block" / name
        if not block.is_dir():
            raise NotFound(f"{text} is not a whole disk", device=text)
        if not (block / "device").exists():
            raise NotFound(f"{text} is a virtual block device, not a disk", device=text)
        return cls(name, sysfs=sysfs, udev=udev)

    def __repr__(self) -> str:
        return f"Disk({self.name!r}, slot={self.slot!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Disk) and (self.name, self._diskseq) == (other.name, other._diskseq)

    def __hash__(self) -> int:
        return hash((self.name, self._diskseq))

    @property
    def _block(self) -> Path:
        return self.sysfs_root / "block" / self.name

    @property
    def exists(self) -> bool:
        """Still present, and still the same disk (same diskseq) as at lookup."""
        if not self._block.is_dir():
            return False
        return self._diskseq is None or _read(self._block / "diskseq") == self._diskseq

    def _attr(self, relative: str) -> str | None:
        value = _read(self._block / relative)
        if not self.exists:
            raise Gone(f"disk {self.name} is gone", device=str(self.device))
        return value

    def _props(self) -> Mapping[str, str]:
        props = self.udev.properties(self.name)
        if not self.exists:
            raise Gone(f"disk {self.name} is gone", device=str(self.device))
        return props or {}

    @property
    def device(self) -> Path:
        return Path("/dev") / self.name

    @property
    def sysfs_path(self) -> Path:
        return self._block

    @property
    def capacity_bytes(self) -> int:
        return int(self._attr("size") or 0) * SECTOR

    @property
    def removable(self) -> bool:
        return self._attr("removable") == "1"

    @property
    def read_only(self) -> bool:
        return self._attr("ro") == "1"

    @property
    def model(self) -> str | None:
        model = self._attr("device/model")
        if model:
            return model
        props = self._props()
        if "ID_MODEL_ENC" in props:
            return _udev_decode(props["ID_MODEL_ENC"]).strip() or None
        return props.get("ID_MODEL") or None

    @property
    def serial(self) -> str | None:
        """udev ID_SERIAL_SHORT (the drive's own serial), else sysfs device/serial."""
        serial = self._props().get("ID_SERIAL_SHORT")
        return serial or self._attr("device/serial") or None

    @property
    def properties(self) -> Mapping[str, str]:
        """All udev properties, as udev has them now."""
        return self._props()

    @property
    def devlinks(self) -> list[str]:
        return self._props().get("DEVLINKS", "").split()

    @property
    def id_path(self) -> str | None:
        """udev ID_PATH, e.g. `pci-0000:00:0b.0-nvme-1`: where the disk is plugged in."""
        return self._props().get("ID_PATH") or None

    @property
    def by_path(self) -> str | None:
        id_path = self.id_path
        return BY_PATH + id_path if id_path else None

    @property
    def by_id(self) -> str | None:
        """The /dev/disk/by-id link named after model and serial, if udev made one."""
        props = self._props()
        links = [link for link in props.get("DEVLINKS", "").split() if link.startswith(BY_ID)]
        serial = props.get("ID_SERIAL")
        if serial:
            for link in links:
                if link.endswith("-" + serial):
                    return link
        readable = [link for link in links if not link[len(BY_ID) :].startswith(_OPAQUE_BY_ID)]
        return (readable or links or [None])[0]

    @property
    def partitions(self) -> list[str]:
        block = self._block
        found = sorted(p.parent.name for p in block.glob("*/partition"))
        if not self.exists:
            raise Gone(f"disk {self.name} is gone", device=str(self.device))
        return found

    @property
    def holders(self) -> list[str]:
        """Block devices stacked directly on the disk or its partitions (md, dm)."""
        block = self._block
        names: list[str] = []
        for node in [block, *(block / p for p in self.partitions)]:
            try:
                names += sorted(h.name for h in (node / "holders").iterdir())
            except FileNotFoundError:
                pass
        if not self.exists:
            raise Gone(f"disk {self.name} is gone", device=str(self.device))
        return names

    @property
    def md_member_uuid(self) -> str | None:
        """The UUID (mdadm form) of the md array this disk is a member of, per udev."""
        props = self._props()
        if props.get("ID_FS_TYPE") == "linux_raid_member" and props.get("ID_FS_UUID"):
            try:
                return normalize_md_uuid(props["ID_FS_UUID"])
            except ValueError:
                return None
        return None

    @property
    def names(self) -> list[str]:
        """The device node and every udev link: what `[storage] disks` patterns match."""
        return [str(self.device), *self.devlinks]

    def matches(self, patterns: Iterable[str]) -> bool:
        return matches(self.names, patterns)


def matches(names: Iterable[str], patterns: Iterable[str]) -> bool:
    """True when any name matches any fnmatch pattern (case-sensitive, like paths)."""
    names = list(names)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns for name in names)


def foreign_data_reason(disk: Disk) -> str | None:
    """Why `disk` is not blank, or None when udev sees nothing on it.

    In order: an md superblock (the reason names the array UUID in mdadm's form; see
    `Disk.md_member_uuid` to tell our own array's member from a foreign one), LUKS, a
    filesystem or other signature, a partition table, partitions, and finally
    anything stacked on it (`holders`). Based on udev's blkid probe, which udev
    repeats when a writer closes the disk; re-probe right before destroying data.
    """
    props = disk.properties
    fs_type = props.get("ID_FS_TYPE")
    if fs_type == "linux_raid_member":
        uuid = disk.md_member_uuid
        return f"is a member of md array {uuid}" if uuid else "has an md RAID superblock"
    if fs_type == "crypto_LUKS":
        version = props.get("ID_FS_VERSION")
        return f"has a LUKS{version} header" if version else "has a LUKS header"
    if fs_type:
        usage = props.get("ID_FS_USAGE")
        kind = "filesystem" if usage in (None, "filesystem") else f"{usage} signature"
        return f"has a {fs_type} {kind}"
    if props.get("ID_PART_TABLE_TYPE"):
        return f"has a {props['ID_PART_TABLE_TYPE']} partition table"
    partitions = disk.partitions
    if partitions:
        return f"has partitions: {', '.join(partitions)}"
    holders = disk.holders
    if holders:
        return f"is in use by {', '.join(holders)}"
    return None


def _natural_key(text: str) -> tuple[tuple[int, str], ...]:
    """Order ID_PATHs as a person would: ata-2 before ata-10, PCI addresses in order.

    Each alphanumeric run compares by length, then text: right for decimal numbers
    without leading zeros (ports, LUNs) and for fixed-width hex (PCI domain, bus, slot).
    """
    return tuple((len(run), run.lower()) for run in re.findall(r"[0-9A-Za-z]+", text))


def _path_key(by_path: str) -> str:
    """A configured slot target, either `pci-...` (ID_PATH) or `/dev/disk/by-path/pci-...`."""
    return by_path.removeprefix(BY_PATH)


def candidate_names(sysfs: Path = Path("/sys")) -> list[str]:
    """Whole block disks with a physical device: /sys/block entries that have `device`."""
    block = sysfs / "block"
    try:
        entries = sorted(block.iterdir())
    except FileNotFoundError:
        return []
    return [entry.name for entry in entries if (entry / "device").exists()]


def _is_data_disk(disk: Disk, props: Mapping[str, str]) -> bool:
    """A fixed disk: not an optical drive, not removable media (card reader, floppy).

    `removable` is about the medium, not hot-plug: a SATA or NVMe disk in a hot-swap
    bay reports 0.
    """
    if props.get("DEVTYPE", "disk") != "disk":
        return False
    if props.get("ID_CDROM") == "1" or props.get("ID_TYPE") == "cd":
        return False
    return not disk.removable


def inventory(
    patterns: Sequence[str],
    *,
    slots: Mapping[int, str] | Mapping[str, str] | None = None,
    sysfs: Path = Path("/sys"),
    udev: UdevDb | None = None,
) -> list[Disk]:
    """The whole disks that `patterns` allow, each with a slot, ordered by slot.

    `slots` maps a slot number (an int, or digits as in `[storage] slots`) to a
    by-path (ID_PATH, with or without the /dev/disk/by-path/ prefix). A disk at a mapped path gets that slot; the rest
    get the next numbers after the highest mapped one (1, 2, ... without a map) in
    ID_PATH order. Disks without an ID_PATH come last, by name. A disk that
    vanishes while being listed is left out.
    """
    udev = udev if udev is not None else Pyudev()
    by_path = {_path_key(path): int(slot) for slot, path in (slots or {}).items()}
    if len(by_path) != len(slots or {}):
        raise ValueError("two slots map to the same by-path")
    found: list[tuple[Disk, str | None]] = []
    for name in candidate_names(sysfs):
        disk = Disk(name, sysfs=sysfs, udev=udev)
        try:
            props = disk.properties
            if not _is_data_disk(disk, props) or not disk.matches(patterns):
                continue
            found.append((disk, disk.id_path))
        except Gone:
            continue
    next_slot = max(by_path.values(), default=0) + 1
    unmapped = []
    for disk, id_path in found:
        if id_path is not None and id_path in by_path:
            disk.slot = by_path[id_path]
        else:
            unmapped.append((disk, id_path))
    unmapped.sort(key=lambda item: (item[1] is None, _natural_key(item[1] or ""), _natural_key(item[0].name)))
    for disk, _ in unmapped:
        disk.slot = next_slot
        next_slot += 1
    return sorted((disk for disk, _ in found), key=lambda d: d.slot or 0)


def slot_map(disks: Iterable[Disk]) -> dict[int, str]:
    """slot → ID_PATH of the listed disks: persist it to keep slots stable while a disk is out."""
    return {disk.slot: path for disk in disks if disk.slot is not None and (path := disk.id_path)}


# ---- udev events -------------------------------------------------------------------


@dataclass(frozen=True)
class DiskEvent:
    """One udev event for a whole disk. `properties` are the event's own (a removed
    disk's DEVLINKS and ID_PATH are still in its remove event)."""

    action: str  # add | remove | change (others, e.g. bind, are not delivered)
    name: str  # nvme0n1
    properties: Mapping[str, str] = field(default_factory=dict)

    @property
    def device(self) -> Path:
        return Path("/dev") / self.name

    @property
    def id_path(self) -> str | None:
        return self.properties.get("ID_PATH") or None

    @property
    def names(self) -> list[str]:
        return [str(self.device), *self.properties.get("DEVLINKS", "").split()]

    def matches(self, patterns: Iterable[str]) -> bool:
        return matches(self.names, patterns)


ACTIONS = frozenset({"add", "remove", "change"})


class DiskMonitor:
    """udev events for whole physical block disks, for `loop.add_reader(m.fileno(), ...)`.

    The filter (subsystem block, devtype disk) runs in the kernel socket; md, dm,
    loop and zram disks (under /sys/devices/virtual) are dropped here. `read()`
    never blocks: it returns whatever is queued, possibly nothing. Pass `patterns`
    to get only the disks that `[storage] disks` allows.
    """

    def __init__(self, patterns: Sequence[str] | None = None, context: pyudev.Context | None = None) -> None:
        import pyudev

        self.patterns = list(patterns) if patterns is not None else None
        self._monitor = pyudev.Monitor.from_netlink(context if context is not None else pyudev.Context())
        self._monitor.filter_by(subsystem="block", device_type="disk")
        self._monitor.start()

    def fileno(self) -> int:
        return self._monitor.fileno()

    def read(self) -> list[DiskEvent]:
        events = []
        while (device := self._monitor.poll(timeout=0)) is not None:
            if device.action not in ACTIONS or "/devices/virtual/" in device.sys_path:
                continue
            event = DiskEvent(device.action, device.sys_name, dict(device.properties))
            if self.patterns is None or event.matches(self.patterns):
                events.append(event)
        return events

    def close(self) -> None:
        # pyudev has no close(); the socket goes with the monitor object.
        self._monitor = None  # type: ignore[assignment]
