"""SMART on the guest's QEMU NVMe disks, read by the real smartctl.

A SMART fault is made for real: QEMU's NVMe controller has a `smart_critical_warning`
property, set through QMP. The guest cannot reach QEMU's QMP socket, so it asks the
host: it drops a request file in SCRATCH/qmp/ and the host side of tests/vm/run
relays it (see docs/design/disks.md, "SMART faults in the vm tier").
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import guest
from nvrd.storage.disks import inventory
from nvrd.storage.smart import Health, SmartReader, run_smartctl

REPO = Path(__file__).resolve().parents[2]
SCRATCH = Path(os.environ.get("NVRD_VM_SCRATCH", REPO / "build" / "vm" / "run"))
QMP_DIR = SCRATCH / "qmp"
PATTERN = "/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_NVRD*"


def qmp(execute: str, timeout: float = 60, **arguments: Any) -> Any:
    """Run one QMP command through the host's relay; its `return` value."""
    if not (QMP_DIR / "ready").exists():
        pytest.skip(f"no QMP relay on the host ({QMP_DIR}/ready is missing): tests/vm/run must start one")
    ident = uuid.uuid4().hex
    request = {"execute": execute, "arguments": arguments} if arguments else {"execute": execute}
    tmp = QMP_DIR / f"{ident}.tmp"
    tmp.write_text(json.dumps(request))
    tmp.rename(QMP_DIR / f"{ident}.request")
    reply_path = QMP_DIR / f"{ident}.reply"
    guest.wait_for(f"the host to answer QMP {execute}", reply_path.exists, timeout=timeout)
    reply = json.loads(reply_path.read_text())
    reply_path.unlink()
    if "error" in reply:
        raise AssertionError(f"QMP {execute} {arguments}: {reply['error']}")
    return reply.get("return")


def set_critical_warning(disk: guest.Disk, bits: int) -> None:
    qmp("qom-set", path=f"/machine/peripheral/{disk.qom_id}", property="smart_critical_warning", value=bits)


@pytest.fixture
def warned_disk(vm_disks: list[guest.Disk]) -> Iterator[guest.Disk]:
    """The second test disk, whose controller is put back to no warning afterwards."""
    disk = vm_disks[1]
    try:
        yield disk
    finally:
        if (QMP_DIR / "ready").exists():
            set_critical_warning(disk, 0)


async def test_every_test_disk_is_healthy_with_a_temperature(vm_disks: list[guest.Disk]) -> None:
    disks = inventory([PATTERN])
    assert len(disks) == len(vm_disks)
    reports = await SmartReader().read_many([d.device for d in disks])
    for disk in disks:
        report = reports[str(disk.device)]
        assert report.health is Health.PASSED, report.reason
        assert report.protocol == "NVMe"
        assert report.critical_warning == 0
        # QEMU's emulated controller reports 323 K.
        assert report.temperature_c == 50
        assert report.power_on_hours is not None and report.power_on_hours >= 0
        assert not report.standby


async def test_critical_warning_set_through_qmp_shows_failed(vm_disks: list[guest.Disk], warned_disk: guest.Disk) -> None:
    reader = SmartReader()
    assert (await reader.read(warned_disk.dev)).health is Health.PASSED
    set_critical_warning(warned_disk, 4)
    deadline = time.monotonic() + 30
    while (report := await reader.read(warned_disk.dev)).health is Health.PASSED and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert report.health is Health.FAILED
    assert report.critical_warning == 4
    assert "reliability degraded" in (report.reason or "")
    # Only that disk: its neighbours are still fine.
    for other in vm_disks:
        if other.serial != warned_disk.serial:
            assert (await reader.read(other.dev)).health is Health.PASSED
    set_critical_warning(warned_disk, 0)
    assert (await reader.read(warned_disk.dev)).health is Health.PASSED


async def test_a_missing_device_is_unknown_not_an_error(vm_disks: list[guest.Disk]) -> None:
    report = await run_smartctl("/dev/nvme99n1")
    assert report.health is Health.UNKNOWN
    assert "No such device" in (report.reason or "")
