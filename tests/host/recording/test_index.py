"""The index on SQLite, and start-up reconciliation against files, without ffmpeg:
runs and gaps, deletion, and each kind of crash leftover."""

from __future__ import annotations

import shutil
from pathlib import Path

from nvrd.recording.index import RecordingIndex, SegmentRow
from nvrd.recording.recorder import reconcile
from nvrd.recording.retention import Retention, RetentionSettings, WriteRate
from nvrd.recording.segments import Layout

DATA = Path(__file__).resolve().parents[2] / "data"
T0 = 1_795_620_000_000


def row(camera: str, start: int, end: int, path: str, run: int | None = None) -> SegmentRow:
    return SegmentRow(camera, start, end, 1000, 30, 1, "h264", None, path, run_id=run)


async def test_runs_gaps_and_deletion(tmp_path: Path) -> None:
    index = RecordingIndex(tmp_path)
    await index.open()
    try:
        a = await index.insert(row("c", T0, T0 + 10_000, "p1"), "restart")
        await index.insert(row("c", T0 + 10_000, T0 + 20_000, "p2", a.run_id), "restart")
        b = await index.insert(row("c", T0 + 50_000, T0 + 60_000, "p3"), "offline")
        c = await index.insert(row("c", T0 + 90_000, T0 + 100_000, "p4"), "storage-locked")
        await index.insert(row("other", T0, T0 + 10_000, "q1"), "restart")

        runs, gaps = await index.runs_and_gaps(["c"], T0 - 1, T0 + 200_000)
        assert [(r.start_ms - T0, r.end_ms - T0, r.segments) for r in runs] == [(0, 20_000, 2), (50_000, 60_000, 1), (90_000, 100_000, 1)]
        assert [(g.start_ms - T0, g.end_ms - T0, g.reason) for g in gaps] == [(20_000, 50_000, "offline"), (60_000, 90_000, "storage-locked")]
        # A window inside the first gap still sees it.
        _, gaps = await index.runs_and_gaps(["c"], T0 + 30_000, T0 + 40_000)
        assert [g.reason for g in gaps] == ["offline"]

        # Deleting the oldest segment moves its run's start; nothing else changes.
        await index.drop([a.id])
        runs, gaps = await index.runs_and_gaps(["c"], T0 - 1, T0 + 200_000)
        assert runs[0].start_ms == T0 + 10_000 and runs[0].segments == 1 and runs[0].bytes == 1000
        assert [g.reason for g in gaps] == ["offline", "storage-locked"]
        # Deleting a run in the middle: the gap it leaves says deleted.
        await index.drop([b.id])
        runs, gaps = await index.runs_and_gaps(["c"], T0 - 1, T0 + 200_000)
        assert [(g.start_ms - T0, g.end_ms - T0, g.reason) for g in gaps] == [(20_000, 90_000, "deleted")]
        assert c.run_id in [r.id for r in runs]
        # Retention took a whole run that is still being recorded: it goes on.
        await index.drop([c.id])
        d = await index.insert(row("c", T0 + 100_000, T0 + 110_000, "p5", c.run_id), "restart")
        runs, _ = await index.runs_and_gaps(["c"], T0 - 1, T0 + 200_000)
        assert (runs[-1].id, runs[-1].start_ms - T0, runs[-1].segments) == (d.run_id, 100_000, 1)
    finally:
        await index.close()


def place(layout: Layout, camera: str, start_ms: int, token: str, seq: int) -> str:
    path = layout.final(camera, start_ms, token, seq)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(DATA / "segment-h264-aac.mp4", path)
    return layout.relative(path)


async def test_reconciliation_repairs_every_crash_leftover(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    index = RecordingIndex(tmp_path)
    await index.open()
    try:
        # Indexed and present.
        p0 = place(layout, "cam", T0, "tok", 0)
        first = await index.insert(row("cam", T0, T0 + 3128, p0), "restart")
        # Committed (renamed, fsynced) but the row was never inserted.
        p1 = place(layout, "cam", T0 + 3128, "tok", 1)
        # The segment being written: follows seq 1 of the same run.
        incoming = layout.incoming("cam")
        incoming.mkdir(parents=True)
        data = (DATA / "segment-h264-aac.mp4").read_bytes()
        (incoming / "tok-000002.mp4").write_bytes(data[:-3000])  # cut by the crash
        (incoming / "zzz-000000.mp4").write_bytes(data[:20])  # a header only
        # A row whose file is gone, in the newest hour.
        ghost = await index.insert(row("cam", T0 + 60_000, T0 + 63_000, "recordings/cam/ghost.mp4", first.run_id), "x")
        # An interrupted delete.
        p_old = place(layout, "old", T0 - 86_400_000, "o", 0)
        old = await index.insert(row("old", T0 - 86_400_000, T0 - 86_397_000, p_old), "restart")
        await index.mark_deleting([old.id])

        # The ghost row is newest; reconciliation must look from its hour.
        report = await reconcile(None, layout, index)
        assert report.finished_deletes == 1 and not (tmp_path / p_old).exists()
        assert report.dropped_rows == 1
        assert report.recovered == 2  # p1, and the cut segment
        assert report.removed_files == 1  # the header-only file
        assert list(incoming.iterdir()) == []
        rows = await index.segments("cam", 0, 2**62)
        assert [r.path for r in rows][:2] == [p0, p1]
        assert ghost.path not in [r.path for r in rows]
        recovered = rows[-1]
        assert recovered.note == "recovered,truncated" and recovered.start_ms == rows[-2].end_ms
        assert recovered.run_id == rows[-2].run_id
        files = {str(p.relative_to(tmp_path)) for p in (tmp_path / "recordings").rglob("*.mp4")}
        assert files == {r.path for r in rows}
        # A second pass finds nothing.
        again = await reconcile(None, layout, index)
        assert (again.recovered, again.removed_files, again.dropped_rows, again.finished_deletes) == (0, 0, 0, 0)
    finally:
        await index.close()


async def test_retention_floor_deletes_oldest_across_cameras(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    index = RecordingIndex(tmp_path)
    await index.open()
    try:
        for i in range(6):
            for camera in ("a", "b"):
                path = place(layout, camera, T0 + i * 3128 + (camera == "b"), "t", i)
                await index.insert(row(camera, T0 + i * 3128 + (camera == "b"), T0 + (i + 1) * 3128, path), "r")
        free = {"bytes": 0}
        retention = Retention(
            index, tmp_path, RetentionSettings(floor_window_s=0, floor_slack_bytes=3000), WriteRate(60),
            free=lambda _path: free["bytes"] + 1000 * retention.deleted,
        )
        assert await retention.enforce_floor() == 3
        left = await index.oldest(100)
        assert [(r.camera, r.start_ms - T0) for r in left[:2]] == [("b", 3129), ("a", 6256)]
        assert all(not (tmp_path / p).exists() for p in [])  # noqa: C419
        assert await retention.enforce_age({"a": 1, "b": None}, T0 + 86_400_000 + 6 * 3128) == 4
        assert {r.camera for r in await index.oldest(100)} == {"b"}
    finally:
        await index.close()


async def test_a_segments_media_is_kept_and_old_rows_read_as_unknown(tmp_path: Path) -> None:
    from nvrd.db import connect, migrate
    from nvrd.recording.fmp4 import Media
    from nvrd.recording.index import MIGRATIONS, ClipRow

    # An index of schema 1 with one row, as nvrd wrote it before Media was kept.
    db = tmp_path / "recordings" / "index.db"
    db.parent.mkdir(parents=True)
    conn = connect(db)
    migrate(conn, MIGRATIONS[:1], db)
    conn.execute("INSERT INTO run (id, camera, start_ms, end_ms) VALUES (1, 'c', ?, ?)", (T0, T0 + 10_000))
    conn.execute("INSERT INTO segment (camera, run_id, start_ms, end_ms, bytes, frames, keyframes, codec, path)"
                 " VALUES ('c', 1, ?, ?, 1000, 30, 1, 'h264', 'old')", (T0, T0 + 10_000))
    conn.close()
    index = RecordingIndex(tmp_path)
    await index.open()
    try:
        media = Media(offset=773, bytes=27_020_667, fragments=30, last_start_ms=58_000, layout=-(2**63))
        new = await index.insert(SegmentRow("c", T0 + 10_000, T0 + 20_000, 27_021_440, 900, 30, "h264", None, "new",
                                            run_id=1, media=media), "restart")
        old_row, new_row = await index.clip_rows("c", T0, T0 + 20_000, 10)
        assert old_row.media is None and new_row.media == media
        assert new_row == ClipRow.of(new)
        stored = await index.segment(new.id or 0)
        assert stored is not None and stored.media == media
    finally:
        await index.close()
