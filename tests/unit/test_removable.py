"""Which disks export to USB may write: the filtering over udev properties and a
fake sysfs tree. tests/vm/test_usb_export.py runs it on a real QEMU USB stick."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from nvrd.errors import Conflict, NotFound
from nvrd.storage.removable import (
    choose, filesystem_problem, mount_options, usb_disk_refusal, usb_filesystems,
)

USB = ["/dev/disk/by-id/usb-*"]
STICK_ID = "/dev/disk/by-id/usb-QEMU_QEMU_HARDDISK_NVRDUSB0-0:0"
STICK = {"DEVTYPE": "disk", "ID_BUS": "usb", "DEVLINKS": STICK_ID}


def refusal(props: Mapping[str, str], removable: bool = True, storage: list[str] | None = None) -> str | None:
    names = ["/dev/sda", *props.get("DEVLINKS", "").split()]
    return usb_disk_refusal(props, removable, names, USB, storage or [])


def test_an_allowed_usb_stick_is_a_target() -> None:
    assert refusal(STICK) is None
    # A USB hard disk reports removable 0; ID_BUS=usb makes it one.
    assert refusal(STICK, removable=False) is None


def test_fixed_disks_storage_disks_and_unlisted_disks_are_refused() -> None:
    sata = {"DEVTYPE": "disk", "ID_BUS": "ata", "DEVLINKS": "/dev/disk/by-id/ata-QEMU_HARDDISK_QM1"}
    assert refusal(sata, removable=False) == "neither removable nor on USB"
    # Allowed for storage: never a USB target, even if it matches usb_disks.
    assert refusal(STICK, storage=["/dev/disk/by-id/usb-*NVRDUSB0*"]) == "one of the [storage] disks"
    # Removable but not matched by the allowed globs (a card reader on SATA).
    card = {"DEVTYPE": "disk", "ID_BUS": "ata", "DEVLINKS": "/dev/disk/by-id/ata-Card_Reader"}
    assert refusal(card, removable=True) == "not among [exports] usb_disks"
    assert refusal({**STICK, "DEVTYPE": "partition"}) == "not a whole disk"
    assert refusal({**STICK, "ID_CDROM": "1"}) == "an optical drive"


@pytest.mark.parametrize("fs_type", ["vfat", "exfat", "ext4"])
def test_supported_filesystems(fs_type: str) -> None:
    assert filesystem_problem(fs_type) is None


def test_unsupported_or_missing_filesystem_is_named() -> None:
    assert filesystem_problem(None) == "has no filesystem"
    problem = filesystem_problem("ntfs")
    assert problem is not None and "ntfs" in problem and "vfat" in problem
    assert filesystem_problem("crypto_LUKS") is not None


def test_mount_options_are_safe() -> None:
    for fs_type in ("vfat", "exfat", "ext4"):
        options = mount_options(fs_type, read_only=False).split(",")
        assert {"nosuid", "nodev", "noexec"} <= set(options)
        assert "ro" not in options
    assert "fmask=0133" in mount_options("vfat", False)
    assert "uid=" not in mount_options("ext4", False)
    assert {"ro", "noload"} <= set(mount_options("ext4", True).split(","))


class FakeUdev:
    def __init__(self, props: Mapping[str, dict[str, str]]) -> None:
        self.props = dict(props)

    def properties(self, name: str) -> Mapping[str, str] | None:
        return self.props.get(name)


def add_disk(sysfs: Path, name: str, removable: bool, sectors: int, partitions: Mapping[str, int] = {}) -> None:
    block = sysfs / "block" / name
    (block / "device").mkdir(parents=True)
    (block / "removable").write_text("1\n" if removable else "0\n")
    (block / "size").write_text(f"{sectors}\n")
    for part, size in partitions.items():
        (block / part).mkdir()
        (block / part / "partition").write_text("1\n")
        (sysfs / "class" / "block" / part).mkdir(parents=True)
        (sysfs / "class" / "block" / part / "size").write_text(f"{size}\n")


def test_listing_finds_partitions_and_whole_disk_filesystems(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    add_disk(sysfs, "nvme0n1", removable=False, sectors=1 << 20)
    add_disk(sysfs, "sda", removable=True, sectors=131072, partitions={"sda1": 129024})
    add_disk(sysfs, "sdb", removable=True, sectors=65536)  # superfloppy: no partition table
    add_disk(sysfs, "sdc", removable=True, sectors=65536)  # not allowed
    udev = FakeUdev({
        "nvme0n1": {"DEVTYPE": "disk", "ID_FS_TYPE": "vfat", "DEVLINKS": "/dev/disk/by-id/nvme-X"},
        "sda": {**STICK, "ID_SERIAL_SHORT": "NVRDUSB0", "ID_SERIAL": "QEMU_QEMU_HARDDISK_NVRDUSB0-0:0",
                "ID_PART_TABLE_TYPE": "dos"},
        "sda1": {"DEVTYPE": "partition", "ID_FS_TYPE": "vfat", "ID_FS_LABEL": "EVIDENCE",
                 "DEVLINKS": STICK_ID + "-part1"},
        "sdb": {"DEVTYPE": "disk", "ID_BUS": "usb", "ID_FS_TYPE": "ntfs",
                "DEVLINKS": "/dev/disk/by-id/usb-Other_Stick-0:0"},
        "sdc": {"DEVTYPE": "disk", "ID_BUS": "usb", "ID_FS_TYPE": "vfat", "DEVLINKS": "/dev/disk/by-id/usb-X"},
    })
    found = usb_filesystems(
        ["/dev/disk/by-id/usb-QEMU*", "/dev/disk/by-id/usb-Other*"], [], sysfs=sysfs, udev=udev
    )
    assert [str(f.device) for f in found] == ["/dev/sda1", "/dev/sdb"]
    part, other = found
    assert (part.filesystem, part.label, part.size_bytes, part.problem) == ("vfat", "EVIDENCE", 129024 * 512, None)
    assert part.serial == "NVRDUSB0" and part.by_id == STICK_ID + "-part1"
    assert other.filesystem == "ntfs" and other.problem is not None
    assert usb_filesystems([], [], sysfs=sysfs, udev=udev) == []

    # Choosing: the only usable one by default; by node, link or disk; refusals.
    assert choose(found, None) is part
    assert choose(found, STICK_ID + "-part1") is part
    assert choose(found, "/dev/sda") is part
    with pytest.raises(Conflict, match="ntfs"):
        choose(found, "/dev/sdb")
    with pytest.raises(NotFound):
        choose(found, "/dev/sdc")
    with pytest.raises(Conflict, match="no USB disk"):
        choose([], None)
    second = udev.props["sdb"] | {"ID_FS_TYPE": "exfat"}
    udev.props["sdb"] = second
    both = usb_filesystems(["/dev/disk/by-id/usb-*"], ["/dev/disk/by-id/usb-X"], sysfs=sysfs, udev=udev)
    assert [str(f.device) for f in both] == ["/dev/sda1", "/dev/sdb"]  # sdc is a storage disk
    with pytest.raises(Conflict, match="several USB disks"):
        choose(both, None)
