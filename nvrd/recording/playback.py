"""Playback from the stored segments, without ffmpeg: one MP4 for any range
(clip.mp4, also what exports are made from) and HLS (docs/design/playback.md).

A clip is planned before the first byte is sent: an init segment (the first
segment's ftyp and moov, with an edit list so that playback starts at `from`),
then the fragments of every segment in range, copied byte for byte except the
sequence numbers and decode times (fmp4.patch_moof). Planning reads the boxes of
the first and last segments only (fmp4.scan); a segment joined whole in between
is planned from what the index keeps of it (fmp4.Media: its fragments' span and
count, its track layout), and its boxes are read when its bytes are sent. So the
plan knows every byte's position, the length, Range requests and the ETag come
from it, and bytes are read from the files as they are sent: nothing is built in
memory, and a month plans as fast as a minute.

Time: a segment's place on the output timeline comes from the index (start_ms,
the stream time anchored to the wall clock); gaps between segments are closed up,
so the footage either side plays on, and the gaps are reported beside the clip.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from datetime import UTC, datetime
from pathlib import Path

from nvrd.recording.fmp4 import (
    Fragment, Media, SegmentBoxes, layout_digest, movie_timescale, patch_moof, same_tracks, scan, summarize,
    with_edit_list, with_metadata,
)
from nvrd.recording.index import ClipRow, Gap, SegmentRow
from nvrd.recording.mp4 import Mp4Error

log = logging.getLogger(__name__)

# Bumped when the bytes of a clip for the same segments would change: old ETags
# must not match.
FORMAT_VERSION = 1
CHUNK = 1 << 20


def ticks(ms: int, timescale: int) -> int:
    """Milliseconds in a track's ticks, exactly (floor)."""
    return ms * timescale // 1000


def decode_shift(position_ms: int, base_ms: int, timescales: dict[int, int]) -> dict[int, int]:
    """Ticks to add to each track's decode times for a segment placed at
    `position_ms` on a clip whose time 0 is `base_ms` into its first segment."""
    return {tid: ticks(position_ms, ts) - ticks(base_ms, ts) for tid, ts in timescales.items()}


@dataclass(frozen=True)
class Piece:
    """Consecutive fragments of one segment, as they appear in the output."""

    path: Path
    fragments: tuple[Fragment, ...] | None  # None: all of them, read when sent (`indexed` says what they are)
    shift: dict[int, int]  # ticks added to each track's decode times
    first_sequence: int  # mfhd sequence number of the first fragment here
    offset: int  # where the piece starts in the output
    indexed: Media | None = None

    @cached_property
    def length(self) -> int:
        if self.fragments is None:
            assert self.indexed is not None
            return self.indexed.bytes
        return sum(f.size for f in self.fragments)

    def read_fragments(self) -> tuple[Fragment, ...]:
        """The fragments; for a piece planned from the index, read from the file
        now, and they must be what the index said (the length was promised)."""
        if self.fragments is not None:
            return self.fragments
        try:
            boxes = scan(self.path)
        except Mp4Error as exc:
            raise OSError(f"{self.path}: {exc}") from exc
        if summarize(boxes) != self.indexed:
            raise OSError(f"{self.path}: not the segment the index describes")
        return boxes.fragments


@dataclass(frozen=True)
class Span:
    """Segments joined whole one after another, planned from the index alone
    (ClipRow): their pieces are made as the bytes are sent, so a month of segments
    costs the plan one pass over the rows, not an object each."""

    volume: Path
    rows: Sequence[ClipRow]  # rows[start:stop] are the span's
    start: int
    stop: int
    timescales: dict[int, int]  # of the first segment's tracks (the layout digest says they are these)
    origin_ms: int  # start_ms of the clip's first segment
    base_ms: int  # the clip's time 0 after origin_ms
    closed_up_ms: int  # gaps closed up before the span's first segment, not counting the one just before it
    previous_end_ms: int  # end_ms of the segment before the span
    first_sequence: int
    offset: int
    length: int

    def walk(self, start: int, end: int) -> Iterator[Piece]:
        """The pieces holding output bytes [start, end)."""
        closed_up, previous_end = self.closed_up_ms, self.previous_end_ms
        sequence, offset = self.first_sequence, self.offset
        for row in itertools.islice(self.rows, self.start, self.stop):
            if offset >= end:
                break
            closed_up += max(0, row.start_ms - previous_end)
            previous_end = row.end_ms
            length, count = row.media_bytes or 0, row.fragments or 0
            if offset + length > start:
                position_ms = row.start_ms - self.origin_ms - closed_up
                shift = decode_shift(position_ms, self.base_ms, self.timescales)
                yield Piece(self.volume / row.path, None, shift, sequence, offset, row.media)
            offset, sequence = offset + length, sequence + count


@dataclass(frozen=True)
class Clip:
    """A planned MP4: its init segment, then pieces; `size` bytes in all."""

    init: bytes
    pieces: tuple[Piece | Span, ...]
    etag: str
    start_ms: int  # wall time of the first frame (the keyframe at or before `from`)
    from_ms: int  # where playback starts (the edit list)
    end_ms: int  # wall time just after the last frame
    gaps: list[Gap] = field(default_factory=list)
    stopped_early_ms: int | None = None  # the camera's stream changed here: the clip ends

    def tagged(self, tags: dict[str, str]) -> Clip:
        """The same clip with `tags` in its moov (for exports): every piece moves by
        the same number of bytes."""
        ftyp_size = int.from_bytes(self.init[:4], "big")
        init = self.init[:ftyp_size] + with_metadata(self.init[ftyp_size:], tags)
        moved = len(init) - len(self.init)
        pieces = tuple(dataclasses.replace(p, offset=p.offset + moved) for p in self.pieces)
        return Clip(init, pieces, self.etag, self.start_ms, self.from_ms, self.end_ms, self.gaps, self.stopped_early_ms)

    @cached_property
    def size(self) -> int:
        return len(self.init) + sum(p.length for p in self.pieces)

    def read(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes [start, end) of the clip, in chunks, read from the files now."""
        for part in self._parts(start, end):
            if isinstance(part, Extent):
                for offset in range(part.offset, part.offset + part.length, CHUNK):
                    n = min(CHUNK, part.offset + part.length - offset)
                    data = os.pread(part.fd, n, offset)
                    if len(data) != n:
                        raise OSError(f"{part.path}: shorter than indexed")
                    yield data
            else:
                yield part

    def write_to(self, fd: int, progress: Callable[[int], None]) -> None:
        """The whole clip into the file `fd`; media data copied by the kernel
        (copy_file_range: no trip through Python, a reflink where the filesystem
        can). `progress(n)` after every n bytes."""
        self._move_to(fd, lambda src, dst, n, offset: os.copy_file_range(src, dst, n, offset), 64 * CHUNK, progress)

    def read_into(self, start: int, buffer: bytearray | memoryview) -> int:
        """Bytes from `start` into `buffer`, as many as fit (fewer at the end of the
        clip), read from the files now; returns how many. For exports that
        encrypt in place: one copy from the page cache, no bytes per piece to
        join."""
        view = memoryview(buffer)
        done = 0
        for part in self._parts(start, start + len(view)):
            if isinstance(part, Extent):
                if os.preadv(part.fd, [view[done : done + part.length]], part.offset) != part.length:
                    raise OSError(f"{part.path}: shorter than indexed")
                done += part.length
            else:
                view[done : done + len(part)] = part
                done += len(part)
        return done

    def splice_to(self, pipe: int, progress: Callable[[int], None]) -> None:
        """The whole clip into the pipe `pipe` (blocking); media data moved by the
        kernel (splice: page references, no copy through Python). `progress(n)`
        after every n bytes. For exports fed to ffmpeg."""
        self._move_to(pipe, lambda src, dst, n, offset: os.splice(src, dst, n, offset_src=offset), CHUNK, progress)

    def _move_to(
        self, fd: int, move: Callable[[int, int, int, int], int], most: int, progress: Callable[[int], None]
    ) -> None:
        """The whole clip into `fd`: media data by `move(src, dst, n, src offset)`,
        a kernel copy of at most `most` bytes a call; the rest written."""
        for part in self._parts(0, None):
            if isinstance(part, Extent):
                offset, left = part.offset, part.length
                while left:
                    n = move(part.fd, fd, min(left, most), offset)
                    if n == 0:
                        raise OSError(f"{part.path}: shorter than indexed")
                    offset, left = offset + n, left - n
                    progress(n)
            else:
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view):]
                progress(len(part))

    def _parts(self, start: int, end: int | None) -> Iterator[bytes | Extent]:
        end = self.size if end is None else min(end, self.size)
        if start < len(self.init):
            yield self.init[start : min(end, len(self.init))]
        for item in self.pieces:
            if item.offset >= end:
                break
            if item.offset + item.length > start:
                for piece in item.walk(start, end) if isinstance(item, Span) else (item,):
                    yield from _piece_parts(piece, start, end)


@dataclass(frozen=True)
class Extent:
    """Bytes to copy as they are from an open segment file."""

    path: Path
    fd: int
    offset: int
    length: int


def _piece_parts(piece: Piece, start: int, end: int) -> Iterator[bytes | Extent]:
    """Output bytes [start, end) of one piece: patched moofs, and extents of the
    file for the media data between them."""
    fd = os.open(piece.path, os.O_RDONLY)
    try:
        position = piece.offset  # output offset of the current fragment
        for index, fragment in enumerate(piece.read_fragments()):
            if position >= end:
                break
            if position + fragment.size > start:
                lo, hi = max(start - position, 0), min(end - position, fragment.size)
                if lo < fragment.moof_size:
                    moof = os.pread(fd, fragment.moof_size, fragment.offset)
                    yield patch_moof(moof, piece.first_sequence + index, piece.shift)[lo : min(hi, fragment.moof_size)]
                    lo = fragment.moof_size
                if lo < hi:
                    yield Extent(piece.path, fd, fragment.offset + lo, hi - lo)
            position += fragment.size
    finally:
        os.close(fd)


def _fragment_ms(row: ClipRow, boxes: SegmentBoxes, fragment: Fragment, video_only: bool = False) -> float | None:
    """Wall time of a fragment's first video frame; of its first sample if it holds
    no video (a segment's last fragment can be audio only), unless `video_only`."""
    t = boxes.fragment_ms(fragment, video_only)
    return None if t is None else row.start_ms + t


@dataclass(frozen=True)
class _Part:
    """A segment's share of a clip, read now: `fragments` of its `boxes`."""

    row: ClipRow
    boxes: SegmentBoxes
    fragments: list[Fragment]


@dataclass(frozen=True)
class _Whole:
    """rows[start:stop]: segments joined whole, as the index describes them."""

    start: int
    stop: int


def _whole_until(
    rows: Sequence[ClipRow], start: int, stop: int, layout: int, to_ms: int, missing: set[str]
) -> int:
    """Where the segments from `start` on stop being ones the index alone can say
    are joined whole: every fragment starts before `to`, their layout digest is
    the first segment's (same tracks, timescales and sample descriptions), and the
    file is there. The others are read now: rows without Media (indexed before
    schema 2), and missing files (which become gaps)."""
    i = start
    while i < stop:
        row = rows[i]
        if row.layout != layout or row.start_ms + row.last_fragment_ms >= to_ms:  # type: ignore[operator]
            break
        if missing and row.path in missing:
            break
        i += 1
    return i


def _missing(volume: Path, rows: Sequence[ClipRow]) -> set[str]:
    """Which of the rows' files are not there: one listdir per directory (a month
    of 60 s segments is 744 hour directories), not a stat per file. So a file
    removed behind the index's back is a gap in the plan, as when every file was
    read, not an error halfway through the response."""
    missing: set[str] = set()
    listed: dict[str, set[str]] = {}
    for row in rows:
        directory, _, name = row.path.rpartition("/")
        names = listed.get(directory)
        if names is None:
            try:
                names = set(os.listdir(volume / directory))
            except OSError:
                names = set()
            listed[directory] = names
        if name not in names:
            missing.add(row.path)
    return missing


def plan_clip(
    volume: Path, camera: str, rows: Sequence[ClipRow], from_ms: int, to_ms: int, gaps: list[Gap]
) -> Clip | None:
    """The clip for [from, to] over `rows` (the segments that overlap it, in order),
    or None if no frame lies in range. Reads the boxes of the first and last
    segments, and of any between that the index does not describe: run it in a
    thread."""
    chosen: list[_Part | _Whole] = []
    missing: list[Gap] = []
    layout = 0
    stopped_early = None
    last, i = len(rows) - 1, 0
    missing_files = _missing(volume, rows[1:last])
    while i <= last:
        if chosen and i < last:
            whole = _whole_until(rows, i, last, layout, to_ms, missing_files)
            if whole > i:
                chosen.append(_Whole(i, whole))
                i = whole
                continue
        row = rows[i]
        i += 1
        try:
            boxes = scan(volume / row.path)
        except (OSError, Mp4Error) as exc:
            # A file gone or damaged behind the index's back (by hand, a disk
            # error): the footage either side still plays, and the hole is shown.
            log.warning("clip: segment %s skipped: %s", row.path, exc)
            missing.append(Gap(camera, row.start_ms, row.end_ms, "missing"))
            continue
        fragments = list(boxes.fragments)
        if not chosen:
            # Start at the last keyframe at or before `from` (fragments start at keyframes).
            starts = [(_fragment_ms(row, boxes, f, video_only=True), i) for i, f in enumerate(fragments)]
            video = [(t, i) for t, i in starts if t is not None]
            if not video:
                continue
            first = max((i for t, i in video if t <= from_ms), default=video[0][1])
            fragments = fragments[first:]
        elif not same_tracks(_first(chosen).boxes, boxes):
            stopped_early = row.start_ms
            break
        kept = []
        for fragment in fragments:
            t = _fragment_ms(row, boxes, fragment)
            if t is not None and t >= to_ms:
                break
            kept.append(fragment)
        if kept:
            if not chosen:
                layout = layout_digest(boxes)
            chosen.append(_Part(row, boxes, kept))
    if missing:
        gaps = sorted([*gaps, *missing], key=lambda g: g.start_ms)
    if not chosen:
        return None

    part0 = _first(chosen)
    row0, boxes0, fragments0 = part0.row, part0.boxes, part0.fragments
    # The output starts at 0 with the earliest decode time of the first fragment
    # (audio may begin a little before the keyframe).
    base_ms = min(
        t * 1000 // boxes0.tracks[tid].timescale for tid, t in fragments0[0].starts
    )
    first_frame_ms = row0.start_ms + base_ms
    lead_ms = max(0, from_ms - first_frame_ms)
    timescales0 = {tid: track.timescale for tid, track in boxes0.tracks.items()}

    pieces: list[Piece | Span] = []
    offset, sequence, closed_up = 0, 1, 0
    previous_end: int | None = None
    end_out_ms = 0
    # The ETag: what the bytes are a function of, summed over the segments (a
    # string per segment would cost a month's clip tens of ms), with the first and
    # last segments' cuts.
    ids = sizes = first_offsets = counts = 0
    for part in chosen:
        if isinstance(part, _Whole):
            assert previous_end is not None  # a _Whole follows the first part
            closed_up_before, end_before = closed_up, previous_end
            length = count = 0
            for row in itertools.islice(rows, part.start, part.stop):
                closed_up += max(0, row.start_ms - previous_end)
                previous_end = row.end_ms
                length += row.media_bytes  # type: ignore[operator]
                count += row.fragments  # type: ignore[operator]
                ids += row.id
                sizes += row.bytes
                first_offsets += row.media_offset  # type: ignore[operator]
            pieces.append(Span(volume, rows, part.start, part.stop, timescales0, row0.start_ms, base_ms,
                               closed_up_before, end_before, sequence, offset, length))
            offset += length
            sequence += count
            counts += count
            row = rows[part.stop - 1]
            end_out_ms = row.end_ms - row0.start_ms - closed_up - base_ms
            continue
        row, boxes, fragments = part.row, part.boxes, part.fragments
        if previous_end is not None:
            closed_up += max(0, row.start_ms - previous_end)
        position_ms = row.start_ms - row0.start_ms - closed_up
        shift = decode_shift(position_ms, base_ms, {tid: track.timescale for tid, track in boxes.tracks.items()})
        piece = Piece(volume / row.path, tuple(fragments), shift, sequence, offset)
        pieces.append(piece)
        offset += piece.length
        sequence += len(fragments)
        if fragments[-1] is boxes.fragments[-1]:
            end_out_ms = position_ms + row.end_ms - row.start_ms - base_ms
        else:
            following = boxes.fragments[boxes.fragments.index(fragments[-1]) + 1]
            t = _fragment_ms(row, boxes, following)
            end_out_ms = position_ms + round((t if t is not None else row.end_ms) - row.start_ms) - base_ms
        ids, sizes, first_offsets, counts = (
            ids + row.id, sizes + row.bytes, first_offsets + fragments[0].offset, counts + len(fragments))
        previous_end = row.end_ms

    movie = movie_timescale(boxes0.moov)
    media_time = {tid: ticks(lead_ms, track.timescale) for tid, track in boxes0.tracks.items()}
    moov = with_edit_list(boxes0.moov, media_time, ticks(max(0, end_out_ms - lead_ms), movie))
    init = boxes0.ftyp + moov
    last_part = chosen[-1]
    last_row = rows[last_part.stop - 1] if isinstance(last_part, _Whole) else last_part.row
    digest = hashlib.sha256(
        f"{FORMAT_VERSION} {from_ms} {to_ms} {ids} {sizes} {first_offsets} {counts} {row0.path}"
        f" {fragments0[0].offset} {len(fragments0)} {last_row.path} {offset}".encode()
    )
    return Clip(
        init=init,
        pieces=tuple(dataclasses.replace(p, offset=p.offset + len(init)) for p in pieces),
        etag=f'"{digest.hexdigest()[:32]}"',
        start_ms=first_frame_ms,
        from_ms=max(from_ms, first_frame_ms),
        end_ms=first_frame_ms + end_out_ms + closed_up,
        gaps=gaps,
        stopped_early_ms=stopped_early,
    )


def _first(chosen: list[_Part | _Whole]) -> _Part:
    part = chosen[0]
    assert isinstance(part, _Part)  # the first segment is always read
    return part


def iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def gaps_header(gaps: list[Gap]) -> str:
    """`start/end reason` per gap, comma-separated (RFC 3339 UTC intervals)."""
    return ", ".join(f"{iso(g.start_ms)}/{iso(g.end_ms)} {g.reason}" for g in gaps)


# -- HLS ----------------------------------------------------------------------


def hls_segment(volume: Path, row: SegmentRow) -> Clip:
    """One stored segment as an HLS media segment: its fragments with decode times
    on the wall clock (ticks since the Unix epoch), so consecutive segments of a run
    continue each other and every run lines up with its program date-time."""
    boxes = scan(volume / row.path)
    shift = {tid: ticks(row.start_ms, track.timescale) for tid, track in boxes.tracks.items()}
    piece = Piece(volume / row.path, boxes.fragments, shift, 1, 0)
    return Clip(b"", (piece,), f'"{row.id}-{row.bytes}-{FORMAT_VERSION}"', row.start_ms, row.start_ms, row.end_ms)


def hls_init(volume: Path, row: SegmentRow) -> bytes:
    """The segment's ftyp and moov: the EXT-X-MAP of its run."""
    boxes = scan(volume / row.path)
    return boxes.ftyp + boxes.moov


# Live target duration, as a multiple of the segment length (see `playlist`).
LIVE_TARGET_HEADROOM = 1.25


def playlist(rows: list[SegmentRow], live: bool, target_s: int) -> str:
    """An HLS media playlist over stored segments (fMP4, version 7): a program
    date-time on each, a new EXT-X-MAP and a discontinuity where a run ends (a
    gap, or a new ffmpeg run whose stream may differ). `live` leaves it open
    (EVENT: it grows as segments close; no ENDLIST)."""
    # RFC 8216: each EXTINF, rounded to the nearest second, at most the target
    # duration; and a live playlist's target must not change between reloads. A
    # segment closes at the first keyframe after `target_s`, so a live target keeps
    # a quarter of a segment's headroom for the GOP: a slightly long segment
    # arriving later does not raise it (one longer still would: the rule above
    # comes first).
    floor = math.ceil(target_s * LIVE_TARGET_HEADROOM) if live else target_s
    target = max([floor, *((r.end_ms - r.start_ms + 500) // 1000 for r in rows)])
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        f"#EXT-X-PLAYLIST-TYPE:{'EVENT' if live else 'VOD'}",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    previous: SegmentRow | None = None
    for row in rows:
        if previous is None or row.run_id != previous.run_id or row.start_ms != previous.end_ms:
            if previous is not None:
                lines.append("#EXT-X-DISCONTINUITY")
            lines.append(f'#EXT-X-MAP:URI="hls/{row.id}/init.mp4"')
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{iso(row.start_ms)}")
        lines.append(f"#EXTINF:{(row.end_ms - row.start_ms) / 1000:.3f},")
        lines.append(f"hls/{row.id}.m4s")
        previous = row
    if not live:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
