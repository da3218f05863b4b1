"""The indicator service: one owner of what the LEDs and the buzzer show.

It follows the bus (no polling): each `storage.changed` snapshot gives every slot's
LED (`leds.drive_leds`) and the product status; `raid.failed` and `disk.failed`
sound the buzzer. Only the slots whose state changed are written to the backend.
A locate request overrides one slot's state for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from nvrd.bus import Bus, Event, Overrun
from nvrd.errors import NotFound
from nvrd.indicators.backends import LedBackend
from nvrd.indicators.buzzer import Alarm
from nvrd.indicators.leds import (
    DriveLed, ProductLed, ProductState, drive_leds, product_led, product_status, pulled_slots,
    remember_members,
)

log = logging.getLogger(__name__)

TOPICS = ("storage.changed", "volume.changed", "raid.failed", "disk.failed")
MAX_LOCATE_S = 3600


class IndicatorService:
    def __init__(
        self,
        bus: Bus,
        backend: LedBackend,
        alarm: Alarm,
        snapshot: Callable[[], Mapping[str, Any] | None],
        led_slots: Iterable[int] = (),
    ) -> None:
        """`snapshot` reads the volume's state now (used at start and when only
        `volume.changed` arrives, as in directory mode); `led_slots` are the slots
        that have LEDs configured, locatable even while empty."""
        self.bus = bus
        self.backend = backend
        self.alarm = alarm
        self._read_snapshot = snapshot
        self.led_slots = frozenset(led_slots)
        self.snapshot: Mapping[str, Any] | None = None
        self.members: dict[str, int] = {}  # member device → the slot it was last seen in
        self.pulled: frozenset[int] = frozenset()
        self.started = False
        self.leds: dict[int, DriveLed] = {}  # what each slot shows now
        self.product: ProductLed | None = None
        self._locating: dict[int, asyncio.TimerHandle] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        start = getattr(self.backend, "start", None)
        if start is not None:
            await start()
        subscription = self.bus.subscribe(TOPICS)
        await self._take(self._read_snapshot())
        self._task = asyncio.create_task(self._follow(subscription), name="indicators")

    async def mark_started(self) -> None:
        """The daemon is up: the product LED leaves `starting`."""
        self.started = True
        if self.snapshot is None or self.snapshot.get("mode") != "managed":
            await self._take(self._read_snapshot())
        else:
            await self._apply()

    async def close(self) -> None:
        for handle in self._locating.values():
            handle.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Stopping is a restart or a package upgrade more often than a power-off:
        # the product LED goes amber ("starting or upgrading") until the next
        # daemon is up. The drive LEDs keep showing the disks, which do not change.
        self.started = False
        try:
            await self._apply()
        except Exception:  # noqa: BLE001 - never stands in the way of stopping
            log.exception("could not show the product LED as stopping")
        await self.alarm.close()

    async def _follow(self, subscription: Any) -> None:
        while True:
            try:
                async for event in subscription:
                    await self._handle(event)
                return  # the bus closed: the daemon is stopping
            except Overrun:
                # Fell behind (a stuck backend): start over from the state now.
                log.warning("indicators: fell behind the bus; re-reading the storage state")
                subscription = self.bus.subscribe(TOPICS)
                await self._take(self._read_snapshot())

    async def _handle(self, event: Event) -> None:
        try:
            if event.topic == "storage.changed":
                await self._take(event.data)
            elif event.topic == "volume.changed":
                if (self.snapshot or {}).get("mode") != "managed":
                    await self._take(self._read_snapshot())
            else:  # raid.failed, disk.failed
                slot = event.data.get("slot")
                if event.topic == "raid.failed":
                    self.alarm.raise_("the RAID has failed")
                else:
                    self.alarm.raise_(f"the drive in slot {slot} has failed" if slot else "a drive has failed")
        except Exception:
            log.exception("indicators: applying %s failed", event.topic)

    async def _take(self, snapshot: Mapping[str, Any] | None) -> None:
        if snapshot is None:  # no volume yet (start-up)
            await self._apply()
            return
        self.members = remember_members(self.members, snapshot)
        self.pulled = pulled_slots(self.members, snapshot)
        self.snapshot = snapshot
        raid = snapshot.get("raid")
        if self.alarm.reason and raid is not None and raid.get("status") == "online":
            log.info("buzzer: storage is healthy again")
            self.alarm.clear()
        await self._apply()

    # --- what is shown -----------------------------------------------------------

    def wanted(self) -> dict[int, DriveLed]:
        leds = drive_leds(self.snapshot or {}, self.pulled)
        for slot in self.led_slots:
            leds.setdefault(slot, DriveLed.OFF)
        for slot in self._locating:
            leds[slot] = DriveLed.LOCATE
        return leds

    def device_in(self, slot: int) -> str | None:
        for row in (self.snapshot or {}).get("slots", []):
            if row["slot"] == slot:
                return row.get("device")
        return None

    async def _apply(self) -> None:
        async with self._lock:
            for slot, led in sorted(self.wanted().items()):
                if self.leds.get(slot) != led:
                    log.debug("slot %s LED: %s", slot, led.value)
                    await self.backend.show_drive(slot, self.device_in(slot), led)
                    self.leds[slot] = led
            product = product_led(self.status()[0])
            if product != self.product:
                await self.backend.show_product(product)
                self.product = product

    def status(self) -> tuple[ProductState, str | None]:
        return product_status(self.started, self.snapshot, self.pulled)

    def led_of(self, slot: int | None) -> str | None:
        return self.leds[slot].value if slot in self.leds else None

    # --- requests ----------------------------------------------------------------

    async def locate(self, slot: int, seconds: int) -> None:
        """Blink `slot`'s locate pattern for `seconds` (0 ends it now)."""
        if slot not in self.wanted() and slot not in self._locating:
            raise NotFound(f"there is no slot {slot}", slot=slot)
        if (handle := self._locating.pop(slot, None)) is not None:
            handle.cancel()
        if seconds > 0:
            loop = asyncio.get_running_loop()
            self._locating[slot] = loop.call_later(min(seconds, MAX_LOCATE_S), self._end_locate, slot)
        await self._apply()

    def _end_locate(self, slot: int) -> None:
        self._locating.pop(slot, None)
        task = asyncio.ensure_future(self._apply())
        task.add_done_callback(_log_failure)

    def locating(self, slot: int) -> bool:
        return slot in self._locating


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("indicators: ending a locate failed: %s", task.exception())
