"""LUKS2 on the array: a handle per dm-crypt mapping, and cryptsetup for changes.

Keys never go on argv. Each one is handed to cryptsetup as /dev/fd/N of a memfd
(tools.secret_fd), so it touches no file system and shows in no process list.

Key slots, by convention:
- the administrator's password,
- a random recovery key, shown once when the volume is encrypted,
- the device key, kept in the state directory, which unlocks the volume at start-up
  as the reference recorder does (the password is needed only after a factory reset
  or to move the disks elsewhere; disks pulled from the box stay unreadable).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nvrd.errors import Conflict, Forbidden, NotFound
from nvrd.storage import tools
from nvrd.storage.sysfs import read_attr

# cryptsetup's exit code for "no key available with this passphrase".
EXIT_WRONG_KEY = 2


@dataclass(frozen=True)
class Pbkdf:
    """Key derivation cost. None fields mean cryptsetup's defaults (argon2id,
    benchmarked to about 2 s); tests pass a cheap pbkdf2 to stay fast."""

    kind: str | None = None  # argon2id, argon2i, pbkdf2
    iterations: int | None = None  # --pbkdf-force-iterations
    memory_kib: int | None = None  # --pbkdf-memory

    def args(self) -> list[str]:
        result = []
        if self.kind:
            result.append(f"--pbkdf={self.kind}")
        if self.iterations:
            result.append(f"--pbkdf-force-iterations={self.iterations}")
        if self.memory_kib:
            result.append(f"--pbkdf-memory={self.memory_kib}")
        return result


def new_recovery_key() -> str:
    """32 random bytes as 8 groups of hex, easy to read out and type."""
    raw = secrets.token_hex(32)
    return "-".join(raw[i : i + 8] for i in range(0, len(raw), 8))


@contextlib.contextmanager
def _secrets(*values: str | bytes) -> Iterator[list[int]]:
    fds = [tools.secret_fd(v) for v in values]
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


async def is_luks(device: Path) -> bool:
    try:
        await tools.run("cryptsetup", "isLuks", str(device))
    except tools.CommandFailed:
        return False
    return True


async def format(device: Path, keys: list[str | bytes], pbkdf: Pbkdf = Pbkdf()) -> None:
    """luksFormat `device` with the first key, then add the others, in order."""
    first, *others = keys
    with _secrets(first) as (fd,):
        await tools.run(
            "cryptsetup", "luksFormat", "--type=luks2", "--batch-mode", *pbkdf.args(),
            f"--key-file=/dev/fd/{fd}", str(device), secret_fds=[fd],
        )
    for key in others:
        await add_key(device, first, key, pbkdf)


async def add_key(device: Path, existing: str | bytes, new: str | bytes, pbkdf: Pbkdf = Pbkdf()) -> None:
    with _secrets(existing, new) as (old_fd, new_fd):
        try:
            await tools.run(
                "cryptsetup", "luksAddKey", "--batch-mode", *pbkdf.args(),
                f"--key-file=/dev/fd/{old_fd}", str(device), f"/dev/fd/{new_fd}",
                secret_fds=[old_fd, new_fd],
            )
        except tools.CommandFailed as exc:
            raise _wrong_key(exc) from exc


async def remove_key(device: Path, key: str | bytes) -> None:
    with _secrets(key) as (fd,):
        try:
            await tools.run(
                "cryptsetup", "luksRemoveKey", "--batch-mode",
                f"--key-file=/dev/fd/{fd}", str(device), secret_fds=[fd],
            )
        except tools.CommandFailed as exc:
            raise _wrong_key(exc) from exc


async def test_key(device: Path, key: str | bytes) -> bool:
    with _secrets(key) as (fd,):
        try:
            await tools.run(
                "cryptsetup", "open", "--test-passphrase", f"--key-file=/dev/fd/{fd}",
                str(device), secret_fds=[fd],
            )
        except tools.CommandFailed as exc:
            if exc.returncode == EXIT_WRONG_KEY:
                return False
            raise
    return True


async def backup_header(device: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)  # cryptsetup refuses to overwrite
    await tools.run(
        "cryptsetup", "luksHeaderBackup", str(device), f"--header-backup-file={tmp}"
    )
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _wrong_key(exc: tools.CommandFailed) -> Exception:
    if exc.returncode == EXIT_WRONG_KEY:
        return Forbidden("the password is wrong", field="password")
    return exc


class LuksMapping:
    """Handle of an open (or openable) dm-crypt mapping, /dev/mapper/<name>."""

    def __init__(self, name: str, sysfs: Path = Path("/sys"), dev: Path = Path("/dev")) -> None:
        self.name = name
        self.sysfs = sysfs
        self.dev = dev

    @property
    def device(self) -> Path:
        return self.dev / "mapper" / self.name

    @property
    def dm_block(self) -> Path | None:
        """/sys/block/dm-N of this mapping, found by its dm name; None if closed."""
        for block in (self.sysfs / "block").glob("dm-*"):
            if read_attr(block / "dm", "name") == self.name:
                return block
        return None

    @property
    def is_open(self) -> bool:
        return self.dm_block is not None

    @property
    def backing_devices(self) -> list[str]:
        block = self.dm_block
        return sorted(p.name for p in (block / "slaves").iterdir()) if block else []

    async def open(self, device: Path, key: str | bytes) -> None:
        if self.is_open:
            raise Conflict(f"{self.name} is already open", mapping=self.name)
        with _secrets(key) as (fd,):
            try:
                await tools.run(
                    "cryptsetup", "open", "--type=luks2", f"--key-file=/dev/fd/{fd}",
                    str(device), self.name, secret_fds=[fd],
                )
            except tools.CommandFailed as exc:
                raise _wrong_key(exc) from exc

    async def close(self) -> None:
        if not self.is_open:
            raise NotFound(f"{self.name} is not open", mapping=self.name)
        await tools.run("cryptsetup", "close", self.name)
