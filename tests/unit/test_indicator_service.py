"""The indicator service and the health watch, wired through a real bus.

The LED backend here records what it is told (a stand-in with the backends'
interface; the real ones are tested in test_indicator_backends.py and the vm tier).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nvrd.bus import Bus
from nvrd.config import HealthConfig
from nvrd.indicators.buzzer import Alarm
from nvrd.indicators.leds import DriveLed, ProductLed
from nvrd.indicators.service import IndicatorService
from nvrd.storage.health import HealthWatch
from nvrd.storage.smart import Health, SmartReport


class RecordingLeds:
    name = "recording"

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.calls: list[tuple[Any, ...]] = []

    @property
    def available(self) -> bool:
        return True

    async def show_drive(self, slot: int, device: str | None, led: DriveLed) -> None:
        self.calls.append((slot, device, led))

    async def show_product(self, led: ProductLed) -> None:
        self.calls.append(("product", led))


def snap(members: list[tuple[str | None, str]], status: str, slots: dict[int, str | None]) -> dict[str, Any]:
    return {
        "mode": "managed", "volume": "ready", "reason": None, "locked": False, "total_bytes": 100, "free_bytes": 50,
        "raid": {"level": 1, "status": status, "sync_action": "idle", "sync_progress": None,
                 "devices": [{"device": d, "role": i, "status": s} for i, (d, s) in enumerate(members)]},
        "slots": [{"slot": k, "device": v} for k, v in slots.items()],
    }


HEALTHY = snap([("/dev/a", "online"), ("/dev/b", "online")], "online", {1: "/dev/a", 2: "/dev/b"})
PULLED = snap([(None, "missing"), ("/dev/b", "online")], "degraded", {1: None, 2: "/dev/b"})


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_pull_turns_leds_and_sounds_the_alarm() -> None:
    bus, leds = Bus(), RecordingLeds()
    alarm = Alarm(None)
    service = IndicatorService(bus, leds, alarm, lambda: HEALTHY, led_slots=[1, 2, 3])
    watch = HealthWatch(bus, HealthConfig(), HEALTHY, disks=None)
    await service.start()
    watch.start()
    assert leds.calls == [(1, "/dev/a", DriveLed.ONLINE), (2, "/dev/b", DriveLed.ONLINE), (3, None, DriveLed.OFF),
                          ("product", ProductLed.STARTING)]
    await service.mark_started()
    assert leds.calls[-1] == ("product", ProductLed.OK)
    leds.calls.clear()
    events = bus.subscribe()
    bus.publish("storage.changed", PULLED)
    await settle()
    # Only what changed is written.
    assert leds.calls == [(1, None, DriveLed.FAILED), (2, "/dev/b", DriveLed.DEGRADED), ("product", ProductLed.ATTENTION)]
    topics = []
    while not events._queue.empty():
        topics.append((await events.get()).topic)
    assert topics == ["storage.changed", "disk.removed", "disk.failed", "raid.degraded"]
    assert alarm.reason == "the drive in slot 1 has failed"
    assert service.status()[0].value == "degraded"
    # Healthy again: the alarm ends by itself.
    bus.publish("storage.changed", HEALTHY)
    await settle()
    assert alarm.reason is None and service.led_of(1) == "green"
    await watch.close()
    await service.close()
    # Stopping (a restart or an upgrade): amber until the next daemon is up.
    assert leds.calls[-1] == ("product", ProductLed.STARTING)


async def test_locate_overrides_a_slot_for_a_while() -> None:
    bus, leds = Bus(), RecordingLeds()
    service = IndicatorService(bus, leds, Alarm(None), lambda: HEALTHY)
    await service.start()
    leds.calls.clear()
    await service.locate(2, 1)
    assert service.led_of(2) == "locate" and service.locating(2)
    await asyncio.sleep(1.2)
    assert service.led_of(2) == "green" and not service.locating(2)
    assert leds.calls == [(2, "/dev/b", DriveLed.LOCATE), (2, "/dev/b", DriveLed.ONLINE)]
    await service.close()


class FakeSmart:
    """Readings in turn per device (the real reader runs smartctl: vm tier)."""

    def __init__(self, readings: dict[str, list[SmartReport]]) -> None:
        self.readings = readings

    async def read(self, device: Any) -> SmartReport:
        return self.readings[str(device)].pop(0)


async def test_smart_rounds_alert_once() -> None:
    bus = Bus()
    fine = SmartReport(Health.PASSED, temperature_c=40, critical_warning=0)
    warned = SmartReport(Health.FAILED, "x", temperature_c=40, critical_warning=4, exit_status=8)
    smart = FakeSmart({"/dev/a": [fine, warned, warned, fine], "/dev/b": [fine] * 4})
    watch = HealthWatch(bus, HealthConfig(), None, disks=lambda: [Path("/dev/a"), Path("/dev/b")], smart=smart)  # type: ignore[arg-type]
    alerts = bus.subscribe(["disk.alert"])
    for _ in range(4):
        await watch.check_smart()
    found = []
    while not alerts._queue.empty():
        found.append((await alerts.get()).data)
    assert [(a["device"], a["key"], a["active"]) for a in found] == [
        ("/dev/a", "critical_warning", True), ("/dev/a", "critical_warning", False)]
    assert watch.readings_taken == 8


async def test_a_disk_gone_before_md_noticed_is_named_with_its_slot() -> None:
    bus = Bus()
    watch = HealthWatch(bus, HealthConfig(), HEALTHY, disks=None)
    watch.start()
    events = bus.subscribe(["disk.failed"])
    unnoticed = snap([("/dev/a", "online"), ("/dev/b", "online")], "online", {1: None, 2: "/dev/b"})
    bus.publish("storage.changed", unnoticed)
    bus.publish("storage.changed", PULLED)
    await settle()
    failed = await events.get()
    assert failed.data["device"] == "/dev/a" and failed.data["slot"] == 1
    await watch.close()
