"""Drive LEDs, the buzzer and SMART alerts on the real kernel.

The guest's keyboard LEDs stand in for a drive bay's: the PS/2 keyboard's three
(input0::numlock, capslock, scrolllock) are slot 1's green, amber and red, the USB
keyboard's (tests/vm/run adds it) are slot 2's. They are real LED class devices, so
brightness, the timer trigger and its delays are the kernel's own. The buzzer is the
guest's PC speaker (pcspkr, evdev). A drive fails by PCI hot-unplug; a SMART fault is
QEMU's NVMe critical warning, set over QMP.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest

import guest
from nvrd.accounts import ScryptCost
from nvrd.api.app import make_app
from nvrd.api.keys import BUS, HEALTH
from nvrd.config import (
    Config, DaemonConfig, EncryptionConfig, HealthConfig, HttpConfig, IndicatorsConfig, LedNames,
    StorageConfig,
)
from test_smart import QMP_DIR, set_critical_warning

LEDS = Path("/sys/class/leds")
ADMIN = {"Authorization": "Basic " + base64.b64encode(b"admin:admin password").decode()}


def keyboards() -> tuple[str, str]:
    """The PS/2 keyboard's LED prefix (input0) and the USB keyboard's."""
    prefixes = sorted({p.name.split("::")[0] for p in LEDS.glob("input*::numlock")}, key=lambda n: int(n[5:]))
    assert len(prefixes) >= 2, f"need two keyboards with LEDs, found {prefixes}"
    return prefixes[0], prefixes[1]


def slot_leds() -> dict[str, LedNames]:
    first, second = keyboards()
    return {
        str(slot): LedNames(green=f"{kbd}::numlock", amber=f"{kbd}::capslock", red=f"{kbd}::scrolllock")
        for slot, kbd in ((1, first), (2, second))
    }


def shown(name: str) -> str:
    """What an LED does, from sysfs: on, off, or blink:<on ms>/<off ms>."""
    path = LEDS / name
    trigger = path.joinpath("trigger").read_text()
    if "[timer]" in trigger:
        return f"blink:{path.joinpath('delay_on').read_text().strip()}/{path.joinpath('delay_off').read_text().strip()}"
    assert "[none]" in trigger, trigger
    return "on" if int(path.joinpath("brightness").read_text()) else "off"


def bay(leds: dict[str, LedNames], slot: int) -> tuple[str, str, str]:
    names = leds[str(slot)]
    return shown(names.green or ""), shown(names.amber or ""), shown(names.red or "")


GREEN = ("on", "off", "off")
BLINKING = ("blink:500/500", "off", "off")
AMBER = ("off", "on", "off")
RED = ("off", "off", "on")


def by_path(disk: guest.Disk) -> str:
    target = disk.dev.resolve()
    for link in sorted(Path("/dev/disk/by-path").iterdir()):
        if "-part" not in link.name and link.resolve() == target:
            return str(link)
    raise AssertionError(f"no by-path link for {disk}")


def config(tmp_path: Path, disks: list[guest.Disk], leds: dict[str, LedNames], smart_minutes: float = 10) -> Config:
    return Config(
        daemon=DaemonConfig(state_dir=tmp_path / "state"),
        storage=StorageConfig(
            mode="managed", disks=[f"/dev/disk/by-id/*{d.serial}" for d in disks], auto_replace=True,
            slots={str(i + 1): by_path(d) for i, d in enumerate(disks)},
            encryption=EncryptionConfig(pbkdf="pbkdf2", pbkdf_iterations=1000),
        ),
        http=HttpConfig(listen="127.0.0.1", http_port=0, https_port=0),
        indicators=IndicatorsConfig(backend="sysfs-leds", slots=leds, buzzer=True),
        health=HealthConfig(smart_interval_minutes=smart_minutes),
    )


async def client_for(aiohttp_client, cfg: Config):
    client = await aiohttp_client(make_app(cfg, scrypt=ScryptCost(n=16, r=8, p=1)), headers=ADMIN)
    response = await client.post("/api/v1/setup", json={"username": "admin", "password": "admin password"})
    assert response.status == 201, await response.text()
    return client


async def until(what: str, predicate, timeout: float = 120) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.1)


async def get(api, path: str) -> Any:
    response = await api.get(path)
    assert response.status == 200, await response.text()
    return await response.json()


@pytest.fixture
async def leds_api(clean_disks: list[guest.Disk], aiohttp_client, tmp_path: Path):
    # clean_disks first, so it is torn down after the app (pytest reverses set-up order).
    Path("/proc/sys/dev/raid/speed_limit_min").write_text("500000\n")
    leds = slot_leds()
    client = await client_for(aiohttp_client, config(tmp_path, clean_disks[:2], leds))
    yield client, leds
    await client.close()
    guest.run(["umount", "--lazy", str(tmp_path / "state" / "volume")], check=False)
    Path("/sys/bus/pci/rescan").write_text("1")
    guest.wait_for("every disk back", lambda: all(_present(d) for d in clean_disks))


async def test_drive_leds_follow_a_failure_and_the_rebuild(leds_api, clean_disks: list[guest.Disk]) -> None:
    api, leds = leds_api
    # Before any array: both bays hold disks that are in no volume: off.
    assert bay(leds, 1) == bay(leds, 2) == ("off", "off", "off")
    response = await api.post("/api/v1/storage/raid", json={"level": 1, "disks": [str(d.dev) for d in clean_disks[:2]], "confirm": True})
    assert response.status == 202
    await until("online, both bays green", lambda: bay(leds, 1) == GREEN and bay(leds, 2) == GREEN, 180)
    rows = await get(api, "/api/v1/storage/disks")
    assert [(r["slot"], r["led"]) for r in rows] == [(1, "green"), (2, "green")]
    status = await get(api, "/api/v1/status")
    assert status["status"] == "ok" and status["leds"]["product"] == "green"

    # Pull slot 1's disk (PCI hot-unplug): red there, amber on the survivor.
    pulled = clean_disks[0]
    (pulled.pci_device / "remove").write_text("1")
    await until("slot 1 red, slot 2 amber", lambda: bay(leds, 1) == RED and bay(leds, 2) == AMBER, 30)
    rows = await get(api, "/api/v1/storage/disks")
    assert [(r["slot"], r["led"]) for r in rows if r["slot"]] == [(2, "amber")]
    status = await get(api, "/api/v1/status")
    assert status["status"] == "degraded" and status["leds"]["slots"] == {"1": "red", "2": "amber"}
    # The PC speaker sounds for the failed drive until silenced.
    assert status["buzzer"] == {"available": True, "sounding": True, "alarm": "the drive in slot 1 has failed", "silenced": False}
    silenced = await (await api.post("/api/v1/system/buzzer/silence")).json()
    assert silenced["was_sounding"] is True
    assert (await get(api, "/api/v1/status"))["buzzer"]["sounding"] is False
    # It stays red while the bay is empty (the array still lacks that member).
    await asyncio.sleep(1)
    assert bay(leds, 1) == RED

    # Locate: the bay blinks amber fast, then goes back.
    response = await api.post("/api/v1/storage/disks/2/locate", json={"seconds": 2})
    assert (await response.json())["led"] == "locate"
    assert bay(leds, 2) == ("off", "blink:150/150", "off")
    await until("locate over", lambda: bay(leds, 2) == AMBER, 10)

    # A disk goes back in: the bay is no longer red (the disk is in no array yet).
    Path("/sys/bus/pci/rescan").write_text("1")
    guest.wait_for("disk back", lambda: _present(pulled))
    await until("slot 1 off with a disk in it", lambda: bay(leds, 1) == ("off", "off", "off"), 30)
    # Made blank, it replaces the missing member; slow the rebuild down to see it.
    md = Path("/sys/block") / Path("/dev/md/nvrd").resolve().name / "md"
    md.joinpath("sync_speed_min").write_text("1000\n")
    md.joinpath("sync_speed_max").write_text("4000\n")
    guest.run(["mdadm", "--zero-superblock", pulled.dev])
    guest.run(["wipefs", "--all", "--quiet", pulled.dev])
    guest.run(["udevadm", "trigger", "--action=change", "--settle", pulled.dev])
    await until("both bays blink green while rebuilding", lambda: bay(leds, 1) == BLINKING and bay(leds, 2) == BLINKING, 60)
    assert (await get(api, "/api/v1/status"))["buzzer"]["alarm"] is not None  # not healthy yet
    md.joinpath("sync_speed_min").write_text("system\n")
    md.joinpath("sync_speed_max").write_text("system\n")
    await until("rebuilt: both green", lambda: bay(leds, 1) == GREEN and bay(leds, 2) == GREEN, 180)
    status = await get(api, "/api/v1/status")
    assert status["status"] == "ok" and status["buzzer"]["alarm"] is None


async def test_nvme_critical_warning_raises_disk_alert_once(vm_disks: list[guest.Disk], aiohttp_client, tmp_path: Path) -> None:
    if not (QMP_DIR / "ready").exists():
        pytest.skip("no QMP relay on the host")
    warned = vm_disks[1]
    # SMART every 3 s, so the test sees several readings in seconds.
    api = await client_for(aiohttp_client, config(tmp_path, vm_disks[:2], {}, smart_minutes=0.05))
    subscription = api.app[BUS].subscribe(["disk.alert"])
    try:
        set_critical_warning(warned, 0x04)
        first = await asyncio.wait_for(subscription.get(), 60)
        assert first.data["device"] == str(warned.dev)
        assert first.data["attribute"] == "critical_warning" and first.data["value"] == 4 and first.data["active"]
        # Several more readings (every 3 s) of the same warning raise nothing more.
        health = api.app[HEALTH]
        readings = health.readings_taken
        await until("three more SMART rounds", lambda: health.readings_taken >= readings + 3 * 2, 60)
        with pytest.raises(TimeoutError):
            more = await asyncio.wait_for(subscription.get(), 0.1)
            raise AssertionError(f"a second alert: {more}")
        set_critical_warning(warned, 0)
        cleared = await asyncio.wait_for(subscription.get(), 60)
        assert cleared.data["key"] == "critical_warning" and cleared.data["active"] is False
    finally:
        set_critical_warning(warned, 0)
        subscription.close()
        await api.close()


def _present(disk: guest.Disk) -> bool:
    try:
        return disk.dev.exists()
    except guest.Gone:
        return False


async def test_real_ledctl_without_an_enclosure_drives_nothing(vm_disks: list[guest.Disk]) -> None:
    """ledmon's own ledctl (DEBS_VM installs it) on QEMU NVMe: no SES-2, NPEM or VMD
    behind the disks (the guest's AHCI controller may be listed, for SGPIO). The
    backend says so, runs no pattern, and nothing raises."""
    from nvrd.indicators.backends import Ledctl
    from nvrd.indicators.leds import DriveLed

    backend = Ledctl()
    if backend.ledctl is None:
        pytest.fail("ledctl is missing: make deps-vm installs ledmon")
    await backend.start()
    print("ledctl controllers:", backend.controllers, backend.problems)
    await backend.show_drive(1, str(vm_disks[0].dev), DriveLed.FAILED)
    if backend.available:
        assert backend.problems == [f"slot 1: {vm_disks[0].dev} is behind no LED controller ledctl knows"]
    else:
        assert backend.problems == ["ledctl finds no enclosure LED controller (SES-2, SGPIO, NPEM, VMD)"]
