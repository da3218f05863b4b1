"""The drive LED table: every level × member-state combination the manual names."""

from __future__ import annotations

from typing import Any

import pytest

from nvrd.indicators.leds import (
    DriveLed, ProductLed, ProductState, drive_leds, product_led, product_status, pulled_slots,
    remember_members,
)
from nvrd.storage.md import raid_status

G, B, A, R, F, S, O = (DriveLed.ONLINE, DriveLed.SYNCING, DriveLed.DEGRADED, DriveLed.FAILED,
                       DriveLed.ARRAY_FAILED, DriveLed.SPARE, DriveLed.OFF)


def snapshot(level: int, members: list[str], sync_action: str = "idle", spares: int = 0) -> dict[str, Any]:
    """Slots 1..n hold members with these statuses ("missing": the slot is empty and
    the role has no disk). The RAID status comes from md's own rule (raid_status)."""
    working = {i for i, m in enumerate(members) if m == "online"}
    action = "recover" if "rebuilding" in members else sync_action
    status = raid_status(level, len(members), "clean", action, working).value
    devices, slots = [], []
    for i, member in enumerate(members):
        if member == "missing":
            devices.append({"device": None, "role": i, "status": "missing"})
            slots.append({"slot": i + 1, "device": None})
        else:
            devices.append({"device": f"/dev/d{i}", "role": i, "status": member})
            slots.append({"slot": i + 1, "device": f"/dev/d{i}"})
    for j in range(spares):
        n = len(members) + j
        devices.append({"device": f"/dev/d{n}", "role": None, "status": "spare"})
        slots.append({"slot": n + 1, "device": f"/dev/d{n}"})
    return {"mode": "managed", "volume": "ready", "raid": {"level": level, "status": status,
            "sync_action": action, "devices": devices}, "slots": slots}


TABLE = [
    # level, members (slot order), expected LEDs, why
    (1, ["online", "online"], [G, G], "healthy mirror"),
    (1, ["online", "online"], [B, B], "initial resync blinks every member"),
    (1, ["faulty", "online"], [R, A], "broken drive red, the other amber"),
    (1, ["missing", "online"], [O, A], "pulled before we saw it: empty slot, the other amber"),
    (1, ["rebuilding", "online"], [B, B], "rebuilding onto a replacement"),
    (1, ["faulty", "faulty"], [F, F], "all members gone: all red"),
    (0, ["online", "online"], [G, G], "stripe healthy"),
    (0, ["faulty", "online"], [F, F], "a stripe with a broken member has failed"),
    (5, ["online", "online", "online"], [G, G, G], "parity healthy"),
    (5, ["online", "faulty", "online"], [A, R, A], "one lost: degraded"),
    (5, ["online", "faulty", "faulty"], [F, F, F], "two lost: failed"),
    (5, ["online", "rebuilding", "online"], [B, B, B], "rebuild"),
    (6, ["online", "faulty", "faulty", "online"], [A, R, R, A], "RAID 6 survives two"),
    (6, ["faulty", "faulty", "faulty", "online"], [F, F, F, F], "not three"),
    (10, ["online"] * 4, [G, G, G, G], "RAID 10 healthy"),
    (10, ["faulty", "online", "faulty", "online"], [R, A, R, A], "one disk of each mirror: still online"),
    (10, ["faulty", "faulty", "online", "online"], [F, F, F, F], "both disks of one mirror: failed"),
    (10, ["online", "missing", "online", "faulty"], [A, O, A, R], "one of each mirror, one pulled"),
]


@pytest.mark.parametrize("level, members, expected, why", TABLE, ids=[t[3] for t in TABLE])
def test_drive_led_table(level: int, members: list[str], expected: list[DriveLed], why: str) -> None:
    action = "resync" if why.startswith("initial resync") else "idle"
    leds = drive_leds(snapshot(level, members, sync_action=action))
    assert [leds[slot] for slot in range(1, len(members) + 1)] == expected


def test_a_spare_is_lit_as_a_spare_and_an_unused_disk_is_off() -> None:
    state = snapshot(1, ["online", "online"], spares=1)
    state["slots"].append({"slot": 4, "device": "/dev/unused"})
    state["slots"].append({"slot": 5, "device": None})
    assert drive_leds(state) == {1: G, 2: G, 3: S, 4: O, 5: O}


def test_no_array_leaves_every_led_off() -> None:
    state = {"mode": "managed", "raid": None, "slots": [{"slot": 1, "device": "/dev/d0"}]}
    assert drive_leds(state) == {1: O}


def follow(*snapshots: dict[str, Any]) -> list[dict[int, DriveLed]]:
    """The LEDs after each snapshot in turn, as the indicator service computes them."""
    memory: dict[str, int] = {}
    shown = []
    for state in snapshots:
        memory = remember_members(memory, state)
        shown.append(drive_leds(state, pulled_slots(memory, state)))
    return shown


def test_a_pulled_member_slot_stays_red_until_a_disk_is_inserted() -> None:
    healthy = snapshot(1, ["online", "online", "online"])
    pulled = snapshot(1, ["missing", "online", "online"])
    inserted = snapshot(1, ["missing", "online", "online"])
    inserted["slots"][0]["device"] = "/dev/new"  # a blank disk: in no array yet
    rebuilding = snapshot(1, ["rebuilding", "online", "online"])
    rebuilding["raid"]["devices"][0]["device"] = rebuilding["slots"][0]["device"] = "/dev/new"
    assert follow(healthy, pulled, pulled, inserted, rebuilding) == [
        {1: G, 2: G, 3: G},
        {1: R, 2: A, 3: A},
        {1: R, 2: A, 3: A},  # later snapshots (a sync tick, say) keep it
        {1: O, 2: A, 3: A},  # a disk is in: no longer red
        {1: B, 2: B, 3: B},  # it joins and rebuilds
    ]


def test_a_faulty_member_pulled_keeps_its_slot_red() -> None:
    faulty = snapshot(5, ["faulty", "online", "online"])
    gone = snapshot(5, ["missing", "online", "online"])
    assert follow(faulty, gone)[-1] == {1: R, 2: A, 3: A}


def test_a_disk_pulled_before_md_notices_is_red_at_once_and_stays_red() -> None:
    # udev reports the disk gone while md still lists it in sync (md notices at its
    # next I/O, seconds later), then md drops it.
    healthy = snapshot(1, ["online", "online"])
    unnoticed = snapshot(1, ["online", "online"])
    unnoticed["slots"][1]["device"] = None
    noticed = snapshot(1, ["online", "missing"])
    assert follow(healthy, unnoticed, noticed) == [{1: G, 2: G}, {1: A, 2: R}, {1: A, 2: R}]


def test_the_memory_ends_when_the_array_lacks_nothing() -> None:
    pulled = snapshot(1, ["missing", "online", "online"])
    healthy = snapshot(1, ["online", "online"])  # made anew on two disks
    healthy["slots"] = [{"slot": 2, "device": "/dev/d0"}, {"slot": 3, "device": "/dev/d1"}, {"slot": 1, "device": None}]
    memory = remember_members(remember_members({"/dev/d9": 1}, pulled), healthy)
    assert pulled_slots(memory, healthy) == frozenset()


@pytest.mark.parametrize(
    "started, volume, raid, state, led",
    [
        (False, "ready", "online", ProductState.STARTING, ProductLed.STARTING),
        (True, "ready", "online", ProductState.OK, ProductLed.OK),
        (True, "ready", None, ProductState.OK, ProductLed.OK),
        (True, "ready", "degraded", ProductState.DEGRADED, ProductLed.ATTENTION),
        (True, "ready", "syncing", ProductState.DEGRADED, ProductLed.ATTENTION),
        (True, "unavailable", "failed", ProductState.FAILED, ProductLed.ATTENTION),
        (True, "locked", "online", ProductState.FAILED, ProductLed.ATTENTION),
        (True, "write_protected", "online", ProductState.FAILED, ProductLed.ATTENTION),
    ],
)
def test_product_status(started: bool, volume: str, raid: str | None, state: ProductState, led: ProductLed) -> None:
    snap = {"volume": volume, "raid": {"status": raid} if raid else None, "reason": None}
    got, reason = product_status(started, snap)
    assert got is state
    assert (reason is None) == (state is ProductState.OK)
    assert product_led(got) is led


def test_a_member_disk_gone_before_md_notices_is_degraded() -> None:
    snap = {"volume": "ready", "raid": {"status": "online"}, "reason": None}
    state, reason = product_status(True, snap, frozenset({2}))
    assert state is ProductState.DEGRADED and reason == "the disk of a RAID member is gone (slot 2)"
