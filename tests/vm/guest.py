"""Helpers for the vm tier, used inside the virtme-ng guest that tests/vm/run boots.

The guest has four QEMU NVMe disks whose serials tests/vm/run chose, and one QEMU
USB stick (usb-storage, serial USB_SERIAL_ENV). Everything here that writes to a
disk finds it again by serial first and checks that it is a QEMU NVMe disk (or the
QEMU USB stick), so a stale name can never point a wipe at the wrong device.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Put on the guest kernel command line by tests/vm/run; no host boots with it.
CMDLINE_MARKER = "nvrd.vmtier=1"
#: Set in the guest's environment by tests/vm/run before it starts pytest.
GUEST_ENV = "NVRD_VM_GUEST"
SERIALS_ENV = "NVRD_VM_SERIALS"
DEFAULT_SERIALS = ("NVRD0000", "NVRD0001", "NVRD0002", "NVRD0003")
#: What QEMU's emulated NVMe controller reports as its model.
QEMU_NVME_MODEL = "QEMU NVMe Ctrl"
USB_SERIAL_ENV = "NVRD_VM_USB_SERIAL"
DEFAULT_USB_SERIAL = "NVRDUSB0"
#: What QEMU's usb-storage disk reports as its SCSI model (device/model).
QEMU_USB_MODEL = "QEMU HARDDISK"
USB_MODULES = ("xhci_pci", "usb_storage", "vfat", "nls_cp437", "nls_iso8859_1")
MODULES = ("raid0", "raid1", "raid10", "raid456", "dm_mod", "dm_crypt", "dm_flakey")
MiB = 1024 * 1024
#: How much of each end of a disk clean_disks zeroes.
WIPE_BYTES = 4 * MiB


class CommandFailed(Exception):
    def __init__(self, argv: Sequence[str], rc: int | None, stderr: str) -> None:
        self.argv = list(argv)
        self.rc = rc
        self.stderr = stderr
        super().__init__(f"{shlex.join(self.argv)} failed (rc={rc}): {stderr.strip()}")


class Gone(Exception):
    """The device a handle stands for is no longer there."""


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    input: bytes | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run one tool. Secrets go in `input`, never in argv."""
    args = [os.fspath(a) for a in argv]
    stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    started = time.monotonic()
    try:
        proc = subprocess.run(args, capture_output=True, timeout=timeout, **stdin)
    except subprocess.TimeoutExpired as e:
        raise CommandFailed(args, None, f"timed out after {timeout} s") from e
    finally:
        log.debug("%.2f s: %s", time.monotonic() - started, shlex.join(args))
    if check and proc.returncode != 0:
        raise CommandFailed(args, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def read_attr(path: Path) -> str:
    return path.read_text().strip()


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 60, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


async def wait_job(client: Any, job_id: str, timeout: float = 180) -> dict[str, Any]:
    """Poll GET /api/v1/jobs/{id} through an aiohttp test client until it ends."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
        if job["state"] in ("succeeded", "failed"):
            return job
        assert asyncio.get_running_loop().time() < deadline, job
        await asyncio.sleep(0.2)


def settle() -> None:
    run(["udevadm", "settle", "--timeout=60"], timeout=90)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def wanted_serials() -> tuple[str, ...]:
    value = os.environ.get(SERIALS_ENV, "")
    return tuple(value.split()) or DEFAULT_SERIALS


class _BlockDevice:
    """A whole disk found again by `name` (a serial lookup) on every use."""

    sysfs_root: Path

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def sysfs(self) -> Path:
        return self.sysfs_root / "block" / self.name

    @property
    def dev(self) -> Path:
        return Path("/dev") / self.name

    @property
    def size(self) -> int:
        return int(read_attr(self.sysfs / "size")) * 512


class Disk(_BlockDevice):
    """One test disk, found by its NVMe serial every time it is used."""

    def __init__(self, serial: str, qom_id: str, sysfs: Path = Path("/sys")) -> None:
        self.serial = serial
        #: QOM id of its controller (-device nvme,id=...), for QMP on the host side.
        self.qom_id = qom_id
        self.sysfs_root = sysfs

    def __repr__(self) -> str:
        return f"Disk({self.serial!r})"

    @property
    def name(self) -> str:
        found = [
            block.name
            for block in sorted((self.sysfs_root / "block").glob("nvme*n*"))
            if (block / "device" / "serial").exists()
            and read_attr(block / "device" / "serial") == self.serial
        ]
        if not found:
            raise Gone(f"no NVMe namespace with serial {self.serial}")
        if len(found) > 1:
            raise AssertionError(f"serial {self.serial} is on {found}; expected one namespace")
        return found[0]

    @property
    def model(self) -> str:
        return read_attr(self.sysfs / "device" / "model")

    @property
    def controller(self) -> str:
        """The controller's char device name, e.g. nvme0 (for smartctl)."""
        return (self.sysfs / "device").resolve().name

    @property
    def pci_device(self) -> Path:
        """The controller's PCI device in sysfs (its `remove` file unplugs it)."""
        return (self.sysfs / "device" / "device").resolve()

    def nodes(self) -> list[Path]:
        """The disk and its partitions, as sysfs directories."""
        return with_partitions(self.sysfs)

    def holders(self) -> list[str]:
        """Every block device stacked on this disk or its partitions, the topmost first."""
        order: list[str] = []

        def visit(node: Path) -> None:
            for part in with_partitions(node):
                for holder in sorted((part / "holders").iterdir()):
                    visit(self.sysfs_root / "block" / holder.name)
                    if holder.name not in order:
                        order.append(holder.name)

        visit(self.sysfs)
        return order

    def check_is_test_disk(self) -> None:
        if self.model != QEMU_NVME_MODEL:
            raise AssertionError(
                f"{self.dev} (serial {self.serial}) has model {self.model!r}, "
                f"not {QEMU_NVME_MODEL!r}: refusing to touch it"
            )

    def tear_down_holders(self) -> None:
        """Unmount, close and stop everything that sits on this disk."""
        for _ in range(5):
            holders = self.holders()
            if not holders:
                break
            for holder in holders:
                release_block_device(self.sysfs_root / "block" / holder)
            settle()
        for node in self.nodes():
            unmount_all(node)
        if self.holders():
            raise AssertionError(f"{self.dev} is still held by {self.holders()}")

    def wipe(self) -> None:
        wipe_disks([self])


def wipe_disks(disks: Sequence[Disk]) -> None:
    """Remove every trace of RAID, LUKS, filesystems and partitions from the disks.

    Tears down what is stacked on them first. One tool call covers all disks,
    because each process start costs a noticeable fraction of a second under TCG.
    """
    for disk in disks:
        disk.check_is_test_disk()
        disk.tear_down_holders()
    devs = [disk.dev for disk in disks]
    # Nothing to zero is not a failure here (mdadm exits 1); the check below is.
    run(["mdadm", "--zero-superblock", "--force", *devs], check=False)
    run(["wipefs", "--all", "--quiet", *devs])
    zeros = bytes(WIPE_BYTES)
    for disk in disks:
        # O_EXCL on a block device fails with EBUSY while md, dm or a mount holds it.
        size = disk.size
        fd = os.open(disk.dev, os.O_WRONLY | os.O_EXCL)
        try:
            os.pwrite(fd, zeros, 0)
            os.pwrite(fd, zeros, max(0, size - WIPE_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
    # wipefs has had the kernel drop any partitions; the zeroes went through the
    # same page cache as any later reader's.
    settle()
    left = run(["wipefs", "--no-act", "--noheadings", *devs]).stdout.decode().strip()
    if left:
        raise AssertionError(f"signatures left after wiping:\n{left}")
    for disk in disks:
        if disk.holders():
            raise AssertionError(f"{disk.dev} was picked up again after wiping: {disk.holders()}")


def release_disks(disks: Sequence[Disk]) -> None:
    """Unmount, close and stop whatever is stacked on the disks; their data stays."""
    for disk in disks:
        disk.check_is_test_disk()
        disk.tear_down_holders()


def guest_problems(serials: Sequence[str]) -> list[str]:
    """Why this is not the vm tier's guest; empty when it is."""
    problems = []
    if os.environ.get(GUEST_ENV) != "1":
        problems.append(f"{GUEST_ENV}=1 is not set")
    cmdline = Path("/proc/cmdline").read_text().split()
    if CMDLINE_MARKER not in cmdline:
        problems.append(f"{CMDLINE_MARKER} is not on the kernel command line")
    for serial in serials:
        disk = Disk(serial, qom_id="")
        try:
            model = disk.model
        except Gone:
            problems.append(f"no NVMe disk with serial {serial}")
            continue
        if model != QEMU_NVME_MODEL:
            problems.append(f"disk with serial {serial} is a {model!r}, not a {QEMU_NVME_MODEL!r}")
    return problems


def with_partitions(node: Path) -> list[Path]:
    """A whole block device's sysfs directory followed by its partitions'."""
    return [node, *sorted(p.parent for p in node.glob("*/partition"))]


def _majmin(node: Path) -> str:
    return read_attr(node / "dev")


def _mounts_of(node: Path) -> Iterator[str]:
    majmin = _majmin(node)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[2] == majmin:
            yield fields[4].encode().decode("unicode_escape")


def unmount_all(node: Path) -> None:
    for mountpoint in sorted(_mounts_of(node), key=len, reverse=True):
        run(["umount", mountpoint])


def release_block_device(node: Path) -> None:
    """Stop one md array or remove one dm mapping, after unmounting it."""
    if not node.exists():
        return
    for part in with_partitions(node):
        unmount_all(part)
    name = node.name
    if name.startswith("md"):
        run(["mdadm", "--stop", Path("/dev") / name])
    elif name.startswith("dm-"):
        dm_name = read_attr(node / "dm" / "name")
        run(["dmsetup", "remove", "--retry", dm_name])
    else:
        raise AssertionError(f"do not know how to release {name}")


def load_modules(modules: Sequence[str] = MODULES) -> None:
    run(["modprobe", "-a", *modules])



class UsbStick(_BlockDevice):
    """The test USB stick, found by its USB serial every time it is used: a disk
    under /sys/block whose udev ID_BUS is usb and ID_SERIAL_SHORT is the serial.
    After it was unplugged and plugged again its name may differ."""

    def __init__(self, serial: str, sysfs: Path = Path("/sys")) -> None:
        self.serial = serial
        self.sysfs_root = sysfs

    def __repr__(self) -> str:
        return f"UsbStick({self.serial!r})"

    @staticmethod
    def _properties(name: str) -> dict[str, str]:
        out = run(["udevadm", "info", "--query=property", f"--name=/dev/{name}"], check=False).stdout.decode()
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    @property
    def name(self) -> str:
        found = []
        for block in sorted((self.sysfs_root / "block").glob("sd*")):
            props = self._properties(block.name)
            if props.get("ID_BUS") == "usb" and props.get("ID_SERIAL_SHORT") == self.serial:
                found.append(block.name)
        if not found:
            raise Gone(f"no USB disk with serial {self.serial}")
        if len(found) > 1:
            raise AssertionError(f"USB serial {self.serial} is on {found}; expected one disk")
        return found[0]

    @property
    def present(self) -> bool:
        try:
            self.name
        except Gone:
            return False
        return True

    @property
    def usb_device(self) -> Path:
        """The stick's USB device in sysfs (its `authorized` file unplugs it)."""
        node = (self.sysfs / "device").resolve()
        while node != node.parent:
            if (node / "authorized").exists() and (node / "idVendor").exists():
                return node
            node = node.parent
        raise AssertionError(f"{self.dev} has no USB device above it")

    def check_is_test_stick(self) -> None:
        model = read_attr(self.sysfs / "device" / "model")
        size = self.size
        if model != QEMU_USB_MODEL or size > 256 * MiB:
            raise AssertionError(
                f"{self.dev} (USB serial {self.serial}) is a {model!r} of {size} bytes, "
                f"not the {QEMU_USB_MODEL!r} test stick: refusing to touch it"
            )

    def set_plugged(self, plugged: bool, timeout: float = 60) -> None:
        """Unplug or plug the stick as the kernel sees it (USB `authorized`), so that
        udev sends remove or add events for the disk and its partitions."""
        if plugged:
            self._unplugged_at.joinpath("authorized").write_text("1\n")
            wait_for("the USB stick to appear", lambda: self.present, timeout)
            settle()
        else:
            self.check_is_test_stick()
            self._unplugged_at = self.usb_device
            self._unplugged_at.joinpath("authorized").write_text("0\n")
            wait_for("the USB stick to go", lambda: not self.present, timeout)
            settle()

    _unplugged_at: Path


def usb_stick_serial() -> str:
    return os.environ.get(USB_SERIAL_ENV) or DEFAULT_USB_SERIAL


def find_usb_stick(timeout: float = 60) -> UsbStick:
    """The test stick, with its drivers loaded, checked before anything writes to it."""
    run(["modprobe", "-a", *USB_MODULES])
    stick = UsbStick(usb_stick_serial())
    wait_for(f"the USB stick {stick.serial}", lambda: stick.present, timeout, every=0.5)
    settle()
    stick.check_is_test_stick()
    return stick
