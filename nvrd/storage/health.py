"""The storage health watch: storage alerts from successive snapshots, and SMART on
a cadence. Part of storage because it reads storage's state and runs smartctl
(through storage's SmartReader, which serializes runs per disk); indicators and the
API learn of its findings on the bus like everyone else.

- Every `storage.changed` snapshot is compared with the one before
  (`alerts.storage_events`); each event found is published and logged.
- Every `[health] smart_interval_minutes`, each allowed disk's SMART is read with
  `--nocheck=standby` (a sleeping disk is left asleep and its reading changes
  nothing), one disk after the other, and `alerts.smart_alerts` turns the change into
  `disk.alert` events: once per change, never once per reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nvrd.bus import Bus, Overrun
from nvrd.config import HealthConfig
from nvrd.storage.alerts import Alert, DiskWatch, Limits, smart_alerts, storage_events
from nvrd.storage.smart import TIMEOUT_S as SMART_TIMEOUT_S
from nvrd.storage.smart import SmartReader, SmartReport

log = logging.getLogger(__name__)

# Bad news is a warning in the system log; the rest is information.
WARNINGS = frozenset({"raid.degraded", "raid.failed", "disk.removed", "disk.failed", "storage.full", "storage.locked"})


def log_alert(topic: str, data: Mapping[str, Any]) -> None:
    bad = topic in WARNINGS or (topic == "disk.alert" and data.get("active"))
    detail = " ".join(f"{k}={v}" for k, v in data.items() if k != "message")
    log.log(logging.WARNING if bad else logging.INFO, "%s %s%s", topic, detail,
            f": {data['message']}" if data.get("message") else "")


class HealthWatch:
    def __init__(
        self,
        bus: Bus,
        config: HealthConfig,
        first_snapshot: Mapping[str, Any] | None,
        disks: Callable[[], Sequence[Path]] | None,
        smart: SmartReader | None = None,
    ) -> None:
        """`disks` lists the allowed disks (blocking; run in a thread); None in
        directory mode, where there is no SMART to read."""
        self.bus = bus
        self.config = config
        self.limits = Limits(config.temperature_limit_c, config.temperature_hysteresis_c)
        self.disks = disks
        self.smart = smart or SmartReader()
        self.last: Mapping[str, Any] | None = first_snapshot
        self.watches: dict[str, DiskWatch] = {}
        # Device → the slot it was last seen in, for events about a disk already gone.
        self.slot_of: dict[str, int] = {
            row["device"]: row["slot"] for row in (first_snapshot or {}).get("slots", []) if row.get("device")
        }
        self.readings: dict[str, SmartReport] = {}
        self.readings_taken = 0  # SMART readings so far (all disks)
        self._follow_task: asyncio.Task[None] | None = None
        self._smart_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        subscription = self.bus.subscribe(["storage.changed"])
        if self.last is not None:
            self._publish(storage_events(None, self.last))  # standing conditions at start
        self._follow_task = asyncio.create_task(self._follow(subscription), name="health-storage")
        if self.disks is not None:
            self._smart_task = asyncio.create_task(self._smart_loop(), name="health-smart")

    async def close(self) -> None:
        if self._follow_task is not None:
            self._follow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow_task
        if self._smart_task is not None:
            # Let a smartctl run finish rather than cancel it: a cancelled run leaves
            # the process behind, reporting to a loop that is gone.
            self._stopping.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._smart_task), SMART_TIMEOUT_S + 5)
            except TimeoutError:
                self._smart_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._smart_task

    def _publish(self, alerts: Sequence[Alert]) -> None:
        for topic, data in alerts:
            log_alert(topic, data)
            self.bus.publish(topic, data)

    async def _follow(self, subscription: Any) -> None:
        while True:
            try:
                async for event in subscription:
                    self._publish(self._with_slots(storage_events(self.last, event.data)))
                    self.last = event.data
                    self.slot_of.update(
                        {row["device"]: row["slot"] for row in event.data.get("slots", []) if row.get("device")}
                    )
                return  # the bus closed: the daemon is stopping
            except Overrun:
                # Events between are lost; the next snapshot is compared with the
                # last one seen, so a lasting change is still reported once.
                log.warning("health: fell behind the bus")
                subscription = self.bus.subscribe(["storage.changed"])

    def _with_slots(self, alerts: Sequence[Alert]) -> list[Alert]:
        """A disk that left its slot before md noticed it failing has no slot in the
        snapshots the failure is seen between: name the slot it was last seen in."""
        return [
            (topic, {**data, "slot": self.slot_of.get(data["device"])})
            if data.get("slot") is None and "slot" in data and data.get("device") else (topic, data)
            for topic, data in alerts
        ]

    async def _smart_loop(self) -> None:
        interval = self.config.smart_interval_minutes * 60
        while not self._stopping.is_set():
            try:
                await self.check_smart()
            except Exception:
                log.exception("SMART check failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)

    async def check_smart(self) -> None:
        """Read every allowed disk once, one after the other (a sick disk can take
        a minute; the others wait rather than pile up smartctl runs)."""
        assert self.disks is not None
        for device in await asyncio.to_thread(self.disks):
            if self._stopping.is_set():
                return
            report = await self.smart.read(device)
            name = str(device)
            self.readings[name] = report
            self.readings_taken += 1
            state, alerts = smart_alerts(name, self.watches.get(name), report, self.limits)
            self.watches[name] = state
            self._publish(alerts)
