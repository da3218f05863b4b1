"""Records real md sysfs trees, with mdadm's own verdict, for the unit tests.

Not part of the vm tier's test run (the file name does not start with test_). Run it
with tests/data/record-md, which boots the guest, runs this, and copies the results
to tests/data/md/. Each scenario puts an array into one state on the real kernel and
saves every attribute nvrd's MdArray reads, plus the "State :" line of
`mdadm --detail`: an independent tool's reading of the same array, which the unit
tests hold nvrd's status against.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import guest

NAME = "/dev/md/nvrd-rec"
ARRAY_ATTRS = ("level", "raid_disks", "array_state", "sync_action", "sync_completed",
               "sync_speed", "degraded", "uuid", "layout")
MEMBER_ATTRS = ("state", "slot", "recovery_start")


def out_dir() -> Path:
    folder = Path(os.environ["NVRD_VM_SCRATCH"]) / "md"
    folder.mkdir(exist_ok=True)
    return folder


def attr(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def snapshot(scenario: str, note: str) -> None:
    md_dev = Path(NAME).resolve()
    block = Path("/sys/block") / md_dev.name
    md = block / "md"
    detail = guest.run(["mdadm", "--detail", md_dev], check=False).stdout.decode()
    state_line = next((ln.split(":", 1)[1].strip() for ln in detail.splitlines()
                       if ln.strip().startswith("State :")), None)
    record = {
        "scenario": scenario,
        "note": note,
        "name": md_dev.name,
        "size": attr(block / "size"),
        "md": {a: attr(md / a) for a in ARRAY_ATTRS},
        "members": {
            entry.name: {a: attr(entry / a) for a in MEMBER_ATTRS}
            for entry in sorted(md.glob("dev-*"))
        },
        "mdadm_state": state_line,
        "mdadm_detail": detail,
    }
    (out_dir() / f"{scenario}.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def create(level: int, disks: list[guest.Disk], *, resync: bool = False) -> Path:
    guest.run(
        ["mdadm", "--create", NAME, "--run", "--metadata=1.2", f"--level={level}",
         f"--raid-devices={len(disks)}", *([] if level == 0 else ["--bitmap=internal"]),
         *([] if resync or level == 0 else ["--assume-clean"]),
         *[d.dev for d in disks]],
        input=b"y\n",
    )
    guest.settle()
    return Path(NAME).resolve()


def wait(what: str, predicate: Callable[[], bool]) -> None:
    guest.wait_for(what, predicate, timeout=120, every=0.1)


def md_attr(name: str) -> str | None:
    return attr(Path("/sys/block") / Path(NAME).resolve().name / "md" / name)


def slow(md_dev: Path) -> None:
    md = Path("/sys/block") / md_dev.name / "md"
    (md / "sync_speed_min").write_text("100\n")
    (md / "sync_speed_max").write_text("200\n")


@pytest.fixture(autouse=True)
def recording_guest() -> None:
    Path("/proc/sys/dev/raid/speed_limit_min").write_text("1000\n")


def test_record_md_states(clean_disks: list[guest.Disk]) -> None:
    a, b, c, d = clean_disks

    create(1, [a, b])
    snapshot("raid1-online", "RAID 1 of two, created --assume-clean")
    guest.run(["mdadm", NAME, "--fail", b.dev])
    wait("idle after fail", lambda: md_attr("sync_action") == "idle")
    snapshot("raid1-faulty", "RAID 1, one member --fail'ed, still listed as faulty")
    guest.run(["mdadm", NAME, "--remove", b.dev])
    snapshot("raid1-missing", "RAID 1, the failed member removed")
    guest.wipe_disks([b])
    slow(Path(NAME).resolve())
    guest.run(["mdadm", NAME, "--add", b.dev])
    wait("recovery", lambda: md_attr("sync_action") == "recover" and md_attr("sync_completed") not in (None, "none"))
    time.sleep(1)
    snapshot("raid1-recovering", "RAID 1, a blank disk added, rebuilding (slowed)")
    guest.wipe_disks([a, b])

    md_dev = create(5, [a, b, c], resync=True)
    slow(md_dev)
    wait("initial sync", lambda: md_attr("sync_completed") not in (None, "none"))
    time.sleep(1)
    snapshot("raid5-initial-sync", "RAID 5 of three just created: md builds parity by recovery")
    guest.wipe_disks([a, b, c])

    create(5, [a, b, c])
    guest.run(["mdadm", NAME, "--fail", a.dev])
    wait("idle", lambda: md_attr("sync_action") == "idle")
    snapshot("raid5-degraded", "RAID 5, one member failed")
    guest.run(["mdadm", NAME, "--fail", b.dev], check=False)
    wait("idle", lambda: md_attr("sync_action") == "idle")
    snapshot("raid5-two-lost", "RAID 5, a second member failed: the array is lost")
    guest.wipe_disks([a, b, c])

    create(6, [a, b, c, d])
    guest.run(["mdadm", NAME, "--fail", a.dev])
    guest.run(["mdadm", NAME, "--fail", b.dev])
    wait("idle", lambda: md_attr("sync_action") == "idle")
    snapshot("raid6-two-lost", "RAID 6, two members failed: degraded, no redundancy left")
    guest.wipe_disks([a, b, c, d])

    # RAID 10, near=2 on four disks: slots 0+1 and 2+3 are the mirrors.
    create(10, [a, b, c, d])
    guest.run(["mdadm", NAME, "--fail", a.dev])
    guest.run(["mdadm", NAME, "--fail", c.dev])
    wait("idle", lambda: md_attr("sync_action") == "idle")
    snapshot("raid10-one-per-mirror", "RAID 10, one disk of each mirror failed: still degraded")
    guest.wipe_disks([a, b, c, d])

    create(10, [a, b, c, d])
    guest.run(["mdadm", NAME, "--fail", a.dev])
    guest.run(["mdadm", NAME, "--fail", b.dev], check=False)
    wait("idle", lambda: md_attr("sync_action") == "idle")
    snapshot("raid10-both-of-a-mirror", "RAID 10, both disks of one mirror failed (md refuses the last one)")
    guest.wipe_disks([a, b, c, d])

    create(1, [a, b])
    slow(Path(NAME).resolve())
    (Path("/sys/block") / Path(NAME).resolve().name / "md" / "sync_action").write_text("check\n")
    wait("check", lambda: md_attr("sync_completed") not in (None, "none"))
    snapshot("raid1-check", "RAID 1 during a check (scrub)")
    guest.wipe_disks([a, b])
