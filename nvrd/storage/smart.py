"""SMART health of one disk, from `smartctl --json` (smartmontools >= 7.0).

One smartctl run per reading: `smartctl --json=c --all --nocheck=standby,3 DEV`. A disk
in standby is not woken: smartctl skips it and exits with 3, and the reading says
health unknown with that reason. Runs are serialized per disk (one asyncio.Lock per
device) and go through the storage tool runner (an asyncio subprocess with a
timeout), since smartctl can take seconds on a sick disk.

Why JSON and not pySMART's parse: see docs/design/disks.md. In short, pySMART 1.4.3
parses smartctl's text only, ignores smartctl's exit status (so it cannot tell a
sleeping disk from a failing one), and, unless given the interface, runs extra
probes (`-d test`, `-l sataphy`, ...) that do not carry `-n standby`.

Health, in smartctl's JSON terms:
- failed: `smart_status.passed` is false (or exit bit 3, "disk failing"); an NVMe
  critical warning other than temperature alone; an ATA pre-fail attribute at or
  below its threshold now (`when_failed: now`, exit bit 4).
- warning: an NVMe temperature-only critical warning; an attribute that failed in the
  past (exit bit 5); reallocated, pending or offline-uncorrectable sectors (ATA
  5, 197, 198 raw > 0); NVMe media errors; errors in the self-test log (exit bit 7).
- unknown: standby, no SMART, smartctl failed or timed out, the device is gone.
- passed: otherwise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from nvrd.storage import tools

log = logging.getLogger(__name__)

#: smartctl's exit status when --nocheck=standby skipped the disk (we choose it: the
#: default, 2, is also "device open failed").
STANDBY_EXIT = 3
TIMEOUT_S = 60.0

# smartctl exit status bits (smartctl(8), "RETURN VALUES").
BIT_CMDLINE = 1 << 0
BIT_OPEN_FAILED = 1 << 1
BIT_COMMAND_FAILED = 1 << 2
BIT_DISK_FAILING = 1 << 3
BIT_PREFAIL_BELOW_THRESHOLD = 1 << 4
BIT_BELOW_THRESHOLD_IN_PAST = 1 << 5
BIT_ERROR_LOG = 1 << 6
BIT_SELF_TEST_ERRORS = 1 << 7

# NVMe SMART/Health log, Critical Warning bits (NVMe base spec 5.14.1.2).
NVME_WARNINGS = {
    0x01: "available spare below threshold",
    0x02: "temperature outside its thresholds",
    0x04: "NVM subsystem reliability degraded",
    0x08: "media in read-only mode",
    0x10: "volatile memory backup failed",
    0x20: "persistent memory region unreliable",
}
NVME_TEMPERATURE_WARNING = 0x02

ATA_REALLOCATED = 5
ATA_PENDING = 197
ATA_OFFLINE_UNCORRECTABLE = 198


class Health(StrEnum):
    PASSED = "passed"
    WARNING = "warning"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class AtaAttribute:
    """One row of the ATA SMART attribute table (normalized values: higher is better)."""

    id: int
    name: str
    value: int
    worst: int
    threshold: int
    prefailure: bool
    when_failed: str  # "" | "now" | "past"
    raw: int

    @property
    def failing_now(self) -> bool:
        """A pre-fail attribute at or below a non-zero threshold: the drive predicts failure."""
        return self.when_failed == "now" or (self.prefailure and 0 < self.threshold and self.value <= self.threshold)


@dataclass(frozen=True)
class SmartReport:
    health: Health
    #: Why health is not `passed`: one line for the UI and the log. None when passed.
    reason: str | None = None
    temperature_c: int | None = None
    #: NVMe Critical Warning byte (0 when fine); None for other protocols.
    critical_warning: int | None = None
    power_on_hours: int | None = None
    #: ATA pre-fail attributes, with value and threshold; empty for NVMe.
    prefail_attributes: tuple[AtaAttribute, ...] = ()
    reallocated_sectors: int | None = None
    pending_sectors: int | None = None
    protocol: str | None = None  # "NVMe", "ATA", "SCSI" as smartctl says
    standby: bool = False
    #: smartctl's exit status (a bit mask), None if it did not run to the end.
    exit_status: int | None = None
    messages: tuple[str, ...] = field(default=())

    @classmethod
    def unknown(cls, reason: str, **fields: Any) -> SmartReport:
        return cls(Health.UNKNOWN, reason, **fields)


def smartctl_argv(device: str | os.PathLike[str], smartctl: str = "smartctl") -> list[str]:
    """The one command a reading runs. `--nocheck=standby` keeps a sleeping disk asleep."""
    return [smartctl, "--json=c", "--all", f"--nocheck=standby,{STANDBY_EXIT}", os.fspath(device)]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _messages(data: Mapping[str, Any]) -> tuple[str, ...]:
    smartctl = data.get("smartctl")
    if not isinstance(smartctl, Mapping):
        return ()
    found = smartctl.get("messages")
    if not isinstance(found, list):
        return ()
    return tuple(str(m.get("string", "")).strip() for m in found if isinstance(m, Mapping) and m.get("string"))


def _ata_attributes(data: Mapping[str, Any]) -> list[AtaAttribute]:
    table = data.get("ata_smart_attributes", {})
    rows = table.get("table", []) if isinstance(table, Mapping) else []
    attributes = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, Mapping):
            continue
        ident, value = _int(row.get("id")), _int(row.get("value"))
        if ident is None or value is None:
            continue
        flags = row.get("flags") if isinstance(row.get("flags"), Mapping) else {}
        raw = row.get("raw") if isinstance(row.get("raw"), Mapping) else {}
        attributes.append(
            AtaAttribute(
                id=ident,
                name=str(row.get("name", "")),
                value=value,
                worst=_int(row.get("worst")) or value,
                threshold=_int(row.get("thresh")) or 0,
                prefailure=bool(flags.get("prefailure", False)),
                when_failed=str(row.get("when_failed", "") or ""),
                raw=_int(raw.get("value")) or 0,
            )
        )
    return attributes


def _temperature(data: Mapping[str, Any]) -> int | None:
    temperature = data.get("temperature")
    if isinstance(temperature, Mapping) and _int(temperature.get("current")) is not None:
        return temperature["current"]
    nvme = data.get("nvme_smart_health_information_log")
    if isinstance(nvme, Mapping):
        return _int(nvme.get("temperature"))
    return None


def _nvme_warning_text(bits: int) -> str:
    named = [text for bit, text in NVME_WARNINGS.items() if bits & bit]
    other = bits & ~sum(NVME_WARNINGS)
    if other:
        named.append(f"vendor bits 0x{other:02x}")
    return ", ".join(named)


def parse_smartctl_json(output: str | bytes, exit_status: int | None = None) -> SmartReport:
    """A reading from `smartctl --json` output and its exit status.

    `exit_status` defaults to the one smartctl writes into its own JSON. Never raises
    on odd input: anything it cannot read is health unknown with the reason.
    """
    try:
        data = json.loads(output)
    except (ValueError, TypeError):
        data = None
    if not isinstance(data, Mapping):
        status = f" (exit status {exit_status})" if exit_status is not None else ""
        return SmartReport.unknown(f"smartctl gave no JSON{status}", exit_status=exit_status)
    smartctl = data.get("smartctl") if isinstance(data.get("smartctl"), Mapping) else {}
    if exit_status is None:
        exit_status = _int(smartctl.get("exit_status"))
    rc = exit_status or 0
    messages = _messages(data)
    device = data.get("device") if isinstance(data.get("device"), Mapping) else {}
    protocol = device.get("protocol") if isinstance(device.get("protocol"), str) else None
    common: dict[str, Any] = {"protocol": protocol, "exit_status": exit_status, "messages": messages}

    if exit_status == STANDBY_EXIT or any("STANDBY mode" in m or "SLEEP mode" in m for m in messages):
        mode = next((m for m in messages if " mode" in m), "in standby")
        return SmartReport.unknown(f"not read: disk is asleep ({mode}); not woken for SMART", standby=True, **common)
    if rc & (BIT_CMDLINE | BIT_OPEN_FAILED):
        detail = "; ".join(messages) or f"exit status {rc}"
        return SmartReport.unknown(f"smartctl could not open the device: {detail}", **common)

    nvme_log = data.get("nvme_smart_health_information_log")
    nvme = nvme_log if isinstance(nvme_log, Mapping) else None
    attributes = _ata_attributes(data)
    by_id = {a.id: a for a in attributes}
    power_on = data.get("power_on_time")
    power_on_hours = _int(power_on.get("hours")) if isinstance(power_on, Mapping) else None
    if power_on_hours is None and nvme is not None:
        power_on_hours = _int(nvme.get("power_on_hours"))
    critical_warning = _int(nvme.get("critical_warning")) if nvme is not None else None
    reallocated = by_id[ATA_REALLOCATED].raw if ATA_REALLOCATED in by_id else None
    pending = by_id[ATA_PENDING].raw if ATA_PENDING in by_id else None
    uncorrectable = by_id[ATA_OFFLINE_UNCORRECTABLE].raw if ATA_OFFLINE_UNCORRECTABLE in by_id else None
    values: dict[str, Any] = {
        **common,
        "temperature_c": _temperature(data),
        "critical_warning": critical_warning,
        "power_on_hours": power_on_hours,
        "prefail_attributes": tuple(a for a in attributes if a.prefailure),
        "reallocated_sectors": reallocated,
        "pending_sectors": pending,
    }

    status = data.get("smart_status")
    passed = status.get("passed") if isinstance(status, Mapping) else None
    failures: list[str] = []
    warnings: list[str] = []
    if critical_warning:
        text = f"NVMe critical warning 0x{critical_warning:02x}: {_nvme_warning_text(critical_warning)}"
        (warnings if critical_warning == NVME_TEMPERATURE_WARNING else failures).append(text)
    failing = [a for a in attributes if a.failing_now]
    if failing:
        failures.append(
            "pre-fail attribute at threshold: "
            + ", ".join(f"{a.name} ({a.id}) {a.value} <= {a.threshold}" for a in failing)
        )
    elif rc & BIT_PREFAIL_BELOW_THRESHOLD:
        failures.append("smartctl reports a pre-fail attribute at or below its threshold")
    if (passed is False or rc & BIT_DISK_FAILING) and not failures:
        if not (critical_warning == NVME_TEMPERATURE_WARNING and passed is False):
            failures.append("SMART overall-health self-assessment failed")
    past = [a for a in attributes if a.when_failed == "past"]
    if past:
        warnings.append("attribute failed in the past: " + ", ".join(f"{a.name} ({a.id})" for a in past))
    elif rc & BIT_BELOW_THRESHOLD_IN_PAST:
        warnings.append("smartctl reports an attribute that was at its threshold in the past")
    for count, what in ((reallocated, "reallocated"), (pending, "pending"), (uncorrectable, "uncorrectable")):
        if count:
            warnings.append(f"{count} {what} sectors")
    if nvme is not None and _int(nvme.get("media_errors")):
        warnings.append(f"{nvme['media_errors']} NVMe media and data integrity errors")
    if rc & BIT_SELF_TEST_ERRORS:
        warnings.append("the self-test log has errors")

    if failures:
        return SmartReport(Health.FAILED, "; ".join(failures + warnings), **values)
    if warnings:
        return SmartReport(Health.WARNING, "; ".join(warnings), **values)
    if passed is None:
        support = data.get("smart_support")
        if isinstance(support, Mapping) and support.get("available") is False:
            reason = "the device has no SMART"
        elif isinstance(support, Mapping) and support.get("enabled") is False:
            reason = "SMART is disabled on the device"
        elif rc & BIT_COMMAND_FAILED:
            reason = "a SMART command failed: " + ("; ".join(messages) or f"exit status {rc}")
        else:
            reason = "smartctl reported no health status"
        return SmartReport(Health.UNKNOWN, reason, **values)
    return SmartReport(Health.PASSED, None, **values)


async def run_smartctl(
    device: str | os.PathLike[str], *, smartctl: str | None = None, timeout: float = TIMEOUT_S
) -> SmartReport:
    """Run smartctl once for `device` (through the storage tool runner) and parse it.

    smartctl's exit status is a bit mask of findings, not an error: every status is
    accepted, and the parser reads it from the JSON (`smartctl.exit_status`). So this
    returns a report for every outcome instead of raising.
    """
    binary = smartctl or shutil.which("smartctl") or shutil.which("smartctl", path="/usr/sbin:/sbin")
    if binary is None:
        return SmartReport.unknown("smartctl is not installed (smartmontools)")
    argv = smartctl_argv(device, binary)
    try:
        output = await tools.run(argv[0], *argv[1:], timeout=timeout, ok_codes=range(256))
    except tools.CommandFailed as exc:
        if exc.returncode is None:
            return SmartReport.unknown(f"smartctl timed out after {timeout:g} s")
        return SmartReport.unknown(f"cannot run smartctl: {exc}", exit_status=exc.returncode)
    return parse_smartctl_json(output)


class SmartReader:
    """Reads SMART for many disks: one smartctl at a time per disk.

    smartctl runs as an asyncio subprocess (nvrd.storage.tools), so the event loop
    never blocks on it. Two readings of the same disk wait for each other; readings
    of different disks run side by side.
    """

    def __init__(self, *, smartctl: str | None = None, timeout: float = TIMEOUT_S) -> None:
        self.smartctl = smartctl
        self.timeout = timeout
        self._locks: dict[str, asyncio.Lock] = {}
        self._awake: dict[str, SmartReport] = {}

    def _lock(self, device: str | os.PathLike[str]) -> asyncio.Lock:
        return self._locks.setdefault(os.path.realpath(os.fspath(device)), asyncio.Lock())

    async def read(self, device: str | os.PathLike[str]) -> SmartReport:
        async with self._lock(device):
            report = await run_smartctl(device, smartctl=self.smartctl, timeout=self.timeout)
        if not report.standby:
            self._awake[os.path.realpath(os.fspath(device))] = report
        return report

    def last_awake(self, device: str | os.PathLike[str]) -> SmartReport | None:
        """The last reading taken while the disk was awake: what to show, marked as
        old, while it sleeps (a standby reading has no temperature or health)."""
        return self._awake.get(os.path.realpath(os.fspath(device)))

    async def read_many(self, devices: Sequence[str | os.PathLike[str]]) -> dict[str, SmartReport]:
        reports = await asyncio.gather(*(self.read(d) for d in devices))
        return {os.fspath(d): r for d, r in zip(devices, reports)}


def report_as_dict(report: SmartReport) -> dict[str, Any]:
    """JSON-ready form (for the bus and the API)."""
    return {
        "health": report.health.value,
        "reason": report.reason,
        "temperature_c": report.temperature_c,
        "critical_warning": report.critical_warning,
        "power_on_hours": report.power_on_hours,
        "reallocated_sectors": report.reallocated_sectors,
        "pending_sectors": report.pending_sectors,
        "standby": report.standby,
        "prefail_attributes": [
            {"id": a.id, "name": a.name, "value": a.value, "worst": a.worst, "threshold": a.threshold,
             "when_failed": a.when_failed or None, "raw": a.raw}
            for a in report.prefail_attributes
        ],
    }


__all__ = [
    "AtaAttribute",
    "Health",
    "SmartReader",
    "SmartReport",
    "STANDBY_EXIT",
    "parse_smartctl_json",
    "report_as_dict",
    "run_smartctl",
    "smartctl_argv",
]
