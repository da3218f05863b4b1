"""md RAID 1 with LUKS2 on top, on the guest's real kernel and the emulated NVMe disks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from guest import Disk, MiB, drop_caches, read_attr, run, settle, wait_for

# Never on argv: cryptsetup reads it from stdin (--key-file=-).
PASSPHRASE = b"nvrd vm tier passphrase"
# A cheap KDF keeps luksFormat and open fast under TCG; real volumes use the default.
CHEAP_PBKDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
MAPPING = "nvrdvm"
DATA_BYTES = 4 * MiB


class Md:
    """The md array /dev/<name>, read from sysfs on every access."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dev = Path("/dev") / name
        self.sysfs = Path("/sys/block") / name

    def attr(self, name: str) -> str:
        return read_attr(self.sysfs / "md" / name)

    @property
    def level(self) -> str:
        return self.attr("level")

    @property
    def array_state(self) -> str:
        return self.attr("array_state")

    @property
    def degraded(self) -> int:
        return int(self.attr("degraded"))

    @property
    def sync_action(self) -> str:
        return self.attr("sync_action")

    def member_state(self, disk: Disk) -> str:
        return self.attr(f"dev-{disk.name}/state")

    def members(self) -> list[str]:
        return sorted(p.name for p in (self.sysfs / "slaves").iterdir())


def create_raid1(name: str, disks: list[Disk]) -> Md:
    run(
        [
            "mdadm", "--create", f"/dev/{name}", "--run", "--metadata=1.2",
            "--level=1", f"--raid-devices={len(disks)}", *(d.dev for d in disks),
        ]
    )
    settle()
    return Md(name)


def stop(md: Md) -> None:
    run(["mdadm", "--stop", md.dev])
    settle()


def luks_format(dev: Path) -> None:
    run(
        ["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", *CHEAP_PBKDF,
         "--key-file=-", dev],
        input=PASSPHRASE,
    )


def luks_open(dev: Path, name: str = MAPPING, passphrase: bytes = PASSPHRASE) -> Path:
    run(["cryptsetup", "open", "--type", "luks2", "--key-file=-", dev, name], input=passphrase)
    return Path("/dev/mapper") / name


def luks_close(name: str = MAPPING) -> None:
    run(["cryptsetup", "close", name])


def write_at(path: Path, data: bytes, offset: int = 0) -> None:
    with open(path, "r+b", buffering=0) as f:
        f.seek(offset)
        f.write(data)
        os.fsync(f.fileno())


def read_at(path: Path, size: int, offset: int = 0) -> bytes:
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        data = f.read(size)
    assert len(data) == size, f"short read from {path}"
    return data


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def contains(path: Path, needle: bytes, chunk: int = 8 * MiB) -> bool:
    """Whether the whole block device holds `needle` anywhere."""
    overlap = len(needle) - 1
    tail = b""
    with open(path, "rb", buffering=0) as f:
        while block := f.read(chunk):
            if needle in block or needle in tail + block[:overlap]:
                return True
            tail = block[-overlap:]
    return False


def test_raid1_luks_data_survives_reopen_and_reassembly(clean_disks: list[Disk]) -> None:
    a, b = clean_disks[:2]

    md = create_raid1("md0", [a, b])
    assert md.level == "raid1"
    assert md.array_state in ("clean", "active")
    assert md.degraded == 0
    assert md.members() == sorted([a.name, b.name])
    assert a.holders() == ["md0"] and b.holders() == ["md0"]

    luks_format(md.dev)
    probe = run(["blkid", "--probe", "--output", "export", md.dev]).stdout.decode()
    assert "TYPE=crypto_LUKS" in probe.split() and "VERSION=2" in probe.split()
    wrong = run(["cryptsetup", "open", "--test-passphrase", "--key-file=-", md.dev],
                input=b"not the passphrase", check=False)
    assert wrong.returncode != 0, "LUKS opened with a wrong passphrase"

    plain = luks_open(md.dev)
    data = os.urandom(DATA_BYTES)
    write_at(plain, data)
    drop_caches()
    assert sha256(read_at(plain, DATA_BYTES)) == sha256(data)

    luks_close()
    assert not plain.exists()
    plain = luks_open(md.dev)
    assert sha256(read_at(plain, DATA_BYTES)) == sha256(data)

    # The plaintext is readable through the mapping and nowhere on the array.
    needle = data[DATA_BYTES // 2 : DATA_BYTES // 2 + 4096]
    assert contains(plain, needle), "search found nothing even where the plaintext is"
    drop_caches()
    assert not contains(md.dev, needle), "plaintext found on the raw md device"

    luks_close()
    stop(md)
    assert not md.sysfs.exists()
    assert a.holders() == [] and b.holders() == []

    run(["mdadm", "--assemble", md.dev, a.dev, b.dev])
    settle()
    assert md.level == "raid1"
    assert md.degraded == 0
    assert md.members() == sorted([a.name, b.name])
    plain = luks_open(md.dev)
    assert sha256(read_at(plain, DATA_BYTES)) == sha256(data)
    luks_close()


def test_raid1_stays_readable_with_a_failed_member(clean_disks: list[Disk]) -> None:
    a, b = clean_disks[:2]
    md = create_raid1("md0", [a, b])
    # Fail a member only once both halves hold the same data.
    wait_for("the initial resync of md0", lambda: md.sync_action == "idle", timeout=120)
    assert md.degraded == 0

    luks_format(md.dev)
    plain = luks_open(md.dev)
    data = os.urandom(DATA_BYTES)
    write_at(plain, data)

    run(["mdadm", md.dev, "--fail", b.dev])
    wait_for("md0 to count a degraded member", lambda: md.degraded == 1)
    assert "faulty" in md.member_state(b).split(",")
    # Right after --fail md can report write-pending for a moment.
    wait_for("md0 to run", lambda: md.array_state in ("clean", "active", "active-idle"), timeout=30)
    # mdadm --detail --test exits 1 for a degraded array, 0 for a healthy one.
    assert run(["mdadm", "--detail", "--test", md.dev], check=False).returncode == 1

    drop_caches()
    assert sha256(read_at(plain, DATA_BYTES)) == sha256(data)

    # Still writable, and what was written survives closing and reopening LUKS.
    more = os.urandom(MiB)
    write_at(plain, more, offset=DATA_BYTES)
    luks_close()
    plain = luks_open(md.dev)
    assert sha256(read_at(plain, DATA_BYTES)) == sha256(data)
    assert sha256(read_at(plain, MiB, offset=DATA_BYTES)) == sha256(more)
    luks_close()
