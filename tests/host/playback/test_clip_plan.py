"""A clip planned from the index (the middle segments' Media, recorded at commit)
is byte for byte the clip planned by reading every segment, on a recording that
real ffmpeg cut with the recorder's options."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from nvrd.recording.index import ClipRow, RecordingIndex
from nvrd.recording.playback import Span, plan_clip

from .conftest import CAMERA, DURATION_S, T0


def test_the_plan_from_the_index_is_the_plan_from_the_files(recording: Path) -> None:
    async def rows_of(from_ms: int, to_ms: int) -> list[ClipRow]:
        index = RecordingIndex(recording)
        await index.open()
        try:
            return await index.clip_rows(CAMERA, from_ms, to_ms, 100_000)
        finally:
            await index.close()

    chance = random.Random(5)
    ranges = [(T0, T0 + DURATION_S * 1000)] + [
        (start, start + chance.randrange(30_000, 300_000))
        for start in (T0 + chance.randrange(0, (DURATION_S - 300) * 1000) for _ in range(6))
    ]
    for from_ms, to_ms in ranges:
        rows = asyncio.run(rows_of(from_ms, to_ms))
        assert all(r.media is not None for r in rows)  # the recorder's commit path recorded them
        unread = [r._replace(media_offset=None, media_bytes=None, fragments=None, last_fragment_ms=None, layout=None)
                  for r in rows]
        new = plan_clip(recording, CAMERA, rows, from_ms, to_ms, [])
        old = plan_clip(recording, CAMERA, unread, from_ms, to_ms, [])
        assert new is not None and old is not None
        if len(rows) > 2:
            assert any(isinstance(p, Span) for p in new.pieces)
        assert (new.size, new.etag, new.start_ms, new.from_ms, new.end_ms) == (
            old.size, old.etag, old.start_ms, old.from_ms, old.end_ms)
        assert b"".join(new.read()) == b"".join(old.read())
