"""md status from sysfs: a fake tree in tmp_path, shaped like the real one.

The vm tier runs the same code against the real kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from nvrd.errors import Gone, NotFound
from nvrd.storage.md import (
    MdArray,
    MemberStatus,
    RaidStatus,
    normalize_uuid,
    raid10_lost_mirror,
    raid_status,
)


def make_array(
    sysfs: Path,
    name: str = "md127",
    level: str = "raid1",
    raid_disks: int = 2,
    array_state: str = "clean",
    sync_action: str = "idle",
    degraded: int | None = 0,
    members: dict[str, tuple[str, str]] | None = None,
    uuid: str = "5a2c3f4e-1b2d-3c4e-5f60-718293a4b5c6",
    sync_completed: str = "none",
) -> MdArray:
    md = sysfs / "block" / name / "md"
    md.mkdir(parents=True)
    (sysfs / "block" / name / "size").write_text("1046528\n")
    attrs = {"level": level, "raid_disks": str(raid_disks), "array_state": array_state,
             "sync_action": sync_action, "uuid": uuid, "sync_completed": sync_completed,
             "sync_speed": "none"}
    if degraded is not None:
        attrs["degraded"] = str(degraded)
    for key, value in attrs.items():
        (md / key).write_text(value + "\n")
    for device, (state, slot) in (members or {}).items():
        member = md / f"dev-{device}"
        member.mkdir()
        (member / "state").write_text(state + "\n")
        (member / "slot").write_text(slot + "\n")
    return MdArray(name, sysfs)


def test_healthy_mirror_is_online(tmp_path: Path) -> None:
    array = make_array(tmp_path, members={"nvme0n1": ("in_sync", "0"), "nvme1n1": ("in_sync", "1")})
    assert array.level == 1 and array.raid_disks == 2 and array.degraded_count == 0
    assert array.status is RaidStatus.ONLINE
    assert array.size_bytes == 1046528 * 512
    assert array.member_statuses() == {"nvme0n1": MemberStatus.ONLINE, "nvme1n1": MemberStatus.ONLINE}
    assert array.sync_progress is None


def test_faulty_member_degrades_and_keeps_its_role(tmp_path: Path) -> None:
    array = make_array(
        tmp_path, degraded=1,
        members={"nvme0n1": ("in_sync", "0"), "nvme1n1": ("faulty", "1")},
    )
    assert array.status is RaidStatus.DEGRADED
    assert array.member_statuses()["nvme1n1"] is MemberStatus.FAULTY
    assert array.missing_slots() == []


def test_pulled_member_is_missing(tmp_path: Path) -> None:
    array = make_array(tmp_path, degraded=1, members={"nvme0n1": ("in_sync", "0")})
    assert array.status is RaidStatus.DEGRADED
    assert array.missing_slots() == [1]


def test_rebuild_shows_syncing_and_rebuilding_member(tmp_path: Path) -> None:
    array = make_array(
        tmp_path, degraded=1, sync_action="recover", sync_completed="262144 / 1046528",
        members={"nvme0n1": ("in_sync", "0"), "nvme2n1": ("spare", "1")},
    )
    assert array.status is RaidStatus.SYNCING
    assert array.member_statuses()["nvme2n1"] is MemberStatus.REBUILDING
    assert array.sync_progress == pytest.approx(0.2505, abs=1e-3)


def test_idle_spare_is_spare(tmp_path: Path) -> None:
    array = make_array(
        tmp_path,
        members={"nvme0n1": ("in_sync", "0"), "nvme1n1": ("in_sync", "1"), "nvme2n1": ("spare", "none")},
    )
    assert array.member_statuses()["nvme2n1"] is MemberStatus.SPARE
    assert array.status is RaidStatus.ONLINE


def test_raid0_without_degraded_attribute(tmp_path: Path) -> None:
    array = make_array(
        tmp_path, level="raid0", degraded=None, array_state="broken",
        members={"nvme0n1": ("in_sync", "0")},
    )
    assert array.degraded_count == 0
    assert array.status is RaidStatus.FAILED


def test_lookup_and_uuid(tmp_path: Path) -> None:
    make_array(tmp_path, members={})
    assert MdArray.lookup("md127", tmp_path).name == "md127"
    assert MdArray.by_uuid("5a2c3f4e:1b2d3c4e:5f60718293:a4b5c6", tmp_path).name == "md127"
    with pytest.raises(NotFound):
        MdArray.lookup("md9", tmp_path)
    with pytest.raises(NotFound):
        MdArray.by_uuid("00000000:00000000:00000000:00000000", tmp_path)


def test_vanished_array_is_gone(tmp_path: Path) -> None:
    array = make_array(tmp_path, members={})
    import shutil

    shutil.rmtree(tmp_path / "block" / "md127")
    with pytest.raises(Gone):
        _ = array.level


def test_uuid_forms_normalize_alike() -> None:
    assert normalize_uuid("5A2C3F4E:1B2D3C4E:5F607182:93A4B5C6") == normalize_uuid(
        "5a2c3f4e-1b2d-3c4e-5f60-718293a4b5c6"
    )


# level, raid_disks, working slots, expected
TABLE = [
    (0, 2, {0, 1}, RaidStatus.ONLINE),
    (0, 2, {0}, RaidStatus.FAILED),
    (1, 2, {0}, RaidStatus.DEGRADED),
    (1, 2, set(), RaidStatus.FAILED),
    (1, 3, {2}, RaidStatus.DEGRADED),
    (5, 3, {0, 1}, RaidStatus.DEGRADED),
    (5, 3, {0}, RaidStatus.FAILED),
    (6, 4, {0, 1}, RaidStatus.DEGRADED),
    (6, 4, {0}, RaidStatus.FAILED),
    (10, 4, {0, 2}, RaidStatus.DEGRADED),  # one disk from each mirror: still serving
    (10, 4, {2, 3}, RaidStatus.FAILED),  # both disks of one mirror
    (10, 4, {0, 1, 2, 3}, RaidStatus.ONLINE),
]


@pytest.mark.parametrize(("level", "disks", "working", "expected"), TABLE)
def test_status_table(level: int, disks: int, working: set[int], expected: RaidStatus) -> None:
    assert raid_status(level, disks, "clean", "idle", working) is expected


@pytest.mark.parametrize("state", ["inactive", "clear", "broken"])
def test_dead_array_states_are_failed(state: str) -> None:
    assert raid_status(1, 2, state, "idle", {0, 1}) is RaidStatus.FAILED


def test_failed_outranks_syncing_outranks_degraded() -> None:
    assert raid_status(5, 3, "active", "recover", {0}) is RaidStatus.FAILED
    assert raid_status(5, 3, "active", "recover", {0, 1}) is RaidStatus.SYNCING
    assert raid_status(5, 3, "active", "frozen", {0, 1}) is RaidStatus.DEGRADED


def test_raid10_mirror_groups() -> None:
    assert raid10_lost_mirror(4, {0, 1})
    assert not raid10_lost_mirror(4, {1, 2})
    assert raid10_lost_mirror(6, {4, 5})


def test_faulty_member_without_its_role_is_not_counted_twice(tmp_path: Path) -> None:
    # What the kernel shows once md's thread has handled a failure: the faulty
    # member is still listed, but its slot reads "none" and the role is vacant.
    array = make_array(
        tmp_path, level="raid10", raid_disks=4, degraded=1,
        members={"nvme0n1": ("in_sync", "0"), "nvme1n1": ("in_sync", "1"),
                 "nvme2n1": ("faulty", "none"), "nvme3n1": ("in_sync", "3")},
    )
    assert array.status is RaidStatus.DEGRADED
    assert array.missing_slots() == [2]
    assert array.vacant_roles(["nvme0n1", "nvme1n1", "nvme2n1", "nvme3n1"]) == []
    # When the faulty disk itself is not shown (pulled), the role is.
    assert array.vacant_roles(["nvme0n1", "nvme1n1", "nvme3n1"]) == [2]


def test_a_pulled_member_is_missing_before_md_notices(tmp_path: Path) -> None:
    # md still lists the member in_sync until its next I/O to it; sysfs already
    # shows the disk gone: its `block` link dangles.
    array = make_array(
        tmp_path, degraded=0,
        members={"nvme0n1": ("in_sync", "0"), "nvme1n1": ("in_sync", "1")},
    )
    (array.md / "dev-nvme0n1" / "block").symlink_to(tmp_path / "block" / "nvme0n1-present")
    (tmp_path / "block" / "nvme0n1-present").mkdir()
    (array.md / "dev-nvme1n1" / "block").symlink_to(tmp_path / "block" / "nvme1n1-deleted")
    assert array.status is RaidStatus.DEGRADED
    assert array.member_statuses() == {"nvme0n1": MemberStatus.ONLINE}
    assert array.missing_slots() == [1] and array.vacant_roles(["nvme0n1"]) == [1]
