"""Linux md RAID arrays: a handle per array that reads sysfs fresh, and mdadm for
every change.

Reads come from /sys/block/mdX/md/* (never from `mdadm --detail` text kept in
memory). Changes go through mdadm and return nothing: the caller re-reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from nvrd.errors import Gone, Invalid, NotFound
from nvrd.storage import tools
from nvrd.storage.sysfs import read_attr, words, write_attr

# Fewest members per level, as mdadm and the reference recorder require.
MIN_DISKS = {0: 2, 1: 2, 5: 3, 6: 4, 10: 4}
# How many members each level can lose and still serve data (RAID 10 is special:
# one per mirror pair, see `raid_status`).
TOLERATES = {0: 0, 1: None, 5: 1, 6: 2}


class RaidStatus(StrEnum):
    ONLINE = "online"
    DEGRADED = "degraded"
    SYNCING = "syncing"
    FAILED = "failed"


class MemberStatus(StrEnum):
    ONLINE = "online"
    SPARE = "spare"
    REBUILDING = "rebuilding"
    FAULTY = "faulty"
    MISSING = "missing"


# array_state values of an array that serves no I/O.
DEAD_STATES = frozenset({"clear", "inactive", "broken", "suspended"})
IDLE_ACTIONS = frozenset({"idle", "frozen", None})


def normalize_uuid(text: str) -> str:
    """md UUIDs come as `a1b2c3d4:...` (mdadm) or `a1b2c3d4-...` (sysfs)."""
    return re.sub(r"[^0-9a-f]", "", text.lower())


@dataclass(frozen=True)
class Member:
    """One component as sysfs shows it (`md/dev-<name>`)."""

    name: str  # kernel block device name, e.g. nvme0n1
    slot: int | None  # role in the array; None for a spare or a faulty one
    flags: frozenset[str]  # in_sync, faulty, spare, write_mostly, blocked, ...
    recovery_start: int | None  # sectors recovered so far while rebuilding
    # False once the disk itself is gone (pulled): md notices only at its next I/O
    # to it, seconds later, but udev has said so already and so does sysfs.
    present: bool = True

    @property
    def device(self) -> Path:
        return Path("/dev") / self.name


def member_status(member: Member, recovering: bool) -> MemberStatus:
    if "faulty" in member.flags:
        return MemberStatus.FAULTY
    if "in_sync" in member.flags:
        return MemberStatus.ONLINE
    if member.slot is not None and recovering:
        return MemberStatus.REBUILDING
    return MemberStatus.SPARE


def raid10_lost_mirror(raid_disks: int, missing_slots: set[int], copies: int = 2) -> bool:
    """True if every copy of some chunk is gone (near layout: slots 0,1 mirror each
    other, then 2,3, ...). One disk from each mirror may go; a whole mirror may not."""
    groups = range(0, raid_disks, copies)
    return any(all(s in missing_slots for s in range(g, g + copies)) for g in groups)


def raid_status(
    level: int,
    raid_disks: int,
    array_state: str | None,
    sync_action: str | None,
    working_slots: set[int],
) -> RaidStatus:
    """design.md §3: failed, then syncing, then degraded, then online."""
    missing = set(range(raid_disks)) - working_slots
    if array_state is None or array_state in DEAD_STATES:
        return RaidStatus.FAILED
    if level == 10:
        if raid10_lost_mirror(raid_disks, missing):
            return RaidStatus.FAILED
    else:
        tolerates = TOLERATES.get(level)
        limit = raid_disks - 1 if tolerates is None else tolerates
        if len(missing) > limit:
            return RaidStatus.FAILED
    if sync_action not in IDLE_ACTIONS:
        return RaidStatus.SYNCING
    if missing:
        return RaidStatus.DEGRADED
    return RaidStatus.ONLINE


def _level_number(text: str | None) -> int | None:
    if text and text.startswith("raid") and text[4:].isdigit():
        return int(text[4:])
    return None


def _fraction(text: str) -> float | None:
    done, _, total = text.partition("/")
    try:
        return int(done) / int(total) if int(total) else None
    except ValueError:
        return None


class MdArray:
    """Handle of one md array, e.g. `MdArray("md127")`."""

    def __init__(self, name: str, sysfs: Path = Path("/sys")) -> None:
        self.name = name
        self.sysfs = sysfs
        self.block = sysfs / "block" / name
        self.md = self.block / "md"

    def __repr__(self) -> str:
        return f"MdArray({self.name!r})"

    @property
    def device(self) -> Path:
        return Path("/dev") / self.name

    # --- finding ---------------------------------------------------------------

    @classmethod
    def all(cls, sysfs: Path = Path("/sys")) -> list[MdArray]:
        return [cls(p.name, sysfs) for p in sorted((sysfs / "block").glob("md*")) if (p / "md").is_dir()]

    @classmethod
    def lookup(cls, name: str, sysfs: Path = Path("/sys")) -> MdArray:
        array = cls(name, sysfs)
        if not array.md.is_dir():
            raise NotFound(f"no md array {name}", array=name)
        return array

    @classmethod
    def by_uuid(cls, uuid: str, sysfs: Path = Path("/sys")) -> MdArray:
        wanted = normalize_uuid(uuid)
        for array in cls.all(sysfs):
            if array.uuid and normalize_uuid(array.uuid) == wanted:
                return array
        raise NotFound(f"no md array with UUID {uuid}", uuid=uuid)

    # --- state, read fresh -----------------------------------------------------

    @property
    def level(self) -> int | None:
        return _level_number(read_attr(self.md, "level"))

    @property
    def raid_disks(self) -> int:
        return read_attr(self.md, "raid_disks", int) or 0

    @property
    def degraded_count(self) -> int:
        # RAID 0 has no `degraded` attribute: it cannot be degraded, only failed.
        return read_attr(self.md, "degraded", int) or 0

    @property
    def array_state(self) -> str | None:
        return read_attr(self.md, "array_state")

    @property
    def sync_action(self) -> str | None:
        return read_attr(self.md, "sync_action")

    @property
    def sync_progress(self) -> float | None:
        """0..1 while a resync, recovery, check or reshape runs; None when idle."""
        return read_attr(self.md, "sync_completed", _fraction)

    @property
    def sync_speed_kib_s(self) -> int | None:
        return read_attr(self.md, "sync_speed", int)

    @property
    def uuid(self) -> str | None:
        return read_attr(self.md, "uuid")

    @property
    def size_bytes(self) -> int:
        return (read_attr(self.block, "size", int) or 0) * 512

    @property
    def read_only(self) -> bool:
        return self.array_state in ("readonly", "read-auto")

    @property
    def members(self) -> list[Member]:
        if not self.md.is_dir():
            raise Gone(f"{self.md} is gone", path=str(self.md))
        found = []
        for entry in sorted(self.md.glob("dev-*")):
            try:
                flags = words(read_attr(entry, "state") or "")
                slot = read_attr(entry, "slot", int)
                recovery = read_attr(entry, "recovery_start")
                link = entry / "block"  # dangles once the disk is deleted
                present = link.exists() or not link.is_symlink()
            except Gone:
                continue  # removed while we listed: it is no longer a member
            found.append(
                Member(
                    name=entry.name.removeprefix("dev-"),
                    slot=slot,
                    flags=flags,
                    recovery_start=int(recovery) if recovery and recovery.isdigit() else None,
                    present=present,
                )
            )
        return found

    @property
    def status(self) -> RaidStatus:
        level = self.level
        working = {m.slot for m in self.members if m.slot is not None and "in_sync" in m.flags and m.present}
        return raid_status(
            level if level is not None else -1,
            self.raid_disks,
            self.array_state,
            self.sync_action,
            {s for s in working if s is not None},
        )

    def member_statuses(self) -> dict[str, MemberStatus]:
        """Each present member's status; a pulled one shows as its vacant role."""
        recovering = self.sync_action == "recover"
        return {m.name: member_status(m, recovering) for m in self.members if m.present}

    def missing_slots(self) -> list[int]:
        """Roles with no member in them (pulled, removed, or taken from a faulty
        member by md's thread: see `vacant_roles`)."""
        held = {m.slot for m in self.members if m.slot is not None and m.present}
        return sorted(set(range(self.raid_disks)) - held)

    def vacant_roles(self, shown: Iterable[str]) -> list[int]:
        """The roles to list as missing beside the members in `shown` (names).

        Once md's thread has handled a failure it takes the role from the faulty
        member (its slot reads `none`) while the member stays listed until it is
        removed. Each such member that is shown already stands for one vacant role,
        so listing the role as well would count one lost disk twice. Which role it
        held, sysfs no longer says: the first ones are dropped."""
        shown = set(shown)
        unplaced = sum(1 for m in self.members if m.slot is None and "faulty" in m.flags and m.name in shown)
        return self.missing_slots()[unplaced:]

    # --- changes: run the tool, return nothing ---------------------------------

    @classmethod
    async def create(
        cls,
        name: str,
        level: int,
        devices: Sequence[Path],
        sysfs: Path = Path("/sys"),
    ) -> MdArray:
        """Create and start an array at /dev/md/<name> on whole disks."""
        minimum = MIN_DISKS.get(level)
        if minimum is None:
            raise Invalid(f"RAID level {level} is not supported (0, 1, 5, 6, 10)", field="level")
        if len(devices) < minimum:
            raise Invalid(
                f"RAID {level} needs at least {minimum} disks, {len(devices)} given", field="disks"
            )
        await tools.run(
            "mdadm", "--create", f"/dev/md/{name}", "--run", "--metadata=1.2",
            f"--level={level}", f"--raid-devices={len(devices)}", f"--name={name}",
            # A fresh array has no data to resync from; md still syncs parity and
            # mirrors in the background, and the status shows it as syncing.
            *(["--bitmap=internal"] if level != 0 else []),
            *[str(d) for d in devices],
            input="y\n",
        )
        return cls.holding(devices[0], sysfs)

    @classmethod
    def holding(cls, device: Path, sysfs: Path = Path("/sys")) -> MdArray:
        """The array that has `device` as a member, from sysfs alone: the
        /dev/md/<name> link is udev's and may not exist yet."""
        member = f"dev-{device.resolve().name}"
        for array in cls.all(sysfs):
            if (array.md / member).is_dir():
                return array
        raise NotFound(f"{device} is in no md array", device=str(device))

    @classmethod
    async def assemble(cls, uuid: str, sysfs: Path = Path("/sys")) -> None:
        """Assemble and start our array even if degraded (`--run`): a degraded array
        must come up at boot, never vanish."""
        await tools.run("mdadm", "--assemble", "--scan", f"--uuid={uuid}", "--run")

    async def run(self) -> None:
        """Start an assembled but inactive array (degraded at boot)."""
        await tools.run("mdadm", "--run", str(self.device))

    async def stop(self) -> None:
        await tools.run("mdadm", "--stop", str(self.device))

    async def add(self, device: Path) -> None:
        await tools.run("mdadm", str(self.device), "--add", str(device))

    async def fail(self, device: Path) -> None:
        await tools.run("mdadm", str(self.device), "--fail", str(device))

    async def remove_gone(self) -> None:
        """Drop members that failed or whose device disappeared."""
        await tools.run("mdadm", str(self.device), "--remove", "failed", ok_codes=(0, 1))
        await tools.run("mdadm", str(self.device), "--remove", "detached", ok_codes=(0, 1))

    async def set_read_only(self, read_only: bool) -> None:
        await tools.run("mdadm", "--readonly" if read_only else "--readwrite", str(self.device))

    def start_sync_action(self, action: str) -> None:
        """`check` or `repair`: md scrubs in the background; progress in sync_*."""
        write_attr(self.md, "sync_action", action)


async def zero_superblock(device: Path) -> None:
    await tools.run("mdadm", "--zero-superblock", str(device), ok_codes=(0, 1))
