"""Storage alerts: events from successive snapshots, and SMART alerts once per change."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from nvrd.storage import smart
from nvrd.storage.alerts import DiskWatch, Limits, smart_alerts, storage_events
from nvrd.storage.smart import parse_smartctl_json

DATA = Path(__file__).parents[1] / "data" / "smart"


def snap(status: str = "online", devices: list[tuple[str | None, str]] | None = None, slots: dict[int, str | None] | None = None,
         action: str = "idle", progress: float | None = None, **fields: Any) -> dict[str, Any]:
    devices = devices if devices is not None else [("/dev/a", "online"), ("/dev/b", "online")]
    slots = slots if slots is not None else {1: "/dev/a", 2: "/dev/b"}
    return {
        "mode": "managed", "locked": False, "total_bytes": 1000, "free_bytes": 500, "volume": "ready", "reason": None,
        "raid": {"level": 1, "status": status, "sync_action": action, "sync_progress": progress,
                 "devices": [{"device": d, "role": i, "status": s} for i, (d, s) in enumerate(devices)]},
        "slots": [{"slot": k, "device": v} for k, v in slots.items()],
        **fields,
    }


def topics(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [topic for topic, _ in events]


def test_nothing_changes_nothing() -> None:
    assert storage_events(snap(), snap()) == []


def test_a_pulled_member() -> None:
    # md first marks it faulty (the device is still listed), then udev removes it.
    faulty = snap("degraded", [("/dev/a", "faulty"), ("/dev/b", "online")])
    events = storage_events(snap(), faulty)
    assert events == [
        ("disk.failed", {"device": "/dev/a", "slot": 1, "level": 1, "status": "degraded"}),
        ("raid.degraded", {"level": 1, "status": "degraded", "missing_roles": [], "faulty": ["/dev/a"]}),
    ]
    gone = snap("degraded", [(None, "missing"), ("/dev/b", "online")], slots={1: None, 2: "/dev/b"})
    assert storage_events(faulty, gone) == [("disk.removed", {"device": "/dev/a", "slot": 1})]


def test_pulled_in_one_step() -> None:
    gone = snap("degraded", [(None, "missing"), ("/dev/b", "online")], slots={1: None, 2: "/dev/b"})
    assert topics(storage_events(snap(), gone)) == ["disk.removed", "disk.failed", "raid.degraded"]


def test_mds_transient_recover_after_a_failure_is_no_rebuild() -> None:
    faulty = snap("syncing", [("/dev/a", "faulty"), ("/dev/b", "online")], action="recover", progress=0.0)
    assert "raid.rebuild_started" not in topics(storage_events(snap(), faulty))


def test_a_rebuild_with_progress_every_ten_percent() -> None:
    gone = snap("degraded", [(None, "missing"), ("/dev/b", "online")], slots={1: None, 2: "/dev/b"})
    inserted = snap("degraded", [(None, "missing"), ("/dev/b", "online")], slots={1: "/dev/c", 2: "/dev/b"})
    assert storage_events(gone, inserted) == [("disk.added", {"device": "/dev/c", "slot": 1})]
    steps = [0.0, 0.04, 0.12, 0.15, 0.35, 0.999]
    before = inserted
    seen = []
    for progress in steps:
        now = snap("syncing", [("/dev/c", "rebuilding"), ("/dev/b", "online")], slots={1: "/dev/c", 2: "/dev/b"},
                   action="recover", progress=progress)
        seen += storage_events(before, now)
        before = now
    done = snap("online", [("/dev/c", "online"), ("/dev/b", "online")], slots={1: "/dev/c", 2: "/dev/b"})
    seen += storage_events(before, done)
    assert topics(seen) == ["raid.rebuild_started", "raid.rebuild_progress", "raid.rebuild_progress",
                            "raid.rebuild_progress", "raid.rebuild_finished"]
    assert [d["percent"] for t, d in seen if t == "raid.rebuild_progress"] == [10, 30, 90]
    assert seen[-1][1]["complete"] is True


def test_raid_failed_once() -> None:
    failed = snap("failed", [("/dev/a", "faulty"), ("/dev/b", "faulty")])
    events = storage_events(snap(), failed)
    assert topics(events) == ["disk.failed", "disk.failed", "raid.failed"]
    assert storage_events(failed, failed) == []


def test_full_and_locked() -> None:
    full = snap(free_bytes=5)
    assert storage_events(snap(), full) == [("storage.full", {"free_bytes": 5, "total_bytes": 1000})]
    assert storage_events(full, snap(free_bytes=4)) == []
    locked = snap(locked=True, reason="the volume is encrypted and locked")
    assert storage_events(snap(), locked) == [("storage.locked", {"reason": "the volume is encrypted and locked"})]


def test_standing_conditions_at_start() -> None:
    degraded = snap("degraded", [(None, "missing"), ("/dev/b", "online")], slots={1: None, 2: "/dev/b"})
    assert topics(storage_events(None, degraded)) == ["raid.degraded"]
    assert storage_events(None, snap()) == []


# --- SMART -------------------------------------------------------------------------


def nvme(critical_warning: int = 0, temperature: int = 50) -> smart.SmartReport:
    data = json.loads((DATA / "nvme-a.json").read_text())
    data["nvme_smart_health_information_log"]["critical_warning"] = critical_warning
    data["nvme_smart_health_information_log"]["temperature"] = temperature
    data["temperature"]["current"] = temperature
    return parse_smartctl_json(json.dumps(data), 8 if critical_warning else 0)


def sata(value5: int = 100, raw5: int = 0, raw197: int = 0, failing: bool = False) -> smart.SmartReport:
    data = copy.deepcopy(json.loads((DATA / "sata-a.json").read_text()))
    table = data["ata_smart_attributes"]["table"]
    if not any(row["id"] == 197 for row in table):  # this drive's table has no 197 row
        table.append({"id": 197, "name": "Current_Pending_Sector", "value": 100, "worst": 100, "thresh": 0,
                      "when_failed": "", "flags": {"prefailure": False}, "raw": {"value": 0, "string": "0"}})
    for row in data["ata_smart_attributes"]["table"]:
        if row["id"] == 5:
            row["value"], row["raw"] = value5, {"value": raw5, "string": str(raw5)}
            row["when_failed"] = "now" if failing else ""
        if row["id"] == 197:
            row["raw"] = {"value": raw197, "string": str(raw197)}
    rc = smart.BIT_DISK_FAILING | smart.BIT_PREFAIL_BELOW_THRESHOLD if failing else 0
    if failing:
        data["smart_status"]["passed"] = False
    return parse_smartctl_json(json.dumps(data), rc)


def run(readings: list[smart.SmartReport], limits: Limits = Limits()) -> list[dict[str, Any]]:
    state: DiskWatch | None = None
    alerts = []
    for report in readings:
        state, found = smart_alerts("/dev/x", state, report, limits)
        alerts += [data for _, data in found]
    return alerts


def test_recorded_critical_warning_alerts_once_and_clears_once() -> None:
    critical = parse_smartctl_json(*((DATA / "nvme-critical-a.json").read_text(), 8))
    alerts = run([nvme(), critical, critical, critical, nvme(), nvme()])
    assert [(a["key"], a["value"], a["active"]) for a in alerts] == [("critical_warning", 4, True), ("critical_warning", None, False)]


def test_other_warning_bits_alert_again() -> None:
    alerts = run([nvme(4), nvme(4), nvme(5)])
    assert [a["value"] for a in alerts] == [4, 5]


def test_temperature_limit_with_hysteresis() -> None:
    temperatures = [55, 61, 62, 58, 56, 61, 55, 54, 61]
    alerts = run([nvme(temperature=t) for t in temperatures], Limits(temperature_c=60, hysteresis_c=5))
    # Over 60 raises; it clears only at 55 or below, so 58/56/61 in between are quiet.
    assert [(a["value"], a["active"]) for a in alerts] == [(61, True), (55, False), (61, True)]


def test_prefail_at_threshold_and_health_failed() -> None:
    alerts = run([sata(), sata(value5=36, failing=True), sata(value5=36, failing=True)])
    assert sorted(a["key"] for a in alerts) == ["health", "prefail:5"]
    assert next(a for a in alerts if a["key"] == "prefail:5")["value"] == 36


def test_rising_reallocated_and_pending_counts() -> None:
    alerts = run([sata(), sata(raw5=2), sata(raw5=2), sata(raw5=3, raw197=1), sata(raw5=3, raw197=1)])
    assert [(a["attribute"], a["value"]) for a in alerts] == [
        ("reallocated_sectors", 2), ("reallocated_sectors", 3), ("pending_sectors", 1)]


def test_a_standby_reading_changes_nothing() -> None:
    asleep = smart.SmartReport.unknown("asleep", standby=True)
    alerts = run([nvme(4), asleep, asleep, nvme(4)])
    assert len(alerts) == 1


@pytest.mark.parametrize("name", ["nvme-a.json", "sata-a.json"])
def test_healthy_recordings_raise_nothing(name: str) -> None:
    report = parse_smartctl_json((DATA / name).read_text(), int((DATA / f"{name}.rc").read_text()))
    assert run([report, report]) == []


def test_a_disk_gone_before_md_notices_fails_once() -> None:
    unnoticed = snap("online", [("/dev/a", "online"), ("/dev/b", "online")], slots={1: None, 2: "/dev/b"})
    noticed = snap("degraded", [(None, "missing"), ("/dev/b", "online")], slots={1: None, 2: "/dev/b"})
    assert topics(storage_events(snap(), unnoticed)) == ["disk.removed", "disk.failed"]
    assert topics(storage_events(unnoticed, noticed)) == ["raid.degraded"]
