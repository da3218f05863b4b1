"""Clock steps (+1 h, −1 h) and a DST change during recording: nothing is
overwritten or reordered. The clock is injected (SteppableClock); the machine's
clock is never touched."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nvrd.recording.cameras import CameraCreate, CameraPatch
from nvrd.recording.clock import SteppableClock

from .conftest import index_rows, volume_files, wait_for

HOUR_MS = 3_600_000
# Europe/Berlin leaves summer time at 01:00 UTC on 2026-10-25 (03:00 CEST → 02:00 CET).
DST_END = int(datetime(2026, 10, 25, 1, 0, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
def berlin_time():
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


async def test_clock_steps_and_dst_neither_overwrite_nor_reorder(make_recorder, shared_server, berlin_time) -> None:
    # The recorder's wall clock starts 6 s before the DST change.
    clock = SteppableClock()
    clock.offset_ms = DST_END - 6_000 - clock.wall_ms() + clock.offset_ms
    harness = await make_recorder(clock=clock)
    recorder = harness.recorder
    await recorder.create(CameraCreate(id="a", url=shared_server.url("h264-aac"), segment_seconds=2))
    sup = recorder.supervisors["a"]

    async def segments_after(n: int) -> None:
        target = sup.segments_closed + n
        await wait_for(lambda: sup.segments_closed >= target, 60, what=f"{n} more segments")

    await segments_after(5)  # across the DST change
    clock.step(+HOUR_MS)
    await segments_after(3)
    clock.step(-HOUR_MS)
    await segments_after(3)
    clock.step(-HOUR_MS)  # now an hour behind: a restart re-anchors to this clock
    await recorder.update("a", CameraPatch(segment_seconds=3))
    await segments_after(3)
    clock.step(+HOUR_MS)
    await segments_after(2)

    volume = harness.volume.path
    rows = index_rows(volume)
    files = volume_files(volume)
    # Nothing overwritten: one distinct file per row, and no file without a row.
    assert len({r["path"] for r in rows}) == len(rows)
    assert files == {r["path"] for r in rows}
    # Nothing reordered: in insertion order, each segment starts where or after the
    # previous one ended, and within a run exactly where it ended.
    for before, after in zip(rows, rows[1:]):
        assert after["start_ms"] >= before["end_ms"], (before, after)
        if after["run_id"] == before["run_id"]:
            assert after["start_ms"] == before["end_ms"]
    # The run across the DST change holds segments on both sides of it, and paths
    # are UTC: the hour directory is the UTC hour of the start, whatever TZ says.
    assert rows[0]["start_ms"] < DST_END < rows[4]["end_ms"]
    for row in rows:
        start = datetime.fromtimestamp(row["start_ms"] / 1000, UTC)
        assert Path(row["path"]).parts[-3:-1] == (f"{start:%Y-%m-%d}", f"{start:%H}")
    # The clock steps were seen and logged, not followed within a run.
    assert sup.anomalies["clock-step"] >= 1
    # The restart after the step back did not start before the previous end.
    runs = sorted({r["run_id"] for r in rows})
    assert len(runs) >= 2
