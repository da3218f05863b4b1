"""The managed volume: md RAID on the allowed disks, optionally LUKS2, a file
system, mounted under the state directory. One owner of its lifecycle.

Every operation that changes disks runs as a job, one at a time (a second one gets
409). The kernel is the truth: `refresh()` rebuilds the volume status from sysfs and
the mount table each time the monitor says something changed, and publishes it when
it differs. Start-up never dies on storage trouble; it records problems instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import uuid as uuid_module
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nvrd.bus import Bus
from nvrd.config import StorageConfig
from nvrd.db import Database
from nvrd.errors import Busy, Conflict, Forbidden, Gone, Invalid, NotFound
from nvrd.jobs import Job, JobContext, Jobs
from nvrd.storage import disks, fs, luks, tools
from nvrd.storage.smart import SmartReader, SmartReport
from nvrd.storage import layout as layouts
from nvrd.storage.layout import Layout
from nvrd.storage.md import MIN_DISKS, MdArray, RaidStatus, normalize_uuid, zero_superblock
from nvrd.storage.volume import TOPIC, VolumeState, VolumeStatus

log = logging.getLogger(__name__)

ARRAY_NAME = "nvrd"
MAPPING_NAME = "nvrd-data"
METADATA_FILE = "nvrd-volume.json"
RECORDINGS_DIR = "recordings"

Step = Callable[[JobContext], Awaitable[Any]]


@dataclass(frozen=True)
class Candidate:
    """An allowed disk as array creation needs to see it."""

    device: Path  # /dev/nvme0n1
    names: frozenset[str]  # every way a request may name it: node, by-id links
    foreign_reason: str | None  # what it carries, if anything (partitions, fs, md)
    md_uuid: str | None  # the array it belongs to, if an md member


# Lists the allowed disks, fresh; the disk inventory provides it.
Inventory = Callable[[], Sequence[Candidate]]


def allowed_candidates(config: StorageConfig) -> Inventory:
    """The inventory of the disks `[storage] disks` allows, as creation vets them."""

    def listing() -> list[Candidate]:
        return [
            Candidate(d.device, frozenset(d.names), disks.foreign_data_reason(d), d.md_member_uuid)
            for d in disks.inventory(config.disks, slots=config.slots)
        ]

    return listing


# SMART is read at most this often for the disk list; the health monitor (its own
# cadence, standby-aware) keeps it fresher where it runs.
SMART_MAX_AGE_S = 60.0


class ManagedStorage:
    def __init__(
        self,
        config: StorageConfig,
        state_dir: Path,
        db: Database,
        bus: Bus,
        jobs: Jobs,
        inventory: Inventory,
        sysfs: Path = Path("/sys"),
    ) -> None:
        self.config = config
        self.inventory = inventory
        self.mountpoint = state_dir / "volume"
        self.keys_dir = state_dir / "storage"
        self.db = db
        self.bus = bus
        self.jobs = jobs
        self.sysfs = sysfs
        self.pbkdf = luks.Pbkdf(
            config.encryption.pbkdf,
            config.encryption.pbkdf_iterations,
            config.encryption.pbkdf_memory_kib,
        )
        self.layout: Layout | None = None
        self.status = VolumeStatus(VolumeState.UNAVAILABLE, None, "starting")
        self.problems: list[str] = []
        self.operation: str | None = None  # the running job's kind, if any
        self._lock = asyncio.Lock()
        self._replacing: asyncio.Future[None] | None = None
        self.smart = SmartReader()
        self._smart_cache: dict[Path, tuple[float, SmartReport]] = {}

    # --- what is there now -------------------------------------------------------

    @property
    def device_key_path(self) -> Path:
        return self.keys_dir / "device.key"

    @property
    def header_backup_path(self) -> Path:
        return self.keys_dir / "luks-header.img"

    def array(self) -> MdArray | None:
        if self.layout is None:
            return None
        try:
            return MdArray.by_uuid(self.layout.array_uuid, self.sysfs)
        except NotFound:
            return None

    @property
    def mapping(self) -> luks.LuksMapping:
        return luks.LuksMapping(MAPPING_NAME, self.sysfs)

    def data_device(self, array: MdArray) -> Path:
        """What the file system lives on: the LUKS mapping or the array itself."""
        assert self.layout is not None
        return self.mapping.device if self.layout.encrypted else array.device

    def mounted(self) -> bool:
        return fs.mounted_device(self.mountpoint) is not None

    def _current_status(self) -> VolumeStatus:
        if self.layout is None:
            return VolumeStatus(VolumeState.UNAVAILABLE, None, "no RAID array is configured")
        if self.operation is not None:
            return VolumeStatus(VolumeState.REPAIRING, None, f"{self.operation} in progress")
        array = self.array()
        if array is None:
            return VolumeStatus(VolumeState.UNAVAILABLE, None, "the RAID array is not present")
        if array.status is RaidStatus.FAILED:
            return VolumeStatus(VolumeState.UNAVAILABLE, None, "the RAID array has failed")
        if self.layout.encrypted and not self.mapping.is_open:
            return VolumeStatus(VolumeState.LOCKED, None, "the volume is encrypted and locked")
        if not self.mounted():
            return VolumeStatus(VolumeState.UNAVAILABLE, None, "the volume is not mounted")
        if self.layout.write_protected:
            return VolumeStatus(VolumeState.WRITE_PROTECTED, self.mountpoint, "write protection is on")
        return VolumeStatus(VolumeState.READY, self.mountpoint)

    def refresh(self) -> None:
        """Re-read the kernel; publish `volume.changed` and `storage.changed` when
        anything a client sees has changed."""
        status = self._current_status()
        if status != self.status:
            self.status = status
            self.bus.publish(TOPIC, status.as_event())
        self.bus.publish("storage.changed", self.snapshot())
        if self._replacement_wanted():
            self._replacing = asyncio.ensure_future(self._auto_replace())

    def _replacement_wanted(self) -> bool:
        if not self.config.auto_replace or self._lock.locked():
            return False
        if self._replacing is not None and not self._replacing.done():
            return False
        array = self.array()
        return array is not None and array.status is RaidStatus.DEGRADED

    async def _auto_replace(self) -> None:
        """A blank allowed disk while a member is missing or faulty: add it, and the
        rebuild starts (the reference recorder's drive replacement). A disk that
        carries anything is left alone: that takes an explicit request."""
        array = self.array()
        if array is None:
            return
        members = {m.device for m in array.members if "faulty" not in m.flags}
        candidates = await asyncio.to_thread(self.inventory)
        blank = [c for c in candidates if c.foreign_reason is None and c.device not in members]
        if not blank:
            return
        log.info("replacing a missing RAID member with the blank disk %s", blank[0].device)
        try:
            self.add_disk(blank[0].device)
        except Busy:
            pass  # another storage job started meanwhile; the next change retries

    def snapshot(self) -> dict[str, Any]:
        array = self.array()
        mounted = self.mounted()
        space = fs.space(self.mountpoint) if mounted else None
        return {
            "mode": "managed",
            "raid": _raid_summary(array) if array else None,
            "encrypted": bool(self.layout and self.layout.encrypted),
            "locked": bool(self.layout and self.layout.encrypted and not self.mapping.is_open),
            "mounted": mounted,
            "write_protected": bool(self.layout and self.layout.write_protected),
            "filesystem": self.layout.filesystem if self.layout else None,
            "total_bytes": space.total_bytes if space else None,
            "free_bytes": space.free_bytes if space else None,
            "volume": self.status.state.value,
            "reason": self.status.reason,
            "operation": self.operation,
            "problems": list(self.problems),
            "slots": self._slots(),
        }

    def _slots(self) -> list[dict[str, Any]]:
        """Each slot and the disk in it (None: empty). A slot of `[storage] slots`
        stays listed while its disk is out; the LEDs and alerts need to know it."""
        found: dict[int, str | None] = {}
        try:
            for disk in disks.inventory(self.config.disks, slots=self.config.slots):
                if disk.slot is not None:
                    found[disk.slot] = str(disk.device)
        except Exception as exc:  # no udev (a container): no slots, not a failed refresh
            log.debug("no disk inventory for the snapshot: %s", exc)
        for slot in self.config.slots:
            found.setdefault(int(slot), None)
        return [{"slot": slot, "device": device} for slot, device in sorted(found.items())]

    async def disk_list(self) -> list[dict[str, Any]]:
        """Every allowed disk with its slot, identity, role in our array and SMART
        health; plus a row for each array role whose disk is gone."""
        found = await asyncio.to_thread(self._disk_rows)
        reports = await asyncio.gather(*(self._smart_report(Path(row["device"])) for row in found))
        for row, report in zip(found, reports):
            row.update(
                temperature_c=report.temperature_c,
                health=report.health.value,
                health_reason=report.reason,
            )
        array = self.array()
        shown = [Path(row["device"]).name for row in found]
        for role in array.vacant_roles(shown) if array else []:
            found.append(
                {
                    "slot": None, "device": None, "by_id": None, "serial": None,
                    "model": None, "capacity_bytes": None, "status": "missing",
                    "role": role, "temperature_c": None, "health": "unknown",
                    "health_reason": "the disk is gone", "led": None,
                }
            )
        return found

    def _disk_rows(self) -> list[dict[str, Any]]:
        """Identity and array role of each allowed disk (blocking: udev and sysfs).
        A disk pulled while the list is made is left out, not an error."""
        array = self.array()
        roles = array.member_statuses() if array else {}
        rows = []
        for disk in disks.inventory(self.config.disks, slots=self.config.slots):
            try:
                rows.append(
                    {
                        "slot": disk.slot,
                        "device": str(disk.device),
                        "by_id": disk.by_id,
                        "serial": disk.serial,
                        "model": disk.model,
                        "capacity_bytes": disk.capacity_bytes,
                        "status": roles[disk.name].value if disk.name in roles else "unused",
                        "led": None,
                    }
                )
            except Gone:
                continue
        return rows

    async def _smart_report(self, device: Path) -> SmartReport:
        now = asyncio.get_running_loop().time()
        cached = self._smart_cache.get(device)
        if cached is not None and now - cached[0] < SMART_MAX_AGE_S:
            return cached[1]
        report = await self.smart.read(device)
        self._smart_cache[device] = (now, report)
        return report

    # --- start-up ------------------------------------------------------------------

    async def start(self) -> None:
        """Bring our volume up as far as it goes: assemble (degraded too), unlock
        with the device key, mount. Problems are recorded, never raised."""
        self.layout = await layouts.load(self.db)
        if self.layout is not None:
            try:
                await self._bring_up(key=self._device_key())
            except (tools.CommandFailed, OSError, Conflict) as exc:
                self._problem(f"bringing the volume up: {exc}")
        self.refresh()

    async def _bring_up(self, key: str | bytes | None) -> None:
        assert self.layout is not None
        array = self.array()
        if array is None:
            await MdArray.assemble(self.layout.array_uuid, self.sysfs)
            array = self.array()
            if array is None:
                raise tools.CommandFailed(["mdadm", "--assemble"], 1, "our array was not found")
        if array.array_state == "inactive":
            await array.run()
        if self.layout.encrypted and not self.mapping.is_open:
            if key is None:
                return  # stays locked until someone unlocks it with the password
            await self.mapping.open(array.device, key)
        if not self.mounted():
            await fs.mount(self.data_device(array), self.mountpoint, self.layout.write_protected)
            self._verify_volume()

    def _verify_volume(self) -> None:
        """Refuse a volume that isn't the one we made (a foreign or swapped disk set)."""
        assert self.layout is not None
        try:
            metadata = json.loads((self.mountpoint / METADATA_FILE).read_text())
        except (OSError, ValueError):
            metadata = {}
        if metadata.get("uuid") != self.layout.volume_uuid:
            raise Conflict(
                f"the mounted volume is not this recorder's (expected {self.layout.volume_uuid})",
                volume=metadata.get("uuid"),
            )

    def _device_key(self) -> bytes | None:
        try:
            return self.device_key_path.read_bytes()
        except FileNotFoundError:
            return None

    def _problem(self, text: str) -> None:
        log.error("storage: %s", text)
        self.problems.append(text)

    # --- jobs ----------------------------------------------------------------------

    def _submit(self, kind: str, body: Step) -> Job:
        """Run `body` as a job, exclusively; refuse if another storage job runs."""
        if self._lock.locked():
            raise Busy(f"storage is busy with {self.operation}", operation=self.operation)

        async def run(ctx: JobContext) -> Any:
            async with self._lock:
                self.operation = kind
                self.refresh()  # recording pauses: the volume is being worked on
                try:
                    return await body(ctx)
                finally:
                    self.operation = None
                    self.refresh()

        return self.jobs.submit(kind, run, target=ARRAY_NAME)

    async def _tear_down(self, ctx: JobContext) -> None:
        """Unmount, close, stop: the state before anything destructive."""
        if self.mounted():
            ctx.progress(ctx.job.progress, "unmounting")
            await fs.unmount(self.mountpoint)
        if self.mapping.is_open:
            await self.mapping.close()
        array = self.array()
        if array is not None:
            await array.stop()

    async def request_raid(
        self,
        level: int,
        names: Sequence[str] | None,
        password: str | None,
        filesystem: str,
        force: bool,
    ) -> tuple[Job, str | None]:
        """Vet a create request against the allowed disks, then start the job.
        Returns the job and, when encrypting, the recovery key: it is made here so
        the requester gets it in the answer, the only place it is ever shown.

        nvrd touches only disks the config allows, and never one that carries
        someone else's data unless `force` says so. Members of our own array are
        ours to erase (changing the level rebuilds on them)."""
        allowed = await asyncio.to_thread(self.inventory)
        if names is None:
            chosen = list(allowed)
        else:
            chosen = []
            for name in names:
                match = next((c for c in allowed if name in c.names), None)
                if match is None:
                    raise Invalid(f"{name} is not among the allowed disks ([storage] disks)", field="disks")
                if match not in chosen:
                    chosen.append(match)
        minimum = MIN_DISKS[level]
        if len(chosen) < minimum:
            raise Invalid(f"RAID {level} needs at least {minimum} disks, {len(chosen)} available", field="disks")
        ours = normalize_uuid(self.layout.array_uuid) if self.layout else None
        for candidate in chosen:
            if candidate.foreign_reason is None or force:
                continue
            if ours and candidate.md_uuid and normalize_uuid(candidate.md_uuid) == ours:
                continue
            raise Invalid(
                f"{candidate.device} carries data ({candidate.foreign_reason}); "
                "send force: true to erase it",
                field="disks",
            )
        array = self.array()
        members = [m.device for m in array.members] if array else []
        recovery_key = luks.new_recovery_key() if password is not None else None
        job = self.create_raid(
            level, [c.device for c in chosen], password, filesystem, members, recovery_key
        )
        return job, recovery_key

    def create_raid(
        self,
        level: int,
        devices: Sequence[Path],
        password: str | None,
        filesystem: str,
        members_of_ours: Sequence[Path] = (),
        recovery_key: str | None = None,
    ) -> Job:
        """Build a new array (erasing what was there), optionally encrypt it, make
        the file system, mount it. `devices` are already vetted by the caller."""
        fs.check_filesystem(filesystem)

        async def body(ctx: JobContext) -> dict[str, Any]:
            ctx.progress(0.02, "stopping the old volume")
            await self._tear_down(ctx)
            for device in {*devices, *members_of_ours}:
                await zero_superblock(device)
                await tools.run("wipefs", "--all", "--quiet", str(device))
            await layouts.save(self.db, None)
            self.layout = None
            ctx.progress(0.1, f"creating RAID {level}")
            array = await MdArray.create(ARRAY_NAME, level, devices, self.sysfs)
            array_uuid = array.uuid or ""
            target = array.device
            if password is not None:
                ctx.progress(0.3, "encrypting")
                await self._encrypt(array.device, password, recovery_key or luks.new_recovery_key())
                await self.mapping.open(array.device, password)
                target = self.mapping.device
            ctx.progress(0.6, f"making the {filesystem} file system")
            await fs.make(target, filesystem)
            volume_uuid = str(uuid_module.uuid4())
            self.layout = Layout(array_uuid, level, password is not None, filesystem, volume_uuid)
            await layouts.save(self.db, self.layout)
            ctx.progress(0.9, "mounting")
            await self._mount_new(target, array_uuid)
            return {"array_uuid": array_uuid}

        return self._submit("raid-create", body)

    async def _encrypt(self, device: Path, password: str, recovery_key: str) -> None:
        """luksFormat with password, recovery key and device key; back up the header."""
        device_key = secrets.token_bytes(64)
        await luks.format(device, [password, recovery_key, device_key], self.pbkdf)
        self._store_device_key(device_key)
        await luks.backup_header(device, self.header_backup_path)

    def _store_device_key(self, key: bytes) -> None:
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.device_key_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.device_key_path)

    async def _mount_new(self, device: Path, array_uuid: str) -> None:
        assert self.layout is not None
        await fs.mount(device, self.mountpoint)
        metadata = {
            "uuid": self.layout.volume_uuid,
            "array_uuid": array_uuid,
            "created": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "format": 1,
        }
        await asyncio.to_thread(_write_durably, self.mountpoint / METADATA_FILE, json.dumps(metadata))
        (self.mountpoint / RECORDINGS_DIR).mkdir(exist_ok=True)

    # --- tools ---------------------------------------------------------------------

    def _require_layout(self) -> Layout:
        if self.layout is None:
            raise Conflict("no RAID array is configured yet", operation="none")
        return self.layout

    def _require_array(self) -> MdArray:
        array = self.array()
        if array is None:
            raise Conflict("the RAID array is not present")
        return array

    async def unlock(self, password: str) -> None:
        """Open the LUKS volume with the password (after a factory reset, or after
        `lock`), mount it, and enrol a fresh device key so later starts unlock on
        their own. A wrong password raises Forbidden and changes nothing."""
        layout = self._require_layout()
        if not layout.encrypted:
            raise Conflict("the volume is not encrypted")
        if self.mapping.is_open:
            raise Conflict("the volume is already unlocked")
        if self._lock.locked():
            raise Busy(f"storage is busy with {self.operation}")
        async with self._lock:
            array = self._require_array()
            await self.mapping.open(array.device, password)
            if self._device_key() is None or not await luks.test_key(array.device, self._device_key() or b""):
                device_key = secrets.token_bytes(64)
                await luks.add_key(array.device, password, device_key, self.pbkdf)
                self._store_device_key(device_key)
            await self._bring_up(key=None)
        self.refresh()

    def lock(self) -> Job:
        layout = self._require_layout()
        if not layout.encrypted:
            raise Conflict("the volume is not encrypted")

        async def body(ctx: JobContext) -> None:
            if self.mounted():
                await fs.unmount(self.mountpoint)
            if self.mapping.is_open:
                await self.mapping.close()

        return self._submit("lock", body)

    async def change_password(self, old: str, new: str) -> None:
        """Add the new password's key slot, then remove the old one: at no moment is
        there no password, and the open mapping (recording) is never touched."""
        layout = self._require_layout()
        if not layout.encrypted:
            raise Conflict("the volume is not encrypted")
        array = self._require_array()
        if not await luks.test_key(array.device, old):
            raise Forbidden("the password is wrong", field="old_password")
        if old == new:
            raise Invalid("the new password is the same as the old one", field="new_password")
        await luks.add_key(array.device, old, new, self.pbkdf)
        await luks.remove_key(array.device, old)
        await luks.backup_header(array.device, self.header_backup_path)

    def format(self, filesystem: str) -> Job:
        fs.check_filesystem(filesystem)
        layout = self._require_layout()

        async def body(ctx: JobContext) -> None:
            array = self._require_array()
            if layout.encrypted and not self.mapping.is_open:
                raise Conflict("unlock the volume before formatting it")
            if self.mounted():
                await fs.unmount(self.mountpoint)
            device = self.data_device(array)
            ctx.progress(0.2, f"making the {filesystem} file system")
            await fs.make(device, filesystem)
            self.layout = Layout(
                layout.array_uuid, layout.level, layout.encrypted, filesystem,
                str(uuid_module.uuid4()),
            )
            await layouts.save(self.db, self.layout)
            await self._mount_new(device, layout.array_uuid)

        return self._submit("format", body)

    def _offline_fs_job(self, kind: str, repair: bool) -> Job:
        """Unmount, check or repair, mount again: recording pauses meanwhile."""
        layout = self._require_layout()

        async def body(ctx: JobContext) -> dict[str, Any]:
            array = self._require_array()
            device = self.data_device(array)
            if self.mounted():
                await fs.unmount(self.mountpoint)
            try:
                ctx.progress(0.1, "checking the file system" if not repair else "repairing")
                if repair:
                    report = await fs.repair(device, layout.filesystem)
                    clean = True
                else:
                    clean, report = await fs.check(device, layout.filesystem)
            finally:
                await fs.mount(device, self.mountpoint, layout.write_protected)
            if not clean:
                raise Conflict("the file system has errors; run repair", report=report[-2000:])
            return {"clean": clean, "report": report[-2000:]}

        return self._submit(kind, body)

    def check(self) -> Job:
        return self._offline_fs_job("check", repair=False)

    def repair(self) -> Job:
        return self._offline_fs_job("repair", repair=True)

    def write_protect(self, enabled: bool) -> Job:
        layout = self._require_layout()

        async def body(ctx: JobContext) -> None:
            self.layout = Layout(**{**layout.__dict__, "write_protected": enabled})
            await layouts.save(self.db, self.layout)
            if self.mounted():
                await fs.remount(self.mountpoint, read_only=enabled)

        return self._submit("write-protect", body)

    def encrypt(self, password: str) -> tuple[Job, str]:
        """Encrypt the existing array: erases the volume, as on the reference recorder.
        Returns the job and the recovery key (shown only in this answer)."""
        layout = self._require_layout()
        recovery_key = luks.new_recovery_key()
        return self._rebuild_volume("encrypt", layout, password, recovery_key), recovery_key

    def decrypt(self) -> Job:
        layout = self._require_layout()
        if not layout.encrypted:
            raise Conflict("the volume is not encrypted")
        return self._rebuild_volume("decrypt", layout, None, None)

    def _rebuild_volume(
        self, kind: str, layout: Layout, password: str | None, recovery_key: str | None
    ) -> Job:
        async def body(ctx: JobContext) -> None:
            array = self._require_array()
            if self.mounted():
                await fs.unmount(self.mountpoint)
            if self.mapping.is_open:
                await self.mapping.close()
            await tools.run("wipefs", "--all", "--quiet", str(array.device))
            target = array.device
            if password is not None and recovery_key is not None:
                ctx.progress(0.2, "encrypting")
                await self._encrypt(array.device, password, recovery_key)
                await self.mapping.open(array.device, password)
                target = self.mapping.device
            else:
                self.device_key_path.unlink(missing_ok=True)
                self.header_backup_path.unlink(missing_ok=True)
            ctx.progress(0.6, f"making the {layout.filesystem} file system")
            await fs.make(target, layout.filesystem)
            self.layout = Layout(
                layout.array_uuid, layout.level, password is not None, layout.filesystem,
                str(uuid_module.uuid4()),
            )
            await layouts.save(self.db, self.layout)
            await self._mount_new(target, layout.array_uuid)

        return self._submit(kind, body)

    def add_disk(self, device: Path) -> Job:
        """Add a disk to our array: a replacement starts rebuilding at once."""

        async def body(ctx: JobContext) -> None:
            array = self._require_array()
            await array.remove_gone()
            await zero_superblock(device)
            await array.add(device)

        return self._submit("raid-add", body)


def _raid_summary(array: MdArray) -> dict[str, Any]:
    progress = array.sync_progress
    speed = array.sync_speed_kib_s
    time_left = None
    if progress is not None and speed:
        time_left = round((1 - progress) * array.size_bytes / (speed * 1024))
    members = {m.name: m for m in array.members}
    statuses = array.member_statuses()
    devices = [
        {"device": f"/dev/{name}", "role": members[name].slot, "status": status.value}
        for name, status in statuses.items()
    ]
    devices += [
        {"device": None, "role": slot, "status": "missing"} for slot in array.vacant_roles(statuses)
    ]
    return {
        "level": array.level,
        "status": array.status.value,
        "raid_disks": array.raid_disks,
        "uuid": array.uuid,
        "size_bytes": array.size_bytes,
        "sync_action": array.sync_action,
        "sync_progress": progress,
        "sync_speed_bytes_s": speed * 1024 if speed is not None else None,
        "time_left_s": time_left,
        "devices": devices,
    }


def _write_durably(path: Path, text: str) -> None:
    """Write, fsync the file, rename, fsync the directory."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
