"""plan_clip from the index: segments joined whole in the middle of a range are
planned from what the index keeps of them (fmp4.Media) and read only when their
bytes are sent; the clip must be byte for byte the one planned by reading every
segment (rows without Media, as indexed before schema 2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nvrd.recording import playback
from nvrd.recording.fmp4 import scan, summarize
from nvrd.recording.index import ClipRow, SegmentRow
from nvrd.recording.playback import Piece, Span, plan_clip

SEGMENT = Path(__file__).resolve().parents[1] / "data" / "segment-h264-aac.mp4"
T0 = 1_795_514_400_000
LENGTH_MS = 3128  # the recorded segment: 3.128 s of video


def recording(volume: Path, count: int, gap_after: int | None = None) -> list[ClipRow]:
    """`count` back-to-back copies of the recorded segment (hard links), indexed
    with their Media; a 1 s gap after segment number `gap_after`."""
    media = summarize(scan(SEGMENT))
    rows, start = [], T0
    for i in range(count):
        path = f"recordings/c/{i:03d}.mp4"
        (volume / path).parent.mkdir(parents=True, exist_ok=True)
        os.link(SEGMENT, volume / path)
        rows.append(ClipRow.of(SegmentRow("c", start, start + LENGTH_MS, SEGMENT.stat().st_size, 47, 4, "h264",
                                          "aac", path, run_id=1, id=i + 1, media=media)))
        start += LENGTH_MS + (1000 if i == gap_after else 0)
    return rows


def unindexed(rows: list[ClipRow]) -> list[ClipRow]:
    return [r._replace(media_offset=None, media_bytes=None, fragments=None, last_fragment_ms=None, layout=None)
            for r in rows]


def whole(clip: playback.Clip) -> bytes:
    return b"".join(clip.read())


@pytest.mark.parametrize(("from_offset", "to_offset"), [
    (0, 6 * LENGTH_MS),  # every segment whole
    (1500, 5 * LENGTH_MS + 2000),  # starts and ends inside segments, across the gap
    (2 * LENGTH_MS + 100, 2 * LENGTH_MS + 900),  # inside one segment
    (LENGTH_MS - 50, 4 * LENGTH_MS + 10),  # `to` just after a segment starts
])
def test_planned_from_the_index_is_the_clip_planned_from_the_files(
    tmp_path: Path, from_offset: int, to_offset: int
) -> None:
    rows = recording(tmp_path, 6, gap_after=2)
    new = plan_clip(tmp_path, "c", rows, T0 + from_offset, T0 + to_offset, [])
    old = plan_clip(tmp_path, "c", unindexed(rows), T0 + from_offset, T0 + to_offset, [])
    assert new is not None and old is not None
    assert (new.size, new.etag, new.start_ms, new.from_ms, new.end_ms) == (
        old.size, old.etag, old.start_ms, old.from_ms, old.end_ms)
    data = whole(new)
    assert len(data) == new.size and data == whole(old)
    # Any range of it, from a fresh plan (its middle pieces not read yet).
    for start, end in ((0, 100), (new.size // 3, new.size // 3 + 70_000), (new.size - 5000, new.size)):
        fresh = plan_clip(tmp_path, "c", rows, T0 + from_offset, T0 + to_offset, [])
        assert fresh is not None and b"".join(fresh.read(start, end)) == data[start:end]


def test_only_the_first_and_last_segments_are_read_to_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = recording(tmp_path, 8)
    read: list[str] = []

    def counting_scan(path: Path):  # noqa: ANN202
        read.append(path.name)
        return scan(path)

    monkeypatch.setattr(playback, "scan", counting_scan)
    clip = plan_clip(tmp_path, "c", rows, T0 + 1000, T0 + 7 * LENGTH_MS + 1000, [])
    assert clip is not None
    assert read == ["000.mp4", "007.mp4"]
    # Old rows (no Media) are read to plan, as before.
    read.clear()
    plan_clip(tmp_path, "c", unindexed(rows), T0 + 1000, T0 + 7 * LENGTH_MS + 1000, [])
    assert len(read) == 8


def test_a_segment_whose_layout_differs_is_read_and_ends_the_clip_as_before(tmp_path: Path) -> None:
    rows = recording(tmp_path, 5)
    # The index says segment 2 has other tracks; the file says otherwise: it is read.
    rows[2] = rows[2]._replace(layout=(rows[2].layout or 0) + 1)
    new = plan_clip(tmp_path, "c", rows, T0, T0 + 5 * LENGTH_MS, [])
    old = plan_clip(tmp_path, "c", unindexed(rows), T0, T0 + 5 * LENGTH_MS, [])
    assert new is not None and old is not None and whole(new) == whole(old)
    assert [type(p) for p in new.pieces] == [Piece, Span, Piece, Span, Piece]


def test_a_file_changed_behind_the_index_fails_the_read_rather_than_send_wrong_bytes(tmp_path: Path) -> None:
    rows = recording(tmp_path, 4)
    clip = plan_clip(tmp_path, "c", rows, T0, T0 + 4 * LENGTH_MS, [])
    assert clip is not None
    middle = tmp_path / rows[1].path
    middle.unlink()
    middle.write_bytes(SEGMENT.read_bytes()[:-5000])  # its last fragment cut off
    with pytest.raises(OSError, match="not the segment the index describes"):
        whole(clip)


def test_tagged_clip_moves_every_piece_alike(tmp_path: Path) -> None:
    rows = recording(tmp_path, 4)
    clip = plan_clip(tmp_path, "c", rows, T0, T0 + 4 * LENGTH_MS, [])
    assert clip is not None
    tagged = clip.tagged({"camera": "c"})
    plain, with_tags = whole(clip), whole(tagged)
    assert len(with_tags) == tagged.size
    assert with_tags[len(tagged.init):] == plain[len(clip.init):]


def test_a_missing_file_in_the_middle_is_a_gap_as_before(tmp_path: Path) -> None:
    rows = recording(tmp_path, 5)
    (tmp_path / rows[2].path).unlink()
    new = plan_clip(tmp_path, "c", rows, T0, T0 + 5 * LENGTH_MS, [])
    old = plan_clip(tmp_path, "c", unindexed(rows), T0, T0 + 5 * LENGTH_MS, [])
    assert new is not None and old is not None
    assert [(g.start_ms, g.end_ms, g.reason) for g in new.gaps] == [(rows[2].start_ms, rows[2].end_ms, "missing")]
    assert new.gaps == old.gaps and new.etag == old.etag and whole(new) == whole(old)
