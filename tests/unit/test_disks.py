"""Disk inventory against a fake sysfs tree and the udev properties recorded in the
vm guest (tests/data/udev, made by tests/data/record.sh).

The recording guest had five QEMU NVMe disks (serials REC0000..REC0004: blank, ext4,
a DOS partition table, LUKS2, an md RAID 1 member) and one SATA disk on AHCI.
tests/vm/test_disks.py runs the same code against the real kernel and udev.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvrd.errors import Gone, NotFound
from nvrd.storage.disks import (
    Disk,
    DiskEvent,
    _natural_key,
    _udev_decode,
    foreign_data_reason,
    inventory,
    matches,
    normalize_md_uuid,
    slot_map,
)

DATA = Path(__file__).parents[1] / "data" / "udev"
ROLES = ("blank", "ext4", "dos-table", "luks2", "md-member", "sata")
NVME_BY_ID = "/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_REC*"
GiB = 1 << 30
# The md array that REC0004 belongs to, as `mdadm --detail` spells its UUID.
MD_UUID = "45df4147:7bd64219:6098f11e:da69fb1f"


def recorded_properties(role: str) -> dict[str, str]:
    lines = (DATA / f"{role}.properties").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def recorded_sysfs(name: str) -> dict[str, str]:
    lines = (DATA / f"{name}.sysfs").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


class FakeUdev:
    def __init__(self, props: Mapping[str, dict[str, str]]) -> None:
        self.props = dict(props)

    def properties(self, name: str) -> Mapping[str, str] | None:
        found = self.props.get(name)
        return dict(found) if found is not None else None


def add_block(sysfs: Path, name: str, attrs: Mapping[str, str], physical: bool = True) -> Path:
    block = sysfs / "block" / name
    block.mkdir(parents=True)
    (block / "holders").mkdir()
    for key, value in attrs.items():
        if key in ("name", "devpath"):
            continue
        path = block / key
        if key.startswith("device/") and not physical:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    if physical:
        (block / "device").mkdir(exist_ok=True)
    return block


@pytest.fixture
def machine(tmp_path: Path) -> tuple[Path, FakeUdev]:
    """The recording guest as the inventory sees it, plus md, loop and zram devices."""
    sysfs = tmp_path / "sys"
    props: dict[str, dict[str, str]] = {}
    for role in ROLES:
        p = recorded_properties(role)
        name = p["DEVNAME"].removeprefix("/dev/")
        props[name] = p
        add_block(sysfs, name, recorded_sysfs(name))
    # The partition that the DOS table holds: a subdirectory with a `partition` file.
    pt = recorded_properties("dos-table")["DEVNAME"].removeprefix("/dev/")
    part = sysfs / "block" / pt / f"{pt}p1"
    part.mkdir()
    (part / "partition").write_text("1\n")
    props[f"{pt}p1"] = recorded_properties("partition")
    # The guest's CD-ROM (vng's QEMU has one): a physical ATA device, but no data disk.
    add_block(sysfs, "sr0", {"size": "2097151", "removable": "1", "ro": "0", "device/model": "QEMU DVD-ROM"})
    props["sr0"] = {"DEVNAME": "/dev/sr0", "DEVTYPE": "disk", "ID_CDROM": "1", "ID_TYPE": "cd",
                    "ID_SERIAL": "QEMU_DVD-ROM_QM00003", "ID_SERIAL_SHORT": "QM00003",
                    "DEVLINKS": "/dev/cdrom /dev/disk/by-id/ata-QEMU_DVD-ROM_QM00003"}
    # Virtual block devices that a careless "/dev/*" pattern would also match.
    for name in ("md127", "loop0", "zram0", "dm-0"):
        add_block(sysfs, name, {"size": "1048576", "removable": "0", "ro": "0"}, physical=False)
        props[name] = {"DEVNAME": f"/dev/{name}", "DEVTYPE": "disk", "SUBSYSTEM": "block"}
    return sysfs, FakeUdev(props)


def by_serial(disks: list[Disk]) -> dict[str | None, Disk]:
    return {d.serial: d for d in disks}


def test_inventory_lists_only_the_disks_the_patterns_allow(machine: tuple[Path, FakeUdev]) -> None:
    sysfs, udev = machine
    disks = inventory([NVME_BY_ID], sysfs=sysfs, udev=udev)
    assert sorted(d.serial for d in disks) == [f"REC000{i}" for i in range(5)]
    for disk in disks:
        assert disk.capacity_bytes == 256 * 1024 * 1024
        assert disk.model == "QEMU NVMe Ctrl"
        assert disk.device == Path("/dev") / disk.name
        assert disk.by_id == f"/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_{disk.serial}_1"
        assert not disk.removable


def test_a_device_node_pattern_names_one_disk(machine: tuple[Path, FakeUdev]) -> None:
    sysfs, udev = machine
    [disk] = inventory(["/dev/sda"], sysfs=sysfs, udev=udev)
    assert disk.serial == "QM00013"
    assert disk.model == "QEMU HARDDISK"
    assert disk.by_id == "/dev/disk/by-id/ata-QEMU_HARDDISK_QM00013"
    assert disk.slot == 1


def test_partitions_and_virtual_devices_are_never_listed(machine: tuple[Path, FakeUdev]) -> None:
    sysfs, udev = machine
    names = {d.name for d in inventory(["/dev/*", "/dev/disk/*/*"], sysfs=sysfs, udev=udev)}
    assert names == {"nvme0n1", "nvme1n1", "nvme2n1", "nvme3n1", "nvme4n1", "sda"}


def test_optical_drives_and_removable_media_are_never_listed(machine: tuple[Path, FakeUdev]) -> None:
    sysfs, udev = machine
    assert [d.name for d in inventory(["/dev/disk/by-id/ata-*", "/dev/sr0"], sysfs=sysfs, udev=udev)] == ["sda"]
    # A card reader: removable media, no ID_CDROM.
    (sysfs / "block" / "sda" / "removable").write_text("1\n")
    assert inventory(["/dev/sda"], sysfs=sysfs, udev=udev) == []


def test_no_pattern_no_disk(machine: tuple[Path, FakeUdev]) -> None:
    sysfs, udev = machine
    assert inventory([], sysfs=sysfs, udev=udev) == []
    assert inventory(["/dev/disk/by-id/ata-*"], sysfs=sysfs, udev=udev)[0].serial == "QM00013"


def test_slots_follow_the_id_path_order(machine: tuple[Path, FakeUdev]) -> None:
    sysfs, udev = machine
    disks = inventory(["/dev/nvme*", "/dev/sda"], sysfs=sysfs, udev=udev)
    assert [d.slot for d in disks] == [1, 2, 3, 4, 5, 6]
    paths = [d.id_path for d in disks]
    assert paths == sorted(paths, key=lambda p: _natural_key(p or ""))
    # The AHCI controller sits at 00:0a.0, before the NVMe controllers at 00:0b.0...
    assert disks[0].serial == "QM00013"


def test_a_configured_slot_map_wins_and_the_rest_follow(machine: tuple[Path, FakeUdev]) -> None:
    sysfs, udev = machine
    rec3 = recorded_properties("luks2")["ID_PATH"]
    sata = recorded_properties("sata")["ID_PATH"]
    # As in [storage] slots: string keys and /dev/disk/by-path/ links.
    slots = {"1": f"/dev/disk/by-path/{rec3}", "2": f"/dev/disk/by-path/{sata}"}
    disks = inventory(["/dev/nvme*", "/dev/sda"], slots=slots, sysfs=sysfs, udev=udev)
    found = by_serial(disks)
    assert found["REC0003"].slot == 1
    assert found["QM00013"].slot == 2
    assert sorted(found[f"REC000{i}"].slot for i in (0, 1, 2, 4)) == [3, 4, 5, 6]
    assert [d.slot for d in disks] == [1, 2, 3, 4, 5, 6]


def test_a_persisted_slot_map_keeps_slots_while_a_disk_is_out(machine: tuple[Path, FakeUdev]) -> None:
    sysfs, udev = machine
    before = inventory([NVME_BY_ID], sysfs=sysfs, udev=udev)
    saved = slot_map(before)
    slot_of = {d.serial: d.slot for d in before}
    pulled = by_serial(before)["REC0001"]
    for path in sorted(pulled.sysfs_path.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    pulled.sysfs_path.rmdir()
    after = by_serial(inventory([NVME_BY_ID], slots=saved, sysfs=sysfs, udev=udev))
    assert "REC0001" not in after
    for serial, disk in after.items():
        assert disk.slot == slot_of[serial]
    # Without the map the disks behind the gap would move up a slot.
    shifted = by_serial(inventory([NVME_BY_ID], sysfs=sysfs, udev=udev))
    assert shifted["REC0002"].slot == slot_of["REC0002"] - 1


def test_two_slots_for_one_path_is_refused(machine: tuple[Path, FakeUdev]) -> None:
    sysfs, udev = machine
    with pytest.raises(ValueError):
        inventory([NVME_BY_ID], slots={1: "pci-x", 2: "/dev/disk/by-path/pci-x"}, sysfs=sysfs, udev=udev)


@pytest.mark.parametrize(
    ("role", "reason"),
    [
        ("blank", None),
        ("ext4", "has a ext4 filesystem"),
        ("dos-table", "has a dos partition table"),
        ("luks2", "has a LUKS2 header"),
        ("md-member", f"is a member of md array {MD_UUID}"),
    ],
)
def test_foreign_data_reason_from_recorded_udev(machine: tuple[Path, FakeUdev], role: str, reason: str | None) -> None:
    sysfs, udev = machine
    name = recorded_properties(role)["DEVNAME"]
    disk = Disk.lookup(name, sysfs=sysfs, udev=udev)
    assert foreign_data_reason(disk) == reason


def test_md_member_uuid_compares_with_mdadm_and_udev_spelling(machine: tuple[Path, FakeUdev]) -> None:
    sysfs, udev = machine
    member = Disk.lookup(recorded_properties("md-member")["DEVNAME"], sysfs=sysfs, udev=udev)
    assert member.md_member_uuid == MD_UUID
    assert normalize_md_uuid(recorded_properties("md-member")["ID_FS_UUID"]) == MD_UUID
    blank = Disk.lookup(recorded_properties("blank")["DEVNAME"], sysfs=sysfs, udev=udev)
    assert blank.md_member_uuid is None


def test_partitions_udev_has_not_probed_yet_still_count(machine: tuple[Path, FakeUdev]) -> None:
    sysfs, udev = machine
    name = recorded_properties("dos-table")["DEVNAME"].removeprefix("/dev/")
    udev.props[name] = {k: v for k, v in udev.props[name].items() if not k.startswith("ID_PART_TABLE")}
    disk = Disk(name, sysfs=sysfs, udev=udev)
    assert foreign_data_reason(disk) == f"has partitions: {name}p1"


def test_a_disk_held_by_md_or_dm_is_not_blank(machine: tuple[Path, FakeUdev]) -> None:
    sysfs, udev = machine
    disk = Disk("nvme0n1", sysfs=sysfs, udev=udev)
    (disk.sysfs_path / "holders" / "dm-0").mkdir()
    assert foreign_data_reason(disk) == "is in use by dm-0"


def test_a_pulled_disk_raises_gone(machine: tuple[Path, FakeUdev]) -> None:
    sysfs, udev = machine
    disk = Disk.lookup("/dev/nvme0n1", sysfs=sysfs, udev=udev)
    assert disk.exists
    for path in sorted(disk.sysfs_path.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    disk.sysfs_path.rmdir()
    assert not disk.exists
    for read in (lambda: disk.capacity_bytes, lambda: disk.serial, lambda: disk.model, lambda: disk.id_path):
        with pytest.raises(Gone):
            read()
    with pytest.raises(Gone):
        foreign_data_reason(disk)


def test_a_reused_name_is_a_different_disk(machine: tuple[Path, FakeUdev]) -> None:
    sysfs, udev = machine
    (sysfs / "block" / "nvme0n1" / "diskseq").write_text("4\n")
    disk = Disk("nvme0n1", sysfs=sysfs, udev=udev)
    assert disk.capacity_bytes == 256 << 20
    # Pulled and replaced: the kernel hands out the name again, with a new diskseq.
    (sysfs / "block" / "nvme0n1" / "diskseq").write_text("9\n")
    with pytest.raises(Gone):
        disk.capacity_bytes
    assert Disk("nvme0n1", sysfs=sysfs, udev=udev).exists


def test_lookup_refuses_partitions_virtual_devices_and_unknown_names(machine: tuple[Path, FakeUdev]) -> None:
    sysfs, udev = machine
    for name in ("nvme2n1p1", "/dev/md127", "loop0", "nvme9n1"):
        with pytest.raises(NotFound):
            Disk.lookup(name, sysfs=sysfs, udev=udev)


def test_disk_event_matches_by_its_own_devlinks() -> None:
    props = recorded_properties("blank")
    event = DiskEvent("remove", "nvme0n1", props)
    assert event.matches([NVME_BY_ID])
    assert event.matches(["/dev/nvme0n1"])
    assert not event.matches(["/dev/disk/by-id/ata-*"])
    assert event.id_path == props["ID_PATH"]


def test_udev_model_encoding() -> None:
    assert _udev_decode(recorded_properties("sata")["ID_MODEL_ENC"]).strip() == "QEMU HARDDISK"


# ---- properties -------------------------------------------------------------------

hex32 = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)


@given(hex32, st.sampled_from([":", "-"]), st.booleans())
def test_md_uuid_normalizes_every_spelling_to_one(digits: str, sep: str, upper: bool) -> None:
    if sep == ":":
        text = ":".join(digits[i : i + 8] for i in range(0, 32, 8))
    else:
        text = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
    result = normalize_md_uuid(text.upper() if upper else text)
    assert result.replace(":", "") == digits
    assert normalize_md_uuid(result) == result


@given(st.text(alphabet="0123456789abcdef:-", max_size=40))
def test_md_uuid_rejects_anything_but_32_hex_digits(text: str) -> None:
    digits = [c for c in text if c not in ":-"]
    if len(digits) == 32:
        assert len(normalize_md_uuid(text)) == 35
    else:
        with pytest.raises(ValueError):
            normalize_md_uuid(text)


@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=20, unique=True))
def test_id_paths_order_by_number_not_by_text(ports: list[int]) -> None:
    paths = [f"pci-0000:00:1f.2-ata-{n}.0" for n in ports]
    assert sorted(paths, key=_natural_key) == [f"pci-0000:00:1f.2-ata-{n}.0" for n in sorted(ports)]


@given(st.lists(st.integers(min_value=0, max_value=0xFF), min_size=1, max_size=20, unique=True))
def test_pci_addresses_order_numerically(devices: list[int]) -> None:
    paths = [f"pci-0000:{d:02x}:00.0-nvme-1" for d in devices]
    assert sorted(paths, key=_natural_key) == [f"pci-0000:{d:02x}:00.0-nvme-1" for d in sorted(devices)]


path_text = st.text(alphabet=string.ascii_letters + string.digits + "/-_.:", min_size=1, max_size=30)


@given(st.lists(path_text, min_size=1, max_size=5), st.data())
def test_a_name_always_matches_itself_and_a_glob_of_its_prefix(names: list[str], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(names))
    assert matches(names, [name])
    assert matches(names, [name[: len(name) // 2] + "*"])
    assert not matches(names, [])
