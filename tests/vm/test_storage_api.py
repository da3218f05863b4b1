"""The storage REST API on the real kernel, with the real disk inventory (pyudev).

Three of the four test disks are allowed; the fourth must never be touched.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from pathlib import Path

import pytest

import guest
from nvrd.accounts import ScryptCost
from nvrd.api.app import make_app
from nvrd.config import Config, DaemonConfig, EncryptionConfig, HttpConfig, StorageConfig

PROBLEM = "application/problem+json"


@pytest.fixture(autouse=True)
def fast_resync() -> None:
    Path("/proc/sys/dev/raid/speed_limit_min").write_text("500000\n")


@pytest.fixture
async def api(clean_disks: list[guest.Disk], aiohttp_client, tmp_path: Path):
    # clean_disks first: it is then torn down last, after aiohttp_client has closed
    # the app (and with it the recorder holding the volume).
    # (pytest tears fixtures down in the reverse order of their set-up.)
    allowed = [f"/dev/disk/by-id/*{d.serial}" for d in clean_disks[:3]]
    config = Config(
        daemon=DaemonConfig(state_dir=tmp_path / "state"),
        storage=StorageConfig(
            mode="managed", disks=allowed, auto_replace=True,
            encryption=EncryptionConfig(pbkdf="pbkdf2", pbkdf_iterations=1000),
        ),
        http=HttpConfig(listen="127.0.0.1", http_port=0, https_port=0),
    )
    # The API needs an account since issue 6: set up an administrator, and send
    # its credentials (Basic, from loopback) on every request.
    client = await aiohttp_client(
        make_app(config, scrypt=ScryptCost(n=16, r=8, p=1)),
        headers={"Authorization": "Basic " + base64.b64encode(b"admin:admin password").decode()},
    )
    response = await client.post("/api/v1/setup", json={"username": "admin", "password": "admin password"})
    assert response.status == 201, await response.text()
    yield client
    await client.close()



async def storage_until(api, predicate, what: str, timeout: float = 180) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state = await (await api.get("/api/v1/storage")).json()
        if predicate(state):
            return state
        assert asyncio.get_running_loop().time() < deadline, f"{what}: {state}"
        await asyncio.sleep(0.3)


async def test_disks_lists_only_the_allowed_disks(api, clean_disks) -> None:
    rows = await (await api.get("/api/v1/storage/disks")).json()
    assert [r["serial"] for r in rows] == [d.serial for d in clean_disks[:3]]
    assert [r["slot"] for r in rows] == [1, 2, 3]
    assert all(r["status"] == "unused" for r in rows)
    assert all(r["capacity_bytes"] == clean_disks[0].size for r in rows)
    assert all(r["health"] == "passed" and r["temperature_c"] for r in rows)


async def test_disk_outside_the_allowed_set_or_with_data_is_refused(api, clean_disks, tmp_path) -> None:
    outside = clean_disks[3]
    response = await api.post(
        "/api/v1/storage/raid",
        json={"level": 1, "disks": [str(clean_disks[0].dev), str(outside.dev)], "confirm": True},
    )
    assert response.status == 422
    problem = await response.json(content_type=PROBLEM)
    assert problem["field"] == "disks" and "not among the allowed" in problem["detail"]
    assert guest.run(["wipefs", "--no-act", "--noheadings", outside.dev]).stdout == b""

    guest.run(["mkfs.ext4", "-q", "-F", clean_disks[1].dev])
    guest.settle()
    body = {"level": 1, "disks": [str(d.dev) for d in clean_disks[:2]], "confirm": True}
    response = await api.post("/api/v1/storage/raid", json=body)
    assert response.status == 422
    assert "ext4" in (await response.json(content_type=PROBLEM))["detail"]
    response = await api.post("/api/v1/storage/raid", json={**body, "force": True})
    assert response.status == 202
    assert (await guest.wait_job(api, (await response.json())["id"]))["state"] == "succeeded"
    state = await (await api.get("/api/v1/storage")).json()
    assert state["mounted"] and state["raid"]["level"] == 1
    # Close the app here (its recorder holds the new volume) and detach the mount,
    # so the disks' release after the test finds nothing busy.
    await api.close()
    guest.run(["umount", "--lazy", str(tmp_path / "state" / "volume")], check=False)


async def test_confirm_and_levels_are_validated(api) -> None:
    response = await api.post("/api/v1/storage/raid", json={"level": 1})
    assert response.status == 422 and (await response.json(content_type=PROBLEM))["field"] == "confirm"
    response = await api.post("/api/v1/storage/raid", json={"level": 3, "confirm": True})
    assert response.status == 422 and (await response.json(content_type=PROBLEM))["field"] == "level"
    response = await api.post("/api/v1/storage/raid", json={"level": 6, "confirm": True})
    assert response.status == 422 and "at least 4" in (await response.json(content_type=PROBLEM))["detail"]


async def test_encrypted_raid5_unlock_and_pulled_disk_is_replaced(api, clean_disks, tmp_path: Path) -> None:
    response = await api.post(
        "/api/v1/storage/raid",
        json={"level": 5, "encrypt": {"password": "s3cret pass"}, "confirm": True},
    )
    assert response.status == 202
    accepted = await response.json()
    assert len(accepted["recovery_key"]) == 71
    job = await guest.wait_job(api, accepted["id"])
    assert job["state"] == "succeeded", job
    assert "recovery_key" not in job  # shown once, in the 202 only
    state = await storage_until(api, lambda s: s["raid"]["status"] == "online", "online")
    assert state["encrypted"] and not state["locked"] and state["mounted"] and state["volume"] == "ready"
    assert state["raid"]["level"] == 5 and state["raid"]["raid_disks"] == 3

    # Lock, then a wrong password: 403 and still locked; the right one: unlocked.
    assert (await guest.wait_job(api, (await (await api.post("/api/v1/storage/lock")).json())["id"]))["state"] == "succeeded"
    response = await api.post("/api/v1/storage/unlock", json={"password": "nope"})
    assert response.status == 403
    assert (await (await api.get("/api/v1/storage")).json())["locked"] is True
    response = await api.post("/api/v1/storage/unlock", json={"password": "s3cret pass"})
    assert response.status == 200 and (await response.json())["volume"] == "ready"

    # Data written before the failure must read back bit-identical after the rebuild.
    blob = tmp_path / "state" / "volume" / "blob"
    data = os.urandom(8 * 1024 * 1024)
    with open(blob, "wb") as f:
        f.write(data)
        os.fsync(f.fileno())

    # Pull a disk for real (PCI hot-unplug): degraded, the member is missing.
    pulled = clean_disks[1]
    pci = pulled.pci_device
    (pci / "remove").write_text("1")
    state = await storage_until(api, lambda s: s["raid"]["status"] == "degraded", "degraded", 30)
    assert any(d["status"] == "missing" for d in state["raid"]["devices"])
    assert state["volume"] == "ready"
    # Put it back blank (a replacement): wipe happens on rescan's fresh disk.
    Path("/sys/bus/pci/rescan").write_text("1")
    guest.wait_for("disk back", lambda: _present(pulled))
    # It still carries the old superblock, so auto-replace must leave it alone...
    await asyncio.sleep(2)
    state = await (await api.get("/api/v1/storage")).json()
    assert state["raid"]["status"] == "degraded"
    # ...until it is blank.
    guest.run(["mdadm", "--zero-superblock", pulled.dev])
    guest.run(["wipefs", "--all", "--quiet", pulled.dev])
    guest.settle()
    guest.run(["udevadm", "trigger", "--action=change", "--settle", pulled.dev])
    await storage_until(api, lambda s: s["raid"]["status"] in ("syncing", "online"), "rebuild started", 60)
    state = await storage_until(
        api,
        lambda s: s["raid"]["status"] == "online"
        and all(d["status"] == "online" for d in s["raid"]["devices"]),
        "online again with every member in sync",
    )
    assert len(state["raid"]["devices"]) == 3
    guest.drop_caches()
    assert hashlib.sha256(blob.read_bytes()).digest() == hashlib.sha256(data).digest()


def _present(disk: guest.Disk) -> bool:
    try:
        return disk.dev.exists()
    except guest.Gone:
        return False
