"""Export to USB on the real kernel: a QEMU usb-storage stick on xHCI (tests/vm/run),
unplugged and plugged through USB `authorized` so that udev really reports it
coming and going, written through the real API and read back byte for byte.

The stick is found by its USB serial and checked (model, size) before anything
writes to it; the NVMe test disks are not used here.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import pytest

import guest
from nvrd.accounts import ScryptCost
from nvrd.api.app import make_app
from nvrd.api.keys import BUS, EXPORTS
from nvrd.config import Config, DaemonConfig, ExportsConfig, HttpConfig, StorageConfig
from nvrd.recording.exports import Export, ExportFormat

PROBLEM = "application/problem+json"
MiB = 1024 * 1024
LABEL = "NVRDTEST"


@pytest.fixture(scope="module")
def stick() -> guest.UsbStick:
    """The stick, with one vfat partition filling it (made here, as a user's would be)."""
    stick = guest.find_usb_stick()
    guest.run(["wipefs", "--all", "--quiet", stick.dev])
    write_mbr(stick.dev, (stick.size // 512) - 2048)
    guest.run(["blockdev", "--rereadpt", stick.dev])
    guest.settle()
    guest.run(["mkfs.vfat", "-n", LABEL, f"{stick.dev}1"])
    guest.settle()
    return stick


def write_mbr(device: Path, sectors: int) -> None:
    """A DOS partition table with one FAT32 (LBA) partition from sector 2048 (no
    sfdisk in the guest: the host root has no fdisk package)."""
    entry = bytes([0, 0, 0, 0, 0x0C, 0, 0, 0]) + (2048).to_bytes(4, "little") + sectors.to_bytes(4, "little")
    mbr = bytearray(512)
    mbr[446:462] = entry
    mbr[510:512] = b"\x55\xaa"
    fd = os.open(device, os.O_WRONLY | os.O_EXCL)
    try:
        os.pwrite(fd, bytes(mbr), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.fixture
async def api(stick: guest.UsbStick, aiohttp_client, tmp_path: Path):
    config = Config(
        daemon=DaemonConfig(state_dir=tmp_path / "state"),
        storage=StorageConfig(mode="directory", directory=tmp_path / "volume"),
        http=HttpConfig(listen="127.0.0.1", http_port=0, https_port=0),
        exports=ExportsConfig(usb_disks=[f"/dev/disk/by-id/usb-*_{stick.serial}-*"]),
    )
    client = await start_api(aiohttp_client, config)
    yield client
    await client.close()


async def start_api(aiohttp_client, config: Config):
    """The app under a test client, set up, sending the admin's credentials."""
    client = await aiohttp_client(
        make_app(config, scrypt=ScryptCost(n=16, r=8, p=1)),
        headers={"Authorization": "Basic " + base64.b64encode(b"admin:admin password").decode()},
    )
    response = await client.post("/api/v1/setup", json={"username": "admin", "password": "admin password"})
    assert response.status == 201, await response.text()
    return client


def add_export(api, path: Path | None, export_id: str) -> None:
    """A finished export of `path` (or, without a path, one still running), as the
    export service holds it: making real footage is the host tier's business."""
    api.app[EXPORTS].exports[export_id] = Export(
        id=export_id, camera="door", camera_name="Door", from_ms=0, to_ms=60_000, format=ExportFormat.MKV,
        encrypted=False, created_by="admin", path=path, bytes=path.stat().st_size if path else None,
    )



def mounted(device: Path) -> bool:
    return any(line.split()[0] == str(device) for line in Path("/proc/self/mounts").read_text().splitlines())


async def problem(response) -> str:
    body = await response.json(content_type=PROBLEM)
    return body["detail"]


async def test_copy_to_usb(api, stick: guest.UsbStick, tmp_path: Path) -> None:
    # Unplugged: nothing to copy to.
    events = api.app[BUS].subscribe(["usb"])
    stick.set_plugged(False)
    source = tmp_path / "door-20261125T080000Z.mkv"
    source.write_bytes(os.urandom(6 * MiB + 12345))
    add_export(api, source, "e1")
    assert await (await api.get("/api/v1/exports/usb")).json() == []
    response = await api.post("/api/v1/exports/e1/copy-to-usb")
    assert response.status == 409
    assert "no USB disk" in await problem(response)

    # Plugged in: udev's add is on the bus, and the stick is listed.
    stick.set_plugged(True)
    seen = set()
    async with asyncio.timeout(10):
        while "usb.added" not in seen:
            seen.add((await events.get()).topic)
    assert "usb.removed" in seen
    disks = await (await api.get("/api/v1/exports/usb")).json()
    part = f"{stick.dev}1"
    assert [(d["device"], d["filesystem"], d["label"], d["supported"]) for d in disks] == [
        (part, "vfat", LABEL, True)
    ]
    assert 50 * MiB < disks[0]["free_bytes"] < 64 * MiB
    assert disks[0]["serial"] == stick.serial and not mounted(Path(part))

    # Not finished yet, and an unknown device.
    add_export(api, None, "running")
    response = await api.post("/api/v1/exports/running/copy-to-usb")
    assert response.status == 409 and "not ready" in await problem(response)
    response = await api.post("/api/v1/exports/e1/copy-to-usb", json={"device": "/dev/nvme0n1"})
    assert response.status == 404

    # The copy: a job with progress; afterwards the stick is unmounted.
    jobs = api.app[BUS].subscribe(["job"])
    response = await api.post("/api/v1/exports/e1/copy-to-usb", json={"device": part})
    assert response.status == 202, await response.text()
    job = await guest.wait_job(api, (await response.json())["id"])
    assert job["state"] == "succeeded", job
    assert job["kind"] == "usb-copy" and job["target"] == "e1" and job["progress"] == 1.0
    progress = []
    while True:
        try:
            event = await asyncio.wait_for(jobs.get(), 0.05)
        except TimeoutError:
            break
        if event.data["id"] == job["id"]:
            progress.append(event.data["progress"])
    assert any(0 < p < 1 for p in progress), progress
    result = (await (await api.get(f"/api/v1/jobs/{job['id']}")).json())
    assert not mounted(Path(part))
    assert not any((tmp_path / "state" / "usb").iterdir())

    # On the stick, byte for byte (mounted again here, read-only).
    look = tmp_path / "look"
    look.mkdir()
    guest.run(["mount", "-o", "ro", part, look])
    try:
        copied = look / "nvrd-exports" / source.name
        assert copied.read_bytes() == source.read_bytes()
        assert [p.name for p in copied.parent.iterdir()] == [source.name]  # no .part left
    finally:
        guest.run(["umount", look])
    assert result["state"] == "succeeded"

    # Too big for what is free on the stick (a sparse file: the check comes first).
    big = tmp_path / "big.mkv"
    with open(big, "wb") as f:
        f.truncate(80 * MiB)
    add_export(api, big, "big")
    response = await api.post("/api/v1/exports/big/copy-to-usb")
    assert response.status == 409
    assert "not enough free space on USB disk" in await problem(response)
    assert not mounted(Path(part))
    # And beyond what a FAT32 file can hold.
    with open(big, "wb") as f:
        f.truncate(5 * 1024 * MiB)
    response = await api.post("/api/v1/exports/big/copy-to-usb")
    assert response.status == 409 and "vfat" in await problem(response)


async def test_a_storage_disk_is_never_a_usb_target(stick: guest.UsbStick, aiohttp_client, tmp_path: Path) -> None:
    config = Config(
        daemon=DaemonConfig(state_dir=tmp_path / "state"),
        storage=StorageConfig(mode="directory", directory=tmp_path / "volume",
                              disks=[f"/dev/disk/by-id/usb-*_{stick.serial}-*"]),
        http=HttpConfig(listen="127.0.0.1", http_port=0, https_port=0),  # no TLS key to make under TCG
        exports=ExportsConfig(usb_disks=["/dev/disk/by-id/usb-*"]),
    )
    client = await start_api(aiohttp_client, config)
    assert await (await client.get("/api/v1/exports/usb")).json() == []
    await client.close()
