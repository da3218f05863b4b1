"""What the LEDs show: a pure function of the storage snapshot.

The reference recorder's table (manual, Specifications > LED indicators):
green = drive online; blinking green = the RAID is syncing (no redundancy yet);
amber = this drive is fine but another is broken (no redundancy); red = this drive is
broken; all red = the RAID has failed, nothing records; off = no drive.

`drive_leds(snapshot, pulled)` gives each slot its state. `pulled` is the one thing
the snapshot cannot say: which slots held an array member whose disk has since been
pulled (the disk, and so its slot, is gone from the kernel). `remember_pulled()`
carries that from one snapshot to the next, so that slot stays red until a disk is
put in it. Both are pure, so the whole table is unit-tested.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class DriveLed(StrEnum):
    """One drive bay's LED state; the value is what the API shows as `led`."""

    OFF = "off"  # no drive, or a drive that is not part of the volume
    ONLINE = "green"
    SYNCING = "green-blinking"  # resync or rebuild: recording works, no redundancy yet
    DEGRADED = "amber"  # this drive is fine, another one is broken
    FAILED = "red"  # this drive is broken (faulty, or pulled while a member)
    ARRAY_FAILED = "red-array-failed"  # all red: the RAID has failed (shown as red)
    SPARE = "spare"  # a hot spare, waiting
    LOCATE = "locate"  # asked for: find this bay


class ProductState(StrEnum):
    STARTING = "starting"
    OK = "ok"
    DEGRADED = "degraded"  # recording, but without redundancy
    FAILED = "failed"  # not recording to the volume


class ProductLed(StrEnum):
    STARTING = "amber"
    OK = "green"
    ATTENTION = "amber-blinking"


# Member statuses (nvrd.storage.md.MemberStatus values) that make a slot part of the array.
_MEMBER = frozenset({"online", "spare", "rebuilding", "faulty"})


def slot_members(snapshot: Mapping[str, Any]) -> dict[int, str | None]:
    """slot → array member status of the disk in it ("unused" when not in the
    array), None for an empty slot. Slots come from `snapshot["slots"]`."""
    raid = snapshot.get("raid") or {}
    by_device = {d["device"]: d["status"] for d in raid.get("devices", []) if d.get("device")}
    return {
        int(s["slot"]): (by_device.get(s["device"], "unused") if s.get("device") else None)
        for s in snapshot.get("slots", [])
    }


def remember_pulled(previous: frozenset[int], before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> frozenset[int]:
    """The slots to keep red: those whose member disk was pulled, until a disk is in
    the slot again or the array no longer lacks a member (rebuilt elsewhere, or
    made anew)."""
    now = slot_members(after)
    raid = after.get("raid")
    lacking = raid is not None and any(d["status"] in ("missing", "faulty") for d in raid.get("devices", []))
    if raid is not None and raid.get("status") == "failed":
        lacking = True
    if not lacking:
        return frozenset()
    kept = {slot for slot in previous if now.get(slot) is None}
    if before is not None:
        then = slot_members(before)
        kept |= {slot for slot, status in then.items() if status in _MEMBER and now.get(slot) is None}
    return frozenset(kept)


def drive_leds(snapshot: Mapping[str, Any], pulled: frozenset[int] = frozenset()) -> dict[int, DriveLed]:
    """Each slot's LED for this snapshot (see the module docstring for the table)."""
    members = slot_members(snapshot)
    raid = snapshot.get("raid")
    status = raid.get("status") if raid else None
    leds: dict[int, DriveLed] = {}
    for slot, member in members.items():
        if member is None:
            leds[slot] = DriveLed.FAILED if slot in pulled else DriveLed.OFF
        elif member == "unused" or status is None:
            leds[slot] = DriveLed.OFF
        elif status == "failed":
            leds[slot] = DriveLed.ARRAY_FAILED
        elif member == "faulty":
            leds[slot] = DriveLed.FAILED
        elif member == "spare":
            leds[slot] = DriveLed.SPARE
        elif member == "rebuilding" or status == "syncing":
            leds[slot] = DriveLed.SYNCING
        elif status == "degraded":
            leds[slot] = DriveLed.DEGRADED
        else:
            leds[slot] = DriveLed.ONLINE
    if status == "failed":
        # All red: every bay that holds a disk or held a member, whatever is in it.
        leds = {slot: DriveLed.ARRAY_FAILED if (members[slot] is not None or slot in pulled) else led
                for slot, led in leds.items()}
    return leds


def product_status(started: bool, snapshot: Mapping[str, Any] | None) -> tuple[ProductState, str | None]:
    """What "OK" means (docs/design/indicators.md): the daemon has started, the
    volume is ready (mounted, writable: recording can write), and the RAID, if any,
    is online with every member in sync. Ready without redundancy (degraded or
    syncing) is `degraded`; a volume that cannot be written is `failed`."""
    if not started or snapshot is None:
        return ProductState.STARTING, "the recorder is starting"
    if snapshot.get("volume") != "ready":
        return ProductState.FAILED, snapshot.get("reason") or f"the volume is {snapshot.get('volume')}"
    raid = snapshot.get("raid")
    if raid is not None and raid.get("status") in ("degraded", "syncing"):
        return ProductState.DEGRADED, f"the RAID is {raid['status']}: no redundancy"
    return ProductState.OK, None


def product_led(state: ProductState) -> ProductLed:
    if state is ProductState.STARTING:
        return ProductLed.STARTING
    return ProductLed.OK if state is ProductState.OK else ProductLed.ATTENTION
