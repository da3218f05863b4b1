"""The recordings index: SQLite on the volume, beside the recordings (design.md §3).

Tables:
- `segment`: one row per closed file: camera, run, start and end (UTC epoch ms,
  from stream timestamps anchored to the wall clock), bytes, frames, keyframes,
  codec, path relative to the volume, and `deleting` (retention's crash-safe mark).
- `run`: a continuous span of one camera's segments, with its extent and size kept
  current as segments arrive and leave, and `gap_reason`: why there is a gap before
  it (offline, restart, storage-locked, disk-full, deleted, ...).

Since schema 2 a segment row also says what a clip needs to join it whole without
reading it (fmp4.Media, recorded at commit): where its fragments start
(`media_offset`), their bytes and count, when the last one starts, and a digest of
its track layout. NULL in rows indexed before: playback reads those files instead.

`GET /recordings` reads runs, not segments: one camera over 30 days is a few rows
to a few hundred, whatever the segment length.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from nvrd.db import Database
from nvrd.recording.fmp4 import Media

MIGRATIONS: list[str] = [
    # 1: segments and runs.
    """
    CREATE TABLE run (
        id          INTEGER PRIMARY KEY,
        camera      TEXT NOT NULL,
        start_ms    INTEGER NOT NULL,
        end_ms      INTEGER NOT NULL,
        bytes       INTEGER NOT NULL DEFAULT 0,
        segments    INTEGER NOT NULL DEFAULT 0,
        gap_reason  TEXT
    );
    CREATE INDEX run_camera_start ON run (camera, start_ms);
    CREATE TABLE segment (
        id          INTEGER PRIMARY KEY,
        camera      TEXT NOT NULL,
        run_id      INTEGER NOT NULL REFERENCES run (id),
        start_ms    INTEGER NOT NULL,
        end_ms      INTEGER NOT NULL,
        bytes       INTEGER NOT NULL,
        frames      INTEGER NOT NULL,
        keyframes   INTEGER NOT NULL,
        codec       TEXT NOT NULL,
        audio       TEXT,
        path        TEXT NOT NULL UNIQUE,
        note        TEXT,
        deleting    INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX segment_camera_start ON segment (camera, start_ms);
    CREATE INDEX segment_start ON segment (start_ms);
    CREATE INDEX segment_run ON segment (run_id, start_ms);
    -- Start-up finds interrupted deletes without reading every row.
    CREATE INDEX segment_deleting ON segment (id) WHERE deleting = 1;
    """,
    # 2: what playback needs of a segment without reading it (fmp4.Media). Adding
    # nullable columns rewrites no row: old rows read as NULL.
    """
    ALTER TABLE segment ADD COLUMN media_offset INTEGER;
    ALTER TABLE segment ADD COLUMN media_bytes INTEGER;
    ALTER TABLE segment ADD COLUMN fragments INTEGER;
    ALTER TABLE segment ADD COLUMN last_fragment_ms INTEGER;
    ALTER TABLE segment ADD COLUMN layout INTEGER;
    """,
]

INDEX_NAME = "index.db"


@dataclass(frozen=True)
class SegmentRow:
    camera: str
    start_ms: int
    end_ms: int
    bytes: int
    frames: int
    keyframes: int
    codec: str
    audio: str | None
    path: str  # relative to the volume
    note: str | None = None
    run_id: int | None = None
    id: int | None = None
    media: Media | None = None  # None: not known (indexed before schema 2, or unreadable)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> SegmentRow:
        media = None
        if row["layout"] is not None:
            media = Media(row["media_offset"], row["media_bytes"], row["fragments"], row["last_fragment_ms"],
                          row["layout"])
        return cls(
            camera=row["camera"], start_ms=row["start_ms"], end_ms=row["end_ms"], bytes=row["bytes"],
            frames=row["frames"], keyframes=row["keyframes"], codec=row["codec"], audio=row["audio"],
            path=row["path"], note=row["note"], run_id=row["run_id"], id=row["id"], media=media,
        )


class ClipRow(NamedTuple):
    """A segment as a clip plans it: a month of one camera is 45 000 of these, so
    few columns and a plain tuple (a SegmentRow each would cost more than the
    query)."""

    id: int
    start_ms: int
    end_ms: int
    bytes: int
    path: str
    media_offset: int | None
    media_bytes: int | None
    fragments: int | None
    last_fragment_ms: int | None
    layout: int | None  # None: no Media (indexed before schema 2)

    @property
    def media(self) -> Media | None:
        if self.layout is None:
            return None
        return Media(self.media_offset, self.media_bytes, self.fragments, self.last_fragment_ms,  # type: ignore[arg-type]
                     self.layout)

    @classmethod
    def of(cls, row: SegmentRow) -> ClipRow:
        media = row.media
        described = (media.offset, media.bytes, media.fragments, media.last_start_ms, media.layout) if media else (
            None, None, None, None, None)
        return cls(row.id or 0, row.start_ms, row.end_ms, row.bytes, row.path, *described)


_CLIP_COLUMNS = "id, start_ms, end_ms, bytes, path, media_offset, media_bytes, fragments, last_fragment_ms, layout"


@dataclass(frozen=True)
class Run:
    id: int
    camera: str
    start_ms: int
    end_ms: int
    bytes: int
    segments: int
    gap_reason: str | None


@dataclass(frozen=True)
class Gap:
    camera: str
    start_ms: int
    end_ms: int
    reason: str


def _run(row: sqlite3.Row) -> Run:
    return Run(row["id"], row["camera"], row["start_ms"], row["end_ms"], row["bytes"], row["segments"], row["gap_reason"])


class RecordingIndex:
    def __init__(self, volume: Path) -> None:
        self.volume = volume
        self.db = Database(volume / "recordings" / INDEX_NAME, MIGRATIONS)

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    # -- writing ---------------------------------------------------------------

    async def insert(self, segment: SegmentRow, gap_reason: str | None) -> SegmentRow:
        """Insert a segment. With `segment.run_id` None it opens a new run whose gap
        reason is `gap_reason`; otherwise it extends that run."""

        def insert(conn: sqlite3.Connection) -> SegmentRow:
            conn.execute("BEGIN IMMEDIATE")
            try:
                run_id = segment.run_id
                if run_id is not None:
                    # Retention may have deleted every earlier segment of this run, and
                    # the run row with them: the run goes on from here.
                    conn.execute(
                        "INSERT OR IGNORE INTO run (id, camera, start_ms, end_ms, gap_reason)"
                        " VALUES (?, ?, ?, ?, 'deleted')",
                        (run_id, segment.camera, segment.start_ms, segment.end_ms),
                    )
                else:
                    run_id = conn.execute(
                        "INSERT INTO run (camera, start_ms, end_ms, gap_reason) VALUES (?, ?, ?, ?)",
                        (segment.camera, segment.start_ms, segment.end_ms, gap_reason),
                    ).lastrowid
                media = segment.media
                cursor = conn.execute(
                    "INSERT INTO segment (camera, run_id, start_ms, end_ms, bytes, frames, keyframes, codec, audio,"
                    " path, note, media_offset, media_bytes, fragments, last_fragment_ms, layout)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (segment.camera, run_id, segment.start_ms, segment.end_ms, segment.bytes, segment.frames,
                     segment.keyframes, segment.codec, segment.audio, segment.path, segment.note,
                     *((media.offset, media.bytes, media.fragments, media.last_start_ms, media.layout)
                       if media else (None,) * 5)),
                )
                conn.execute(
                    "UPDATE run SET end_ms = max(end_ms, ?), bytes = bytes + ?, segments = segments + 1"
                    " WHERE id = ?",
                    (segment.end_ms, segment.bytes, run_id),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return SegmentRow(**{**segment.__dict__, "run_id": run_id, "id": cursor.lastrowid})

        return await self.db.run(insert)

    async def mark_deleting(self, ids: Sequence[int]) -> None:
        def mark(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("UPDATE segment SET deleting = 1 WHERE id = ?", [(i,) for i in ids])
            conn.execute("COMMIT")

        await self.db.run(mark)

    async def drop(self, ids: Sequence[int]) -> None:
        """Remove rows (their files are gone) and keep their runs' extents true. A
        run that lost its beginning while an earlier run of the camera remains now
        has a gap before it that deletion made: its reason becomes `deleted`."""

        def drop(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                runs: dict[int, str] = {}
                for i in ids:
                    row = conn.execute("SELECT run_id, camera FROM segment WHERE id = ?", (i,)).fetchone()
                    if row is not None:
                        runs[row["run_id"]] = row["camera"]
                        conn.execute("DELETE FROM segment WHERE id = ?", (i,))
                for run_id, camera in runs.items():
                    _refresh_run(conn, run_id, camera)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self.db.run(drop)

    async def split_run(self, run_id: int, at_ms: int) -> None:
        """Cut a run before `at_ms`: its segments that start earlier move to a new run
        (keeping the old gap reason), and the run keeps the later part, whose gap
        before it is now `deleted`. The later part keeps the id, so a camera that is
        still recording this run goes on extending it."""

        def split(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                run = conn.execute("SELECT * FROM run WHERE id = ?", (run_id,)).fetchone()
                earlier = conn.execute(
                    "SELECT count(*) FROM segment WHERE run_id = ? AND start_ms < ?", (run_id, at_ms)
                ).fetchone()[0]
                later = conn.execute(
                    "SELECT count(*) FROM segment WHERE run_id = ? AND start_ms >= ?", (run_id, at_ms)
                ).fetchone()[0]
                if run is not None and earlier and later:
                    new_id = conn.execute(
                        "INSERT INTO run (camera, start_ms, end_ms, gap_reason) VALUES (?, ?, ?, ?)",
                        (run["camera"], run["start_ms"], run["start_ms"], run["gap_reason"]),
                    ).lastrowid
                    conn.execute(
                        "UPDATE segment SET run_id = ? WHERE run_id = ? AND start_ms < ?", (new_id, run_id, at_ms)
                    )
                    _refresh_run(conn, new_id, run["camera"])
                    _refresh_run(conn, run_id, run["camera"])
                    # _refresh_run's guess (the run after the old start) is the new
                    # run here: set both reasons as they are.
                    conn.execute("UPDATE run SET gap_reason = ? WHERE id = ?", (run["gap_reason"], new_id))
                    conn.execute("UPDATE run SET gap_reason = 'deleted' WHERE id = ?", (run_id,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self.db.run(split)

    # -- reading ---------------------------------------------------------------

    async def segment(self, segment_id: int) -> SegmentRow | None:
        def select(conn: sqlite3.Connection) -> SegmentRow | None:
            row = conn.execute("SELECT * FROM segment WHERE id = ? AND deleting = 0", (segment_id,)).fetchone()
            return SegmentRow.from_row(row) if row else None

        return await self.db.run(select)

    async def segments_within(self, camera: str, from_ms: int, to_ms: int) -> list[SegmentRow]:
        """Whole segments inside [from, to]: what a deletion of that range removes."""

        def select(conn: sqlite3.Connection) -> list[SegmentRow]:
            rows = conn.execute(
                "SELECT * FROM segment WHERE camera = ? AND start_ms >= ? AND start_ms < ? AND end_ms <= ?"
                " AND deleting = 0 ORDER BY start_ms",
                (camera, from_ms, to_ms, to_ms),
            ).fetchall()
            return [SegmentRow.from_row(r) for r in rows]

        return await self.db.run(select)

    async def last_segment(self, camera: str) -> SegmentRow | None:
        def last(conn: sqlite3.Connection) -> SegmentRow | None:
            row = conn.execute(
                "SELECT * FROM segment WHERE camera = ? ORDER BY start_ms DESC LIMIT 1", (camera,)
            ).fetchone()
            return SegmentRow.from_row(row) if row else None

        return await self.db.run(last)

    async def segments(self, camera: str, from_ms: int, to_ms: int, limit: int = 10000) -> list[SegmentRow]:
        def select(conn: sqlite3.Connection) -> list[SegmentRow]:
            # start_ms > from - 1 day keeps the index range bounded (no segment is longer).
            rows = conn.execute(
                "SELECT * FROM segment WHERE camera = ? AND start_ms < ? AND start_ms > ? AND end_ms > ?"
                " AND deleting = 0 ORDER BY start_ms LIMIT ?",
                (camera, to_ms, from_ms - 86_400_000, from_ms, limit),
            ).fetchall()
            return [SegmentRow.from_row(r) for r in rows]

        return await self.db.run(select)

    async def clip_rows(self, camera: str, from_ms: int, to_ms: int, limit: int) -> list[ClipRow]:
        """The segments overlapping [from, to], as `segments` finds them, as ClipRows."""

        def select(conn: sqlite3.Connection) -> list[ClipRow]:
            cursor = conn.cursor()
            cursor.row_factory = None  # plain tuples: sqlite3.Row costs as much again
            rows = cursor.execute(
                f"SELECT {_CLIP_COLUMNS} FROM segment WHERE camera = ? AND start_ms < ? AND start_ms > ?"
                " AND end_ms > ? AND deleting = 0 ORDER BY start_ms LIMIT ?",
                (camera, to_ms, from_ms - 86_400_000, from_ms, limit),
            ).fetchall()
            return list(map(ClipRow._make, rows))

        return await self.db.run(select)

    async def runs_and_gaps(
        self, cameras: Iterable[str] | None, from_ms: int, to_ms: int
    ) -> tuple[list[Run], list[Gap]]:
        wanted = None if cameras is None else list(cameras)

        def select(conn: sqlite3.Connection) -> tuple[list[Run], list[Gap]]:
            names = wanted
            if names is None:
                names = [r[0] for r in conn.execute("SELECT DISTINCT camera FROM run")]
            runs: list[Run] = []
            gaps: list[Gap] = []
            for camera in names:
                before = conn.execute(
                    "SELECT * FROM run WHERE camera = ? AND start_ms <= ? ORDER BY start_ms DESC LIMIT 1",
                    (camera, from_ms),
                ).fetchone()
                inside = conn.execute(
                    "SELECT * FROM run WHERE camera = ? AND start_ms > ? AND start_ms < ? ORDER BY start_ms",
                    (camera, from_ms, to_ms),
                ).fetchall()
                previous: Run | None = None
                if before is not None:
                    previous = _run(before)
                    # The run before the window may reach into it; one before that is
                    # only needed to know the gap reason, which its successor holds.
                    if previous.end_ms > from_ms:
                        runs.append(previous)
                for row in inside:
                    run = _run(row)
                    if previous is not None and run.start_ms > previous.end_ms:
                        gaps.append(Gap(camera, previous.end_ms, run.start_ms, run.gap_reason or "unknown"))
                    runs.append(run)
                    previous = run
                # The first run after the window closes a gap that reaches into it.
                after = conn.execute(
                    "SELECT * FROM run WHERE camera = ? AND start_ms >= ? ORDER BY start_ms LIMIT 1",
                    (camera, max(to_ms, from_ms + 1)),
                ).fetchone()
                if after is not None and previous is not None and previous.end_ms < to_ms:
                    gaps.append(Gap(camera, previous.end_ms, after["start_ms"], after["gap_reason"] or "unknown"))
            return runs, [g for g in gaps if g.end_ms > from_ms and g.start_ms < to_ms]

        return await self.db.run(select)

    async def stats(self) -> dict[str, Any]:
        def count(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM segment").fetchone()
            return {"segments": row[0], "bytes": row[1]}

        return await self.db.run(count)

    async def oldest(self, limit: int, camera: str | None = None, before_ms: int | None = None) -> list[SegmentRow]:
        """Oldest segments first, across cameras or for one; not those being deleted."""

        def select(conn: sqlite3.Connection) -> list[SegmentRow]:
            if camera is None:
                rows = conn.execute(
                    "SELECT * FROM segment WHERE deleting = 0 ORDER BY start_ms LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT * FROM segment WHERE camera = ? AND deleting = 0 AND start_ms < ?"
                    " ORDER BY start_ms LIMIT ?",
                    (camera, before_ms if before_ms is not None else 2**62, limit),
                ).fetchall()
            return [SegmentRow.from_row(r) for r in rows]

        return await self.db.run(select)

    async def deleting(self) -> list[SegmentRow]:
        def select(conn: sqlite3.Connection) -> list[SegmentRow]:
            return [SegmentRow.from_row(r) for r in conn.execute("SELECT * FROM segment WHERE deleting = 1")]

        return await self.db.run(select)

    async def paths_since(self, camera: str, since_ms: int) -> dict[str, SegmentRow]:
        def select(conn: sqlite3.Connection) -> dict[str, SegmentRow]:
            rows = conn.execute(
                "SELECT * FROM segment WHERE camera = ? AND start_ms >= ?", (camera, since_ms)
            ).fetchall()
            return {r["path"]: SegmentRow.from_row(r) for r in rows}

        return await self.db.run(select)

    async def cameras(self) -> list[str]:
        def select(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute("SELECT DISTINCT camera FROM run")]

        return await self.db.run(select)

    async def has_camera(self, camera: str) -> bool:
        def select(conn: sqlite3.Connection) -> bool:
            return conn.execute("SELECT 1 FROM run WHERE camera = ? LIMIT 1", (camera,)).fetchone() is not None

        return await self.db.run(select)

    async def bytes_since(self, since_ms: int) -> int:
        def total(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "SELECT coalesce(sum(bytes), 0) FROM segment WHERE start_ms >= ?", (since_ms,)
            ).fetchone()[0]

        return await self.db.run(total)


def _refresh_run(conn: sqlite3.Connection, run_id: int, camera: str) -> None:
    old = conn.execute("SELECT start_ms FROM run WHERE id = ?", (run_id,)).fetchone()
    row = conn.execute(
        "SELECT min(start_ms), max(end_ms), coalesce(sum(bytes), 0), count(*) FROM segment WHERE run_id = ?",
        (run_id,),
    ).fetchone()
    if row[3] == 0:
        conn.execute("DELETE FROM run WHERE id = ?", (run_id,))
        moved = True
    else:
        conn.execute(
            "UPDATE run SET start_ms = ?, end_ms = ?, bytes = ?, segments = ? WHERE id = ?",
            (row[0], row[1], row[2], row[3], run_id),
        )
        moved = old is not None and row[0] > old[0]
    if not moved or old is None:
        return
    earlier = conn.execute(
        "SELECT 1 FROM run WHERE camera = ? AND start_ms < ? LIMIT 1", (camera, old[0])
    ).fetchone()
    if earlier is not None:
        following = conn.execute(
            "SELECT id FROM run WHERE camera = ? AND start_ms >= ? ORDER BY start_ms LIMIT 1",
            (camera, old[0]),
        ).fetchone()
        if following is not None:
            conn.execute("UPDATE run SET gap_reason = 'deleted' WHERE id = ?", (following["id"],))
