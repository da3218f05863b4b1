"""md status from sysfs trees recorded on the real kernel (tests/data/md/*.json).

tests/data/record-md made each one in the vm tier's guest, with `mdadm --detail`'s
"State :" line alongside: the unit tests rebuild the tree and check that nvrd reads
it as mdadm does, except where mdadm is no judge of lost data (see raid10-both-of-a-mirror).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nvrd.storage.md import MdArray, RaidStatus

DATA = Path(__file__).parent.parent / "data" / "md"

# scenario: (status, member statuses sorted, the words mdadm's State line holds)
EXPECTED = {
    "raid1-online": (RaidStatus.ONLINE, ["online", "online"], {"clean"}),
    "raid1-faulty": (RaidStatus.DEGRADED, ["faulty", "online"], {"degraded"}),
    "raid1-missing": (RaidStatus.DEGRADED, ["online"], {"degraded"}),
    "raid1-recovering": (RaidStatus.SYNCING, ["online", "rebuilding"], {"degraded", "recovering"}),
    "raid5-initial-sync": (RaidStatus.SYNCING, ["online", "online", "rebuilding"], {"recovering"}),
    "raid5-degraded": (RaidStatus.DEGRADED, ["faulty", "online", "online"], {"degraded"}),
    "raid5-two-lost": (RaidStatus.FAILED, ["faulty", "faulty", "online"], {"FAILED"}),
    "raid6-two-lost": (RaidStatus.DEGRADED, ["faulty", "faulty", "online", "online"], {"degraded"}),
    "raid10-one-per-mirror": (RaidStatus.DEGRADED, ["faulty", "faulty", "online", "online"], {"degraded"}),
    "raid1-check": (RaidStatus.SYNCING, ["online", "online"], {"checking"}),
    # md refuses to fail the last disk of a mirror and marks the array broken
    # instead; mdadm still says "clean, degraded", but half the data is gone.
    "raid10-both-of-a-mirror": (RaidStatus.FAILED, ["faulty", "online", "online", "online"], {"degraded"}),
}


def rebuild(record: dict, sysfs: Path) -> MdArray:
    """The recorded attributes as files, where MdArray reads them."""
    block = sysfs / "block" / record["name"]
    md = block / "md"
    md.mkdir(parents=True)
    (block / "size").write_text(f"{record['size']}\n")
    for key, value in record["md"].items():
        if value is not None:
            (md / key).write_text(value + "\n")
    for entry, attrs in record["members"].items():
        (md / entry).mkdir()
        for key, value in attrs.items():
            if value is not None:
                (md / entry / key).write_text(value + "\n")
    return MdArray(record["name"], sysfs)


def recorded() -> list[str]:
    return sorted(p.stem for p in DATA.glob("*.json"))


def test_every_expected_scenario_was_recorded() -> None:
    assert set(EXPECTED) <= set(recorded())


@pytest.mark.parametrize("scenario", recorded())
def test_recorded_state_reads_as_mdadm_says(scenario: str, tmp_path: Path) -> None:
    record = json.loads((DATA / f"{scenario}.json").read_text())
    array = rebuild(record, tmp_path)
    status, members, words = EXPECTED[scenario]
    assert array.status is status, record["mdadm_state"]
    assert sorted(s.value for s in array.member_statuses().values()) == members
    state_words = set(record["mdadm_state"].replace(",", " ").split())
    assert words <= state_words, record["mdadm_state"]
    assert array.level == int(record["md"]["level"].removeprefix("raid"))

