"""What the LEDs show: a pure function of the storage snapshot.

The reference recorder's table (manual, Specifications > LED indicators):
green = drive online; blinking green = the RAID is syncing (no redundancy yet);
amber = this drive is fine but another is broken (no redundancy); red = this drive is
broken; all red = the RAID has failed, nothing records; off = no drive.

`drive_leds(snapshot, pulled)` gives each slot its state. `pulled` is the one thing
the snapshot cannot say: which slots held an array member whose disk has since been
pulled (the disk, and so its slot, is gone from the kernel). `remember_members()`
carries where each member was seen from one snapshot to the next and
`pulled_slots()` reads the pulled slots from it, so such a slot stays red until a
disk is put in it. All are pure, so the whole table is unit-tested.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from nvrd.storage.alerts import disks_in_slots, lacks_member


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


def remember_members(memory: Mapping[str, int], snapshot: Mapping[str, Any]) -> dict[str, int]:
    """Array member device → the slot it was last seen in. A member whose disk is
    gone stays remembered while the array still lists it or lacks a member: the disk
    may leave its slot (udev) seconds before md notices (at the next I/O), and
    then md drops it from the list. Forgotten once the array lacks nothing and no
    longer lists it (rebuilt onto another disk, or made anew)."""
    raid = snapshot.get("raid")
    if raid is None:
        return {}
    listed = {d["device"] for d in raid.get("devices", []) if d.get("device")}
    present = disks_in_slots(snapshot)
    keep_gone = raid.get("status") == "failed" or lacks_member(raid)
    kept = {device: slot for device, slot in memory.items()
            if device not in present and (keep_gone or device in listed)}
    return {**kept, **{device: slot for device, slot in present.items() if device in listed}}


def pulled_slots(memory: Mapping[str, int], snapshot: Mapping[str, Any]) -> frozenset[int]:
    """The slots to show red although empty: a member's disk left them, and no disk
    has been put in since."""
    present = disks_in_slots(snapshot)
    occupied = set(present.values())
    return frozenset(slot for device, slot in memory.items() if device not in present and slot not in occupied)


def drive_leds(snapshot: Mapping[str, Any], pulled: frozenset[int] = frozenset()) -> dict[int, DriveLed]:
    """Each slot's LED for this snapshot (see the module docstring for the table)."""
    members = slot_members(snapshot)
    raid = snapshot.get("raid")
    status = raid.get("status") if raid else None
    leds: dict[int, DriveLed] = {}
    for slot, member in members.items():
        if status == "failed" and (member is not None or slot in pulled):
            # All red: every bay that holds a disk or held a member, whatever is in it.
            leds[slot] = DriveLed.ARRAY_FAILED
        elif member is None:
            leds[slot] = DriveLed.FAILED if slot in pulled else DriveLed.OFF
        elif member == "unused" or status is None:
            leds[slot] = DriveLed.OFF
        elif member == "faulty":
            leds[slot] = DriveLed.FAILED
        elif member == "spare":
            leds[slot] = DriveLed.SPARE
        elif member == "rebuilding" or status == "syncing":
            leds[slot] = DriveLed.SYNCING
        elif status == "degraded" or pulled:
            # A member's disk is gone even if md has not noticed yet (it does at its
            # next I/O): this one is the redundancy left.
            leds[slot] = DriveLed.DEGRADED
        else:
            leds[slot] = DriveLed.ONLINE
    return leds


def product_status(
    started: bool, snapshot: Mapping[str, Any] | None, pulled: frozenset[int] = frozenset()
) -> tuple[ProductState, str | None]:
    """What "OK" means (docs/design/indicators.md): the daemon has started, the
    volume is ready (mounted, writable: recording can write), and the RAID, if any,
    is online with every member in sync and no member's disk gone (`pulled`, which
    md may not have noticed yet). Ready without redundancy is `degraded`; a volume
    that cannot be written is `failed`."""
    if not started or snapshot is None:
        return ProductState.STARTING, "the recorder is starting"
    if snapshot.get("volume") != "ready":
        return ProductState.FAILED, snapshot.get("reason") or f"the volume is {snapshot.get('volume')}"
    raid = snapshot.get("raid")
    if raid is not None and raid.get("status") in ("degraded", "syncing"):
        return ProductState.DEGRADED, f"the RAID is {raid['status']}: no redundancy"
    if raid is not None and pulled:
        slots = ", ".join(str(s) for s in sorted(pulled))
        return ProductState.DEGRADED, f"the disk of a RAID member is gone (slot {slots})"
    return ProductState.OK, None


def product_led(state: ProductState) -> ProductLed:
    if state is ProductState.STARTING:
        return ProductLed.STARTING
    return ProductLed.OK if state is ProductState.OK else ProductLed.ATTENTION
