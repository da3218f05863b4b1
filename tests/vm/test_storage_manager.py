"""The storage manager on the real kernel: md RAID, LUKS2, ext4, mount, sysfs status.

Runs inside the vm-tier guest on the four QEMU NVMe test disks.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import guest
from nvrd.bus import Bus
from nvrd.config import EncryptionConfig, StorageConfig
from nvrd.db import Database
from nvrd.device import MIGRATIONS
from nvrd.errors import Forbidden, Invalid
from nvrd.jobs import Jobs, JobState
from nvrd.storage import luks
from nvrd.storage.manager import Candidate, ManagedStorage
from nvrd.storage.md import MemberStatus, RaidStatus
from nvrd.storage.monitor import StorageMonitor
from nvrd.storage.volume import VolumeState

CHEAP = EncryptionConfig(pbkdf="pbkdf2", pbkdf_iterations=1000)
MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def fast_resync() -> None:
    # Under emulation the default floor would make every resync crawl.
    Path("/proc/sys/dev/raid/speed_limit_min").write_text("500000\n")
    Path("/proc/sys/dev/raid/speed_limit_max").write_text("2000000\n")


def inventory_of(disks: list[guest.Disk]) -> list[Candidate]:
    return [Candidate(d.dev, frozenset({str(d.dev), d.serial}), None, None) for d in disks]


@pytest.fixture
async def storage(clean_disks: list[guest.Disk], tmp_path: Path) -> AsyncIterator[ManagedStorage]:
    db = Database(tmp_path / "device.db", MIGRATIONS)
    await db.open()
    bus = Bus()
    jobs = Jobs(bus)
    manager = ManagedStorage(
        StorageConfig(encryption=CHEAP, auto_replace=False), tmp_path, db, bus, jobs,
        lambda: inventory_of(clean_disks),
    )
    await manager.start()
    yield manager
    await jobs.close()
    await db.close()


async def finish(storage: ManagedStorage, job_or_id) -> dict:
    if isinstance(job_or_id, tuple):  # request_raid: (job, recovery key)
        job_or_id = job_or_id[0]
    job_id = job_or_id if isinstance(job_or_id, str) else job_or_id.id
    job = await storage.jobs.wait(job_id)
    assert job.state is JobState.SUCCEEDED, job.error
    return job.result or {}


async def until(what: str, predicate, timeout: float = 120) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def write_blob(path: Path, size: int = 8 * MiB) -> str:
    data = os.urandom(size)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


class SteadyWriter:
    """Appends 64 KiB chunks with an fsync each, in a thread, until closed;
    keeps the first error."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.chunks = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        chunk = os.urandom(64 * 1024)
        try:
            with open(self.path, "ab") as f:
                while not self._stop.is_set():
                    f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
                    self.chunks += 1
        except BaseException as error:  # noqa: BLE001 - reported to the test
            self.error = error

    def __enter__(self) -> SteadyWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def digest(path: Path) -> str:
    guest.drop_caches()
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("level", "count", "data_disks"),
    [(0, 2, 2), (1, 2, 1), (5, 3, 2), (6, 4, 2), (10, 4, 2)],
)
async def test_create_each_level(storage: ManagedStorage, clean_disks, level, count, data_disks) -> None:
    devices = [d.dev for d in clean_disks[:count]]
    await finish(storage, await storage.request_raid(level, [str(d) for d in devices], None, "ext4", False))
    array = storage.array()
    assert array is not None and array.level == level and array.raid_disks == count
    expected = clean_disks[0].size * data_disks
    assert abs(array.size_bytes - expected) / expected < 0.05  # md metadata and bitmap
    await until("online", lambda: array.status is RaidStatus.ONLINE)
    storage.refresh()
    snapshot = storage.snapshot()
    assert snapshot["raid"]["status"] == "online" and snapshot["mounted"]
    assert storage.status.state is VolumeState.READY
    assert 0 < snapshot["free_bytes"] <= snapshot["total_bytes"] <= array.size_bytes


async def test_too_few_disks_and_unknown_disks_are_refused(storage: ManagedStorage, clean_disks) -> None:
    with pytest.raises(Invalid, match="at least 3") as caught:
        await storage.request_raid(5, [str(clean_disks[0].dev), str(clean_disks[1].dev)], None, "ext4", False)
    assert caught.value.field == "disks"
    with pytest.raises(Invalid, match="not among the allowed"):
        await storage.request_raid(1, ["/dev/sda", str(clean_disks[0].dev)], None, "ext4", False)


async def test_fail_member_then_replace_rebuilds_with_data_intact(storage: ManagedStorage, clean_disks) -> None:
    first, second, spare = clean_disks[0], clean_disks[1], clean_disks[2]
    await finish(storage, await storage.request_raid(1, [str(first.dev), str(second.dev)], None, "ext4", False))
    array = storage.array()
    await until("online", lambda: array.status is RaidStatus.ONLINE)
    before = write_blob(storage.mountpoint / "blob")

    guest.run(["mdadm", str(array.device), "--fail", str(second.dev)])
    storage.refresh()
    assert array.status is RaidStatus.DEGRADED
    assert array.member_statuses()[second.name] is MemberStatus.FAULTY
    assert storage.snapshot()["raid"]["status"] == "degraded"
    assert storage.status.state is VolumeState.READY  # recording goes on, degraded
    assert digest(storage.mountpoint / "blob") == before

    # Slow the rebuild so it can be seen: the per-array floor must come down too,
    # or the fast_resync floor (500 MB/s) overrides the ceiling and a 256 MiB
    # rebuild ends between two polls.
    (array.md / "sync_speed_min").write_text("1000\n")
    (array.md / "sync_speed_max").write_text("2000\n")
    await finish(storage, storage.add_disk(spare.dev).id)
    await until("rebuilding", lambda: array.member_statuses().get(spare.name) is MemberStatus.REBUILDING)
    assert array.status is RaidStatus.SYNCING
    assert 0 <= (array.sync_progress or 0) < 1
    (array.md / "sync_speed_min").write_text("system\n")
    (array.md / "sync_speed_max").write_text("system\n")
    await until("online again", lambda: array.status is RaidStatus.ONLINE)
    assert array.member_statuses()[spare.name] is MemberStatus.ONLINE
    assert second.name not in array.member_statuses()  # the failed one was removed
    assert digest(storage.mountpoint / "blob") == before


async def test_raid5_losing_two_is_failed(storage: ManagedStorage, clean_disks) -> None:
    devices = [str(d.dev) for d in clean_disks[:3]]
    await finish(storage, await storage.request_raid(5, devices, None, "ext4", False))
    array = storage.array()
    await until("online", lambda: array.status is RaidStatus.ONLINE)
    guest.run(["mdadm", str(array.device), "--fail", devices[0]])
    # Right after --fail, md may show sync_action "recover" until its thread sees
    # there is no spare to recover onto; the status follows the kernel.
    await until("degraded", lambda: array.status is RaidStatus.DEGRADED, timeout=30)
    guest.run(["mdadm", str(array.device), "--fail", devices[1]], check=False)
    assert array.status is RaidStatus.FAILED
    storage.refresh()
    assert storage.status.state is VolumeState.UNAVAILABLE


async def test_encrypted_lock_unlock_and_password_change(storage: ManagedStorage, clean_disks) -> None:
    devices = [str(d.dev) for d in clean_disks[:2]]
    job, recovery_key = await storage.request_raid(1, devices, "first password", "ext4", False)
    await finish(storage, job)
    assert recovery_key and len(recovery_key) == 71
    assert storage.mapping.is_open and storage.status.state is VolumeState.READY
    before = write_blob(storage.mountpoint / "blob")
    marker = os.urandom(16).hex().encode()
    with open(storage.mountpoint / "plain", "wb") as f:
        f.write(marker * 4096)
        os.fsync(f.fileno())
    guest.drop_caches()
    with open(storage.array().device, "rb") as raw:  # below LUKS: ciphertext only
        while chunk := raw.read(4 * MiB):
            assert marker not in chunk
    assert (storage.keys_dir / "luks-header.img").stat().st_mode & 0o077 == 0

    await finish(storage, storage.lock().id)
    assert not storage.mapping.is_open and storage.status.state is VolumeState.LOCKED
    with pytest.raises(Forbidden):
        await storage.unlock("wrong password")
    assert storage.status.state is VolumeState.LOCKED and not storage.mapping.is_open
    await storage.unlock("first password")
    assert storage.status.state is VolumeState.READY
    assert digest(storage.mountpoint / "blob") == before

    with pytest.raises(Forbidden):
        await storage.change_password("not it", "second password")
    # A recording goes on while the password changes: a writer appends and
    # fsyncs all along, and none of its writes may fail.
    with SteadyWriter(storage.mountpoint / "stream") as writer:
        await asyncio.sleep(1)
        await storage.change_password("first password", "second password")
        await asyncio.sleep(1)
    assert writer.error is None and writer.chunks > 0
    array_device = storage.array().device
    assert not await luks.test_key(array_device, "first password")
    assert await luks.test_key(array_device, "second password")
    assert await luks.test_key(array_device, recovery_key)
    assert storage.mapping.is_open  # recording never stopped


async def test_restart_assembles_and_unlocks_with_device_key(storage: ManagedStorage, clean_disks, tmp_path) -> None:
    devices = [str(d.dev) for d in clean_disks[:2]]
    await finish(storage, await storage.request_raid(1, devices, "pw", "ext4", False))
    before = write_blob(storage.mountpoint / "blob")
    array = storage.array()
    # A reboot, as far as the volume knows: unmount, close, stop the array.
    guest.run(["umount", str(storage.mountpoint)])
    guest.run(["cryptsetup", "close", "nvrd-data"])
    guest.run(["mdadm", "--stop", str(array.device)])
    assert storage.array() is None

    again = ManagedStorage(storage.config, tmp_path, storage.db, storage.bus, storage.jobs, storage.inventory)
    await again.start()
    assert again.problems == []
    assert again.status.state is VolumeState.READY
    assert digest(again.mountpoint / "blob") == before


async def test_degraded_array_still_comes_up(storage: ManagedStorage, clean_disks, tmp_path) -> None:
    devices = [str(d.dev) for d in clean_disks[:2]]
    await finish(storage, await storage.request_raid(1, devices, None, "ext4", False))
    array = storage.array()
    await until("online", lambda: array.status is RaidStatus.ONLINE)
    guest.run(["umount", str(storage.mountpoint)])
    guest.run(["mdadm", "--stop", str(array.device)])
    guest.run(["wipefs", "--all", "--force", devices[1]])  # one member is gone for good
    again = ManagedStorage(storage.config, tmp_path, storage.db, storage.bus, storage.jobs, storage.inventory)
    await again.start()
    assert again.array() is not None and again.array().status is RaidStatus.DEGRADED
    assert again.status.state is VolumeState.READY


async def test_check_repair_format_and_write_protect(storage: ManagedStorage, clean_disks) -> None:
    # RAID 0 of two 256 MiB disks: xfs needs at least 300 MB.
    devices = [str(d.dev) for d in clean_disks[:2]]
    await finish(storage, await storage.request_raid(0, devices, None, "ext4", False))
    assert (await finish(storage, storage.check().id))["clean"] is True
    await finish(storage, storage.repair().id)
    write_blob(storage.mountpoint / "old")
    await finish(storage, storage.format("xfs").id)
    assert not (storage.mountpoint / "old").exists()
    assert storage.snapshot()["filesystem"] == "xfs"
    await finish(storage, storage.write_protect(True).id)
    assert storage.status.state is VolumeState.WRITE_PROTECTED
    with pytest.raises(OSError):
        write_blob(storage.mountpoint / "refused", 1024)
    await finish(storage, storage.write_protect(False).id)
    assert storage.status.state is VolumeState.READY
    write_blob(storage.mountpoint / "allowed", 1024)


async def test_monitor_sees_failure_without_polling(storage: ManagedStorage, clean_disks) -> None:
    devices = [str(d.dev) for d in clean_disks[:2]]
    await finish(storage, await storage.request_raid(1, devices, None, "ext4", False))
    array = storage.array()
    await until("online", lambda: array.status is RaidStatus.ONLINE)
    seen = asyncio.Event()
    monitor = StorageMonitor(seen.set)
    monitor.start()
    try:
        await asyncio.sleep(0.5)
        seen.clear()
        guest.run(["mdadm", str(array.device), "--fail", devices[1]])
        await asyncio.wait_for(seen.wait(), 5)
    finally:
        monitor.stop()
    assert seen.is_set()  # the monitor woke on md's own notification
    await until("degraded", lambda: array.status is RaidStatus.DEGRADED, timeout=30)
    assert array.member_statuses()[clean_disks[1].name] is MemberStatus.FAULTY


# --- faults of every kind, on every redundant level --------------------------------


def pull(disk: guest.Disk) -> None:
    """A PCI hot-unplug: the disk is gone from the kernel, as when pulled."""
    (disk.pci_device / "remove").write_text("1")


@pytest.fixture
def replug(clean_disks: list[guest.Disk]) -> Iterator[None]:
    """Brings pulled disks back after the test (before clean_disks tidies up)."""
    yield
    Path("/sys/bus/pci/rescan").write_text("1")
    for disk in clean_disks:
        guest.wait_for(f"{disk.serial} back", lambda disk=disk: present(disk))
    guest.settle()


def present(disk: guest.Disk) -> bool:
    try:
        return disk.dev.exists()
    except guest.Gone:
        return False


def blank(disk: guest.Disk) -> None:
    """A returning disk still carries its old superblock: make it a blank one."""
    guest.run(["mdadm", "--zero-superblock", disk.dev], check=False)
    guest.run(["wipefs", "--all", "--quiet", disk.dev])
    guest.settle()


async def rebuild_onto(storage: ManagedStorage, disk: guest.Disk) -> None:
    array = storage.array()
    await finish(storage, storage.add_disk(disk.dev).id)
    await until("online again", lambda: array.status is RaidStatus.ONLINE, timeout=300)
    assert array.member_statuses()[disk.name] is MemberStatus.ONLINE
    assert set(array.member_statuses().values()) == {MemberStatus.ONLINE}
    assert array.missing_slots() == []


async def test_raid6_member_with_io_errors_is_faulty_then_replaced(
    clean_disks, tmp_path: Path
) -> None:
    # dm-flakey between md and one disk: a plain linear mapping until its table
    # is switched to flakey, always "down" and without features, which fails
    # every read and write as a dead disk does. (Failing only writes is not
    # enough: md records them in the member's bad block log and keeps it.)
    flaky_disk = clean_disks[0]
    sectors = flaky_disk.size // 512
    guest.run(["dmsetup", "create", "nvrd-flaky", "--table", f"0 {sectors} linear {flaky_disk.dev} 0"])
    flaky = Path("/dev/mapper/nvrd-flaky")
    candidates = [Candidate(flaky, frozenset({str(flaky)}), None, None), *inventory_of(clean_disks[1:])]
    db = Database(tmp_path / "device.db", MIGRATIONS)
    await db.open()
    bus = Bus()
    jobs = Jobs(bus)
    storage = ManagedStorage(
        StorageConfig(encryption=CHEAP, auto_replace=False), tmp_path, db, bus, jobs, lambda: candidates
    )
    try:
        await storage.start()
        await finish(storage, await storage.request_raid(6, [str(c.device) for c in candidates], None, "ext4", False))
        array = storage.array()
        await until("online", lambda: array.status is RaidStatus.ONLINE)
        before = write_blob(storage.mountpoint / "blob")
        flaky_name = flaky.resolve().name  # dm-N, as md names its member

        table = f"0 {sectors} flakey {flaky_disk.dev} 0 0 1"
        guest.run(["dmsetup", "reload", "nvrd-flaky", "--table", table])
        guest.run(["dmsetup", "resume", "nvrd-flaky"])
        write_blob(storage.mountpoint / "after", 4 * MiB)  # md meets the write errors
        await until("faulty", lambda: array.member_statuses().get(flaky_name) is MemberStatus.FAULTY, 60)
        await until("degraded", lambda: array.status is RaidStatus.DEGRADED, 30)
        storage.refresh()
        assert storage.snapshot()["raid"]["status"] == "degraded"
        assert storage.status.state is VolumeState.READY

        # Take the failing disk out, and put it back as a blank replacement.
        await array.remove_gone()
        guest.run(["dmsetup", "remove", "--retry", "nvrd-flaky"])
        blank(flaky_disk)
        await rebuild_onto(storage, flaky_disk)
        assert digest(storage.mountpoint / "blob") == before
    finally:
        await jobs.close()
        await db.close()


async def test_raid10_pulled_member_is_missing_then_replaced(storage: ManagedStorage, clean_disks, replug) -> None:
    await finish(storage, await storage.request_raid(10, [str(d.dev) for d in clean_disks], None, "ext4", False))
    array = storage.array()
    await until("online", lambda: array.status is RaidStatus.ONLINE)
    before = write_blob(storage.mountpoint / "blob")
    pulled = clean_disks[2]
    pull(pulled)
    await until("degraded", lambda: array.status is RaidStatus.DEGRADED, 30)
    storage.refresh()
    statuses = [d["status"] for d in storage.snapshot()["raid"]["devices"]]
    assert sorted(statuses) == ["missing", "online", "online", "online"]  # the pulled disk, once
    assert digest(storage.mountpoint / "blob") == before

    Path("/sys/bus/pci/rescan").write_text("1")
    guest.wait_for("disk back", lambda: present(pulled))
    blank(pulled)
    await rebuild_onto(storage, pulled)
    assert digest(storage.mountpoint / "blob") == before


async def test_raid0_losing_one_is_failed(storage: ManagedStorage, clean_disks, replug) -> None:
    await finish(storage, await storage.request_raid(0, [str(d.dev) for d in clean_disks[:2]], None, "ext4", False))
    array = storage.array()
    mountpoint = storage.mountpoint
    pull(clean_disks[1])
    # RAID 0 learns of the loss on its next I/O to that member.
    subprocess.run(["dd", "if=/dev/zero", f"of={mountpoint}/probe", "bs=1M", "count=32", "oflag=direct"],
                   capture_output=True, check=False)
    await until("failed", lambda: array.status is RaidStatus.FAILED, 60)
    storage.refresh()
    assert storage.snapshot()["raid"]["status"] == "failed"
    assert storage.status.state is VolumeState.UNAVAILABLE
    # A dead array is not torn down by anyone else: stop it so the disks come back clean.
    guest.run(["umount", "--lazy", str(mountpoint)], check=False)
    guest.run(["mdadm", "--stop", str(array.device)], check=False)


async def test_level_change_5_to_6_to_1_rebuilds_the_volume(storage: ManagedStorage, clean_disks) -> None:
    volumes = []
    for level, count in ((5, 3), (6, 4), (1, 2)):
        devices = [str(d.dev) for d in clean_disks[:count]]
        await finish(storage, await storage.request_raid(level, devices, None, "ext4", False))
        array = storage.array()
        assert array.level == level and array.raid_disks == count
        assert storage.status.state is VolumeState.READY and storage.mounted()
        volumes.append(storage.layout.volume_uuid)
        write_blob(storage.mountpoint / f"on-raid{level}", MiB)
        assert sorted(p.name for p in storage.mountpoint.iterdir() if p.name.startswith("on-raid")) == [f"on-raid{level}"]
    assert len(set(volumes)) == 3  # each change made a new, empty volume
    await until("online", lambda: storage.array().status is RaidStatus.ONLINE)
