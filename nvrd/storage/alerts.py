"""Storage alerts a VMS can map, derived by pure functions:

- `storage_events(before, after)`: the events between two successive storage
  snapshots (`raid.degraded`, `raid.failed`, `raid.rebuild_started`,
  `raid.rebuild_progress` every 10 %, `raid.rebuild_finished`, `disk.removed`,
  `disk.added`, `disk.failed`, `storage.full`, `storage.locked`);
- `smart_alerts(previous, report, limits)`: the `disk.alert`s of one SMART reading
  against the last one (health failed, a pre-fail attribute at its threshold,
  temperature over the limit with hysteresis, a rising reallocated or pending count,
  an NVMe critical warning), each raised once per change and cleared once.

The health watch (nvrd.storage.health) feeds them and publishes what they return.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nvrd.storage.smart import BIT_DISK_FAILING, Health, SmartReport

Alert = tuple[str, dict[str, Any]]  # (topic, data)

# Below this share of free space the volume is full: retention keeps a free-space
# floor, so reaching this means it cannot keep up (or nothing is left to delete).
FULL_FRACTION = 0.01
# Rebuild actions: md rebuilds a member (recover) or makes a new array consistent
# (resync). check and repair are scrubs, not rebuilds.
REBUILD_ACTIONS = frozenset({"recover", "resync"})
WORKING = frozenset({"online", "rebuilding", "spare"})


def _members(snapshot: Mapping[str, Any] | None) -> dict[str, str]:
    raid = (snapshot or {}).get("raid") or {}
    return {d["device"]: d["status"] for d in raid.get("devices", []) if d.get("device")}


def disks_in_slots(snapshot: Mapping[str, Any] | None) -> dict[str, int]:
    """Device → slot, for the slots of the storage snapshot that hold a disk."""
    return {s["device"]: int(s["slot"]) for s in (snapshot or {}).get("slots", []) if s.get("device")}


def lacks_member(raid: Mapping[str, Any] | None) -> bool:
    """A member is missing or faulty: the array has lost a disk's worth of redundancy."""
    return raid is not None and any(d["status"] in ("missing", "faulty") for d in raid.get("devices", []))


def _rebuilding(raid: Mapping[str, Any] | None) -> bool:
    """A rebuild runs: md's own transient `recover` right after a failure, with no
    member to rebuild onto, does not count."""
    if raid is None or raid.get("sync_action") not in REBUILD_ACTIONS:
        return False
    return raid["sync_action"] == "resync" or any(d["status"] == "rebuilding" for d in raid.get("devices", []))


def _full(snapshot: Mapping[str, Any] | None) -> bool:
    if not snapshot:
        return False
    total, free = snapshot.get("total_bytes"), snapshot.get("free_bytes")
    return bool(total) and free is not None and free < total * FULL_FRACTION


def storage_events(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[Alert]:
    """What changed between two snapshots, as (topic, data). `before` is None at start:
    then only standing conditions (failed, degraded, full, locked) are reported."""
    events: list[Alert] = []
    raid_then = (before or {}).get("raid")
    raid_now = after.get("raid")
    summary = {"level": raid_now.get("level"), "status": raid_now.get("status")} if raid_now else {}

    present_then, present_now = disks_in_slots(before), disks_in_slots(after)
    if before is not None:
        for device, slot in present_then.items():
            if device not in present_now:
                events.append(("disk.removed", {"device": device, "slot": slot}))
        for device, slot in present_now.items():
            if device not in present_then:
                events.append(("disk.added", {"device": device, "slot": slot}))

    members_then, members_now = _members(before), _members(after)
    for device, status in members_then.items():
        if status not in WORKING:
            continue
        # Its disk left the machine while it was a working member (md may notice
        # only at its next I/O, seconds later: that later snapshot is no new failure),
        # or md marked it faulty.
        pulled = device in present_then and device not in present_now
        if pulled or members_now.get(device) == "faulty":
            events.append(("disk.failed", {"device": device, "slot": present_then.get(device), **summary}))

    if raid_now is not None:
        failed_then = raid_then is not None and raid_then.get("status") == "failed"
        if raid_now.get("status") == "failed" and not failed_then:
            events.append(("raid.failed", summary))
        elif lacks_member(raid_now) and not lacks_member(raid_then) and raid_now.get("status") != "failed":
            devices = raid_now["devices"]
            events.append(("raid.degraded", {
                **summary,
                "missing_roles": [d["role"] for d in devices if d["status"] == "missing"],
                "faulty": [d["device"] for d in devices if d["status"] == "faulty"],
            }))

        progress = raid_now.get("sync_progress")
        if _rebuilding(raid_now) and not _rebuilding(raid_then):
            events.append(("raid.rebuild_started", {**summary, "action": raid_now.get("sync_action")}))
        elif _rebuilding(raid_now) and progress is not None:
            done_then = (raid_then or {}).get("sync_progress") or 0.0
            if math.floor(progress * 10) > math.floor(done_then * 10):
                percent = math.floor(progress * 10) * 10
                events.append(("raid.rebuild_progress", {**summary, "percent": percent}))
        if _rebuilding(raid_then) and not _rebuilding(raid_now) and before is not None:
            events.append(("raid.rebuild_finished", {**summary, "complete": raid_now.get("status") == "online"}))

    if _full(after) and not _full(before):
        events.append(("storage.full", {"free_bytes": after.get("free_bytes"), "total_bytes": after.get("total_bytes")}))
    if after.get("locked") and not (before or {}).get("locked"):
        events.append(("storage.locked", {"reason": after.get("reason")}))
    return events


# --- SMART --------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    temperature_c: int = 60
    hysteresis_c: int = 5


@dataclass(frozen=True)
class DiskWatch:
    """What the last awake reading of a disk raised, to fire each alert once."""

    active: Mapping[str, Any] = field(default_factory=dict)  # alert key → its value
    reallocated: int | None = None
    pending: int | None = None


def smart_alerts(
    device: str, previous: DiskWatch | None, report: SmartReport, limits: Limits
) -> tuple[DiskWatch, list[Alert]]:
    """The `disk.alert`s of `report` against the disk's last state, and its new
    state. Each alert has `device`, `attribute`, `value`, `active` (false: cleared)
    and a `message`. A standby or unreadable reading changes nothing."""
    previous = previous or DiskWatch()
    if report.standby or (report.health is Health.UNKNOWN and report.temperature_c is None):
        return previous, []
    conditions: dict[str, tuple[Any, str]] = {}
    # smartctl's overall verdict ("disk failing", exit bit 3). On NVMe that verdict is
    # the critical warning itself, reported below as one alert rather than two.
    if (report.exit_status or 0) & BIT_DISK_FAILING and not report.critical_warning:
        conditions["health"] = ("failed", "SMART overall-health self-assessment failed")
    for attribute in report.prefail_attributes:
        if attribute.failing_now:
            conditions[f"prefail:{attribute.id}"] = (
                attribute.value,
                f"pre-fail attribute {attribute.name} ({attribute.id}) at {attribute.value}, threshold {attribute.threshold}",
            )
    if report.critical_warning:
        conditions["critical_warning"] = (report.critical_warning, f"NVMe critical warning 0x{report.critical_warning:02x}")
    temperature = report.temperature_c
    hot_before = "temperature" in previous.active
    if temperature is not None and (
        temperature > limits.temperature_c
        or (hot_before and temperature > limits.temperature_c - limits.hysteresis_c)
    ):
        conditions["temperature"] = (temperature, f"temperature {temperature} °C over the limit of {limits.temperature_c} °C")

    alerts: list[Alert] = []
    for key, (value, message) in conditions.items():
        # A condition is raised once; only a different value of a coded condition
        # (other warning bits, another failed attribute value) raises it again.
        if key not in previous.active or (key != "temperature" and previous.active[key] != value):
            alerts.append(("disk.alert", {"device": device, "attribute": key.split(":")[0],
                                          "key": key, "value": value, "active": True, "message": message}))
    for key, value in previous.active.items():
        if key not in conditions:
            now = temperature if key == "temperature" else None
            alerts.append(("disk.alert", {"device": device, "attribute": key.split(":")[0], "key": key,
                                          "value": now, "active": False, "message": f"{key} is back to normal"}))
    for attribute, before, now in (
        ("reallocated_sectors", previous.reallocated, report.reallocated_sectors),
        ("pending_sectors", previous.pending, report.pending_sectors),
    ):
        if now is not None and now > (before or 0):
            alerts.append(("disk.alert", {"device": device, "attribute": attribute, "key": attribute, "value": now,
                                          "active": True, "message": f"{attribute.replace('_', ' ')} rose to {now}"}))
    state = DiskWatch(
        active={key: value for key, (value, _) in conditions.items()},
        reallocated=report.reallocated_sectors if report.reallocated_sectors is not None else previous.reallocated,
        pending=report.pending_sectors if report.pending_sectors is not None else previous.pending,
    )
    return state, alerts
