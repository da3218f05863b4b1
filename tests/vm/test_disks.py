"""The disk inventory on the real kernel and udev: the guest's four QEMU NVMe test disks.

Runs inside the vm-tier guest (tests/vm/run). Every disk that is written to is one
of the test disks, found by serial through the `clean_disks` fixture.
"""

from __future__ import annotations

import os
import select
import struct
import time
from pathlib import Path

import pytest

import guest
from nvrd.errors import Gone
from nvrd.storage.disks import Disk, DiskEvent, DiskMonitor, foreign_data_reason, inventory, slot_map

REPO = Path(__file__).resolve().parents[2]
#: tests/vm/run's --rwdir, shared with the host: the disk images live there.
SCRATCH = Path(os.environ.get("NVRD_VM_SCRATCH", REPO / "build" / "vm" / "run"))
#: Only the test disks: their by-id links carry the serials tests/vm/run gave them.
PATTERN = "/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_NVRD*"
PASSPHRASE = b"nvrd vm tier disk test"


def by_serial(disks: list[Disk]) -> dict[str | None, Disk]:
    return {d.serial: d for d in disks}


def write_dos_partition_table(dev: Path) -> None:
    """One Linux partition from 1 MiB to the end, as fdisk would write it."""
    fd = os.open(dev, os.O_RDWR | os.O_EXCL)
    try:
        sectors = os.lseek(fd, 0, os.SEEK_END) // 512
        mbr = bytearray(512)
        struct.pack_into("<I", mbr, 440, 0x6E767264)  # disk identifier
        mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", 2048, sectors - 2048)
        mbr[510:512] = b"\x55\xaa"
        os.pwrite(fd, bytes(mbr), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    # udev watches NVMe disks: on close after write it re-reads the partition table
    # itself (BLKRRPART), and our own BLKRRPART would race it with EBUSY. Ask only if
    # the partition has not appeared by then.
    guest.settle()
    partition = Path("/sys/class/block") / f"{dev.name}p1"
    for _ in range(20):
        if partition.exists():
            return
        guest.run(["blockdev", "--rereadpt", dev], check=False)
        guest.settle()
        time.sleep(0.2)
    raise AssertionError(f"{dev}: the kernel never showed partition {partition.name}")


def test_inventory_finds_exactly_the_test_disks(vm_disks: list[guest.Disk]) -> None:
    disks = inventory([PATTERN])
    assert sorted(d.serial for d in disks) == sorted(d.serial for d in vm_disks)
    found = by_serial(disks)
    for index, expected in enumerate(vm_disks):
        disk = found[expected.serial]
        assert disk.device == expected.dev
        # The size of the image file behind the emulated disk, seen from outside the kernel.
        assert disk.capacity_bytes == (SCRATCH / f"disk{index}.img").stat().st_size
        assert disk.model == guest.QEMU_NVME_MODEL
        assert disk.by_id is not None and Path(disk.by_id).resolve() == expected.dev
        assert disk.id_path and Path(disk.by_path or "").resolve() == expected.dev
        assert not disk.removable


def test_slots_follow_the_controllers_and_are_stable(vm_disks: list[guest.Disk]) -> None:
    first = inventory([PATTERN])
    assert [d.slot for d in first] == [1, 2, 3, 4]
    # tests/vm/run plugs the controllers in serial order, so bay 1 is NVRD0000.
    assert [d.serial for d in first] == [d.serial for d in vm_disks]
    again = inventory([PATTERN])
    assert [(d.slot, d.serial) for d in again] == [(d.slot, d.serial) for d in first]


def test_a_disk_outside_the_patterns_is_never_listed(vm_disks: list[guest.Disk]) -> None:
    chosen = [vm_disks[0], vm_disks[2]]
    patterns = [f"/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_{d.serial}" for d in chosen]
    assert sorted(d.serial for d in inventory(patterns)) == sorted(d.serial for d in chosen)
    # A device node pattern works too, and names one disk only.
    [only] = inventory([str(vm_disks[1].dev)])
    assert only.serial == vm_disks[1].serial
    assert inventory(["/dev/disk/by-id/ata-*"]) == []


def test_partitions_and_md_arrays_are_never_listed(clean_disks: list[guest.Disk]) -> None:
    first, second, third = clean_disks[:3]
    write_dos_partition_table(first.dev)
    guest.run(["mdadm", "--create", "/dev/md/nvrdinv", "--run", "--metadata=1.2", "--level=1",
               "--raid-devices=2", second.dev, third.dev])
    guest.settle()
    assert Path(f"/dev/{first.name}p1").exists()
    listed = {d.name for d in inventory(["/dev/*", "/dev/disk/*/*", "/dev/md/*"])}
    # Only the four whole NVMe disks: not the partition, not the md array.
    assert listed == {d.name for d in clean_disks}


def test_disks_that_carry_data_are_reported_with_the_reason(clean_disks: list[guest.Disk]) -> None:
    ext4, table, luks, member = clean_disks
    guest.run(["mkfs.ext4", "-q", "-F", ext4.dev])
    write_dos_partition_table(table.dev)
    guest.run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
               "--pbkdf-force-iterations", "1000", "--key-file=-", luks.dev], input=PASSPHRASE)
    guest.run(["mdadm", "--create", "/dev/md/nvrdforeign", "--run", "--metadata=1.2", "--level=1",
               "--raid-devices=2", member.dev, "missing"])
    guest.settle()
    md_uuid = next(
        line.split("=", 1)[1]
        for line in guest.run(["mdadm", "--detail", "--export", "/dev/md/nvrdforeign"]).stdout.decode().splitlines()
        if line.startswith("MD_UUID=")
    )
    found = by_serial(inventory([PATTERN]))
    assert foreign_data_reason(found[ext4.serial]) == "has a ext4 filesystem"
    assert foreign_data_reason(found[table.serial]) == "has a dos partition table"
    assert foreign_data_reason(found[luks.serial]) == "has a LUKS2 header"
    assert foreign_data_reason(found[member.serial]) == f"is a member of md array {md_uuid}"
    assert found[member.serial].md_member_uuid == md_uuid


def test_blank_disks_carry_nothing(clean_disks: list[guest.Disk]) -> None:
    for disk in inventory([PATTERN]):
        assert foreign_data_reason(disk) is None
        assert disk.md_member_uuid is None


def wait_for_event(monitor: DiskMonitor, action: str, serial: str, timeout: float = 90) -> DiskEvent:
    """Block on the monitor's fd, as loop.add_reader would, until the event comes."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([monitor], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        for event in monitor.read():
            seen.append(f"{event.action} {event.name}")
            if event.action == action and event.properties.get("ID_SERIAL_SHORT") == serial:
                return event
    raise AssertionError(f"no udev {action} for {serial} within {timeout} s; saw {seen}")


def test_hot_unplug_gone_event_and_the_same_slot_on_return(clean_disks: list[guest.Disk]) -> None:
    # The third disk (the storage tests pull the second): the fourth sits behind it,
    # so without the slot map it would move up a slot while the third is out.
    target = clean_disks[2]
    before = inventory([PATTERN])
    slots = slot_map(before)
    slot_of = {d.serial: d.slot for d in before}
    handle = by_serial(before)[target.serial]
    id_path = handle.id_path
    monitor = DiskMonitor([PATTERN])
    assert monitor.read() == []  # nothing queued: read() does not block
    pci = target.pci_device
    (pci / "remove").write_text("1\n")
    try:
        removed = wait_for_event(monitor, "remove", target.serial)
        assert removed.matches([PATTERN]) and removed.id_path == id_path
        assert not handle.exists
        with pytest.raises(Gone):
            handle.capacity_bytes
        during = by_serial(inventory([PATTERN], slots=slots))
        assert target.serial not in during
        assert {s: d.slot for s, d in during.items()} == {
            serial: slot for serial, slot in slot_of.items() if serial != target.serial
        }
        behind = clean_disks[3].serial
        assert by_serial(inventory([PATTERN]))[behind].slot == slot_of[behind] - 1
    finally:
        Path("/sys/bus/pci/rescan").write_text("1\n")
    added = wait_for_event(monitor, "add", target.serial)
    assert added.matches([PATTERN])
    guest.settle()
    guest.wait_for(f"{target.serial} back", lambda: target.serial in by_serial(inventory([PATTERN])), timeout=60)
    after = by_serial(inventory([PATTERN], slots=slots))
    assert after[target.serial].slot == slot_of[target.serial]
    assert after[target.serial].id_path == id_path
    assert after[target.serial].capacity_bytes == target.size
    monitor.close()
