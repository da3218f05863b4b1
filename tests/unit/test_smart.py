"""SMART readings from smartctl --json output recorded in the vm guest (tests/data/smart,
made by tests/data/record.sh: QEMU NVMe with and without smart_critical_warning=4
set through QMP, and a QEMU SATA disk on AHCI).

Standby cannot be recorded: QEMU's ATA CHECK POWER MODE always answers "active", so
that case is built from smartctl's documented behaviour. tests/vm/test_smart.py runs
the reader against the real smartctl and disks.
"""

from __future__ import annotations

import asyncio
import copy
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvrd.storage import smart
from nvrd.storage.smart import (
    STANDBY_EXIT,
    Health,
    SmartReader,
    parse_smartctl_json,
    report_as_dict,
    run_smartctl,
    smartctl_argv,
)

DATA = Path(__file__).parents[1] / "data" / "smart"


def recorded(name: str) -> tuple[str, int]:
    return (DATA / name).read_text(), int((DATA / f"{name}.rc").read_text())


def recorded_json(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


def test_healthy_nvme() -> None:
    report = parse_smartctl_json(*recorded("nvme-a.json"))
    assert report.health is Health.PASSED
    assert report.reason is None
    assert report.temperature_c == 50
    assert report.critical_warning == 0
    assert report.power_on_hours == 0
    assert report.protocol == "NVMe"
    assert report.prefail_attributes == ()
    assert not report.standby


@pytest.mark.parametrize("name", ["nvme-critical-a.json", "nvme-critical-ns.json"])
def test_nvme_critical_warning_set_through_qmp_is_failed(name: str) -> None:
    text, rc = recorded(name)
    assert rc == smart.BIT_DISK_FAILING  # smartctl's own verdict, recorded
    report = parse_smartctl_json(text, rc)
    assert report.health is Health.FAILED
    assert report.critical_warning == 4
    assert "reliability degraded" in (report.reason or "")
    assert report.temperature_c == 50


def test_the_exit_status_inside_the_json_is_used_when_none_is_given() -> None:
    text, _ = recorded("nvme-critical-a.json")
    assert parse_smartctl_json(text).exit_status == 8
    assert parse_smartctl_json(text).health is Health.FAILED


def test_healthy_sata() -> None:
    report = parse_smartctl_json(*recorded("sata-a.json"))
    assert report.health is Health.PASSED
    assert report.protocol == "ATA"
    assert report.temperature_c == 31
    assert report.power_on_hours == 1
    assert report.critical_warning is None
    assert report.reallocated_sectors == 0
    assert report.pending_sectors is None  # QEMU has no attribute 197
    assert [a.id for a in report.prefail_attributes] == [1, 3, 5, 9, 12, 190]
    realloc = next(a for a in report.prefail_attributes if a.id == 5)
    assert (realloc.name, realloc.value, realloc.threshold) == ("Reallocated_Sector_Ct", 100, 36)


def test_recorded_with_nocheck_standby_an_awake_disk_reads_normally() -> None:
    assert parse_smartctl_json(*recorded("sata-a-nstandby.json")).health is Health.PASSED
    assert parse_smartctl_json(*recorded("nvme-ns-a-nstandby.json")).health is Health.PASSED


def standby_output(exit_status: int = STANDBY_EXIT) -> str:
    """What smartctl prints when --nocheck=standby skips a sleeping ATA disk."""
    return json.dumps(
        {
            "json_format_version": [1, 0],
            "smartctl": {
                "version": [7, 3],
                "exit_status": exit_status,
                "messages": [{"string": f"Device is in STANDBY mode, exit({exit_status})", "severity": "information"}],
            },
            "device": {"name": "/dev/sda", "info_name": "/dev/sda [SAT]", "type": "sat", "protocol": "ATA"},
        }
    )


def test_a_disk_in_standby_is_unknown_not_woken() -> None:
    report = parse_smartctl_json(standby_output(), STANDBY_EXIT)
    assert report.health is Health.UNKNOWN
    assert report.standby
    assert "asleep" in (report.reason or "")
    assert report.temperature_c is None


def test_the_standby_message_is_recognized_whatever_the_exit_status() -> None:
    assert parse_smartctl_json(standby_output(2), 2).standby


def test_the_argv_never_wakes_a_disk() -> None:
    argv = smartctl_argv("/dev/sda")
    assert f"--nocheck=standby,{STANDBY_EXIT}" in argv
    assert "--json=c" in argv and argv[-1] == "/dev/sda"


def sata_with(**changes: Any) -> dict[str, Any]:
    """The recorded SATA reading with some attribute rows changed."""
    data = copy.deepcopy(recorded_json("sata-a.json"))
    table = data["ata_smart_attributes"]["table"]
    for ident, fields in changes.items():
        row = next((r for r in table if r["id"] == int(ident.removeprefix("a"))), None)
        if row is None:
            row = {"id": int(ident.removeprefix("a")), "name": f"Attr{ident}", "value": 100, "worst": 100,
                   "thresh": 0, "when_failed": "", "flags": {"prefailure": False}, "raw": {"value": 0, "string": "0"}}
            table.append(row)
        for key, value in fields.items():
            if key == "raw":
                row["raw"] = {"value": value, "string": str(value)}
            else:
                row[key] = value
    return data


def test_a_prefail_attribute_at_threshold_is_failed() -> None:
    data = sata_with(a5={"value": 36, "when_failed": "now"})
    data["smart_status"]["passed"] = False
    report = parse_smartctl_json(json.dumps(data), smart.BIT_DISK_FAILING | smart.BIT_PREFAIL_BELOW_THRESHOLD)
    assert report.health is Health.FAILED
    assert "Reallocated_Sector_Ct (5) 36 <= 36" in (report.reason or "")


def test_reallocated_and_pending_sectors_are_a_warning() -> None:
    report = parse_smartctl_json(json.dumps(sata_with(a5={"raw": 8}, a197={"raw": 2})), 0)
    assert report.health is Health.WARNING
    assert (report.reallocated_sectors, report.pending_sectors) == (8, 2)
    assert "8 reallocated sectors" in (report.reason or "")
    assert "2 pending sectors" in (report.reason or "")


def test_an_attribute_that_failed_in_the_past_is_a_warning() -> None:
    data = sata_with(a190={"when_failed": "past", "worst": 40})
    report = parse_smartctl_json(json.dumps(data), smart.BIT_BELOW_THRESHOLD_IN_PAST)
    assert report.health is Health.WARNING
    assert "Airflow_Temperature_Cel (190)" in (report.reason or "")


def test_a_temperature_only_nvme_warning_is_a_warning() -> None:
    data = recorded_json("nvme-critical-a.json")
    data["nvme_smart_health_information_log"]["critical_warning"] = 2
    data["smart_status"]["nvme"]["value"] = 2
    report = parse_smartctl_json(json.dumps(data), smart.BIT_DISK_FAILING)
    assert report.health is Health.WARNING
    assert "temperature" in (report.reason or "")


def test_a_device_smartctl_cannot_open_is_unknown() -> None:
    output = json.dumps(
        {"smartctl": {"exit_status": 2, "messages": [
            {"string": "Smartctl open device: /dev/nvme1n1 failed: No such device", "severity": "error"}]}}
    )
    report = parse_smartctl_json(output, 2)
    assert report.health is Health.UNKNOWN
    assert "No such device" in (report.reason or "")
    assert not report.standby


def test_no_smart_is_unknown() -> None:
    output = json.dumps({"smartctl": {"exit_status": 4}, "smart_support": {"available": False, "enabled": False}})
    report = parse_smartctl_json(output, 4)
    assert report.health is Health.UNKNOWN
    assert report.reason == "the device has no SMART"


def test_report_as_dict_is_json_ready() -> None:
    data = report_as_dict(parse_smartctl_json(*recorded("sata-a.json")))
    assert json.loads(json.dumps(data)) == data
    assert data["health"] == "passed"
    assert data["prefail_attributes"][0] == {"id": 1, "name": "Raw_Read_Error_Rate", "value": 100, "worst": 100,
                                             "threshold": 6, "when_failed": None, "raw": 0}


# ---- properties -------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(st.text(max_size=200), st.none() | st.integers(min_value=0, max_value=255))
def test_any_text_gives_a_report_never_an_exception(text: str, rc: int | None) -> None:
    report = parse_smartctl_json(text, rc)
    assert isinstance(report.health, Health)


@given(json_values, st.sampled_from(["smartctl", "device", "smart_status", "temperature", "ata_smart_attributes",
                                     "nvme_smart_health_information_log", "power_on_time"]))
def test_any_shape_under_a_known_key_gives_a_report(value: Any, key: str) -> None:
    data = recorded_json("sata-a.json")
    data[key] = value
    assert isinstance(parse_smartctl_json(json.dumps(data), 0).health, Health)


@given(st.integers(min_value=0, max_value=255))
def test_every_nvme_critical_warning_maps_to_a_health(bits: int) -> None:
    data = recorded_json("nvme-a.json")
    data["nvme_smart_health_information_log"]["critical_warning"] = bits
    data["smart_status"] = {"passed": bits == 0, "nvme": {"value": bits}}
    report = parse_smartctl_json(json.dumps(data), smart.BIT_DISK_FAILING if bits else 0)
    expected = Health.PASSED if bits == 0 else Health.WARNING if bits == 2 else Health.FAILED
    assert report.health is expected
    assert report.critical_warning == bits


attribute = st.fixed_dictionaries(
    {
        "id": st.integers(min_value=1, max_value=254),
        "value": st.integers(min_value=1, max_value=253),
        "thresh": st.integers(min_value=0, max_value=253),
        "prefailure": st.booleans(),
    }
)


@given(st.lists(attribute, min_size=1, max_size=12, unique_by=lambda a: a["id"]))
def test_failed_exactly_when_a_prefail_attribute_is_at_its_threshold(attrs: list[dict[str, Any]]) -> None:
    data = recorded_json("sata-a.json")
    data["ata_smart_attributes"]["table"] = [
        {"id": a["id"], "name": f"A{a['id']}", "value": a["value"], "worst": a["value"], "thresh": a["thresh"],
         "when_failed": "", "flags": {"prefailure": a["prefailure"]}, "raw": {"value": 0, "string": "0"}}
        for a in attrs
    ]
    report = parse_smartctl_json(json.dumps(data), 0)
    at_threshold = any(a["prefailure"] and 0 < a["thresh"] and a["value"] <= a["thresh"] for a in attrs)
    assert (report.health is Health.FAILED) == at_threshold
    assert {a.id for a in report.prefail_attributes} == {a["id"] for a in attrs if a["prefailure"]}


# ---- running smartctl ---------------------------------------------------------------


def fake_smartctl(tmp_path: Path, output: str, rc: int, sleep: float = 0) -> Path:
    """A stand-in smartctl: logs `start DEV` / `end DEV` and its argv, prints the
    recorded output and exits with smartctl's status."""
    (tmp_path / "out.json").write_text(output)
    script = tmp_path / "smartctl"
    script.write_text(
        "#!/bin/sh\n"
        'for dev; do :; done\n'
        f'echo "start $dev" >> {tmp_path}/log\n'
        f'echo "$@" >> {tmp_path}/argv\n'
        f"sleep {sleep}\n"
        f"cat {tmp_path}/out.json\n"
        f'echo "end $dev" >> {tmp_path}/log\n'
        f"exit {rc}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


async def test_run_smartctl_passes_nocheck_and_reads_the_exit_status(tmp_path: Path) -> None:
    text, rc = recorded("nvme-critical-a.json")
    binary = fake_smartctl(tmp_path, text, rc)
    report = await run_smartctl("/dev/nvme0n1", smartctl=str(binary))
    assert report.health is Health.FAILED
    assert report.exit_status == 8
    assert (tmp_path / "argv").read_text().split() == smartctl_argv("/dev/nvme0n1", str(binary))[1:]


async def test_run_smartctl_on_a_sleeping_disk(tmp_path: Path) -> None:
    binary = fake_smartctl(tmp_path, standby_output(), STANDBY_EXIT)
    report = await run_smartctl("/dev/sda", smartctl=str(binary))
    assert report.health is Health.UNKNOWN and report.standby


async def test_a_hung_smartctl_times_out_as_unknown(tmp_path: Path) -> None:
    binary = tmp_path / "smartctl"
    binary.write_text("#!/bin/sh\nexec sleep 30\n")  # exec: the timeout's kill reaches it
    binary.chmod(0o755)
    report = await run_smartctl("/dev/sda", smartctl=str(binary), timeout=0.5)
    assert report.health is Health.UNKNOWN
    assert "timed out" in (report.reason or "")


async def test_a_missing_smartctl_is_unknown(tmp_path: Path) -> None:
    report = await run_smartctl("/dev/sda", smartctl=str(tmp_path / "nope"))
    assert report.health is Health.UNKNOWN
    assert "not installed" in (report.reason or "")


async def test_readings_of_one_disk_are_serialized_and_of_two_disks_not(tmp_path: Path) -> None:
    binary = fake_smartctl(tmp_path, *recorded("sata-a.json"), sleep=0.3)
    reader = SmartReader(smartctl=str(binary))
    reports = await asyncio.gather(*(reader.read("/dev/sda") for _ in range(3)), reader.read("/dev/sdb"))
    assert all(r.health is Health.PASSED for r in reports)
    log = (tmp_path / "log").read_text().split("\n")[:-1]
    running: set[str] = set()
    overlapped = False
    for line in log:
        what, dev = line.split()
        if what == "start":
            assert dev not in running, f"two smartctl on {dev} at once: {log}"
            running.add(dev)
            overlapped = overlapped or len(running) > 1
        else:
            running.discard(dev)
    assert log.count("start /dev/sda") == 3
    assert overlapped, f"the two disks were never read side by side: {log}"


async def test_the_last_awake_reading_survives_standby(tmp_path: Path) -> None:
    (tmp_path / "awake").mkdir()
    (tmp_path / "asleep").mkdir()
    awake = fake_smartctl(tmp_path / "awake", *recorded("sata-a.json"))
    asleep = fake_smartctl(tmp_path / "asleep", standby_output(), STANDBY_EXIT)
    reader = SmartReader(smartctl=str(awake))
    assert reader.last_awake("/dev/sda") is None
    assert (await reader.read("/dev/sda")).temperature_c == 31
    reader.smartctl = str(asleep)
    assert (await reader.read("/dev/sda")).standby
    last = reader.last_awake("/dev/sda")
    assert last is not None and last.health is Health.PASSED and last.temperature_c == 31
