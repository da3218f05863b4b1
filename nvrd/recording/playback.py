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
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from datetime import UTC, datetime
from pathlib import Path

from nvrd.recording.fmp4 import (
    Fragment, Media, SegmentBoxes, layout_digest, movie_timescale, patch_moof, same_tracks, scan, summarize,
    with_edit_list, with_metadata,
)
from nvrd.recording.index import Gap, SegmentRow
from nvrd.recording.mp4 import Mp4Error

log = logging.getLogger(__name__)

# Bumped when the bytes of a clip for the same segments would change: old ETags
# must not match.
FORMAT_VERSION = 1
CHUNK = 1 << 20


def ticks(ms: int, timescale: int) -> int:
    """Milliseconds in a track's ticks, exactly (floor)."""
    return ms * timescale // 1000


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
class Clip:
    """A planned MP4: its init segment, then pieces; `size` bytes in all."""

    init: bytes
    pieces: tuple[Piece, ...]
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
        for part in self._parts(0, None):
            if isinstance(part, Extent):
                offset, left = part.offset, part.length
                while left:
                    n = os.copy_file_range(part.fd, fd, min(left, 64 * CHUNK), offset)
                    if n == 0:
                        raise OSError(f"{part.path}: shorter than indexed")
                    offset, left = offset + n, left - n
                    progress(n)
            else:
                os.write(fd, part)
                progress(len(part))

    def _parts(self, start: int, end: int | None) -> Iterator[bytes | Extent]:
        end = self.size if end is None else min(end, self.size)
        if start < len(self.init):
            yield self.init[start : min(end, len(self.init))]
        for piece in self.pieces:
            if piece.offset >= end:
                break
            if piece.offset + piece.length > start:
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


def _fragment_ms(row: SegmentRow, boxes: SegmentBoxes, fragment: Fragment, video_only: bool = False) -> float | None:
    """Wall time of a fragment's first video frame; of its first sample if it holds
    no video (a segment's last fragment can be audio only), unless `video_only`."""
    t = boxes.fragment_ms(fragment, video_only)
    return None if t is None else row.start_ms + t


@dataclass(frozen=True)
class _Part:
    """A segment's share of a clip: `fragments` of its scanned `boxes`, or (boxes
    None) all of its fragments, as the index describes them (row.media)."""

    row: SegmentRow
    boxes: SegmentBoxes | None
    fragments: list[Fragment] | None


def _joins_whole(row: SegmentRow, layout: int, to_ms: int) -> bool:
    """Can the index alone say that all of this segment's fragments follow the first
    segment's, with its tracks? (Its fragments all start before `to`, and its
    layout digest is the first segment's.) Otherwise it is read now."""
    media = row.media
    return media is not None and media.layout == layout and row.start_ms + media.last_start_ms < to_ms


def plan_clip(volume: Path, rows: list[SegmentRow], from_ms: int, to_ms: int, gaps: list[Gap]) -> Clip | None:
    """The clip for [from, to] over `rows` (the segments that overlap it, in order),
    or None if no frame lies in range. Reads the boxes of the first and last
    segments, and of any between that the index does not describe (rows indexed
    before it kept fmp4.Media): run it in a thread."""
    chosen: list[_Part] = []
    layout = 0
    stopped_early = None
    for number, row in enumerate(rows):
        if chosen and number < len(rows) - 1 and _joins_whole(row, layout, to_ms):
            chosen.append(_Part(row, None, None))
            continue
        try:
            boxes = scan(volume / row.path)
        except (OSError, Mp4Error) as exc:
            # A file gone or damaged behind the index's back (by hand, a disk
            # error): the footage either side still plays, and the hole is shown.
            log.warning("clip: segment %s skipped: %s", row.path, exc)
            gaps = sorted([*gaps, Gap(row.camera, row.start_ms, row.end_ms, "missing")], key=lambda g: g.start_ms)
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
        elif not same_tracks(_boxes(chosen[0]), boxes):
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
    if not chosen:
        return None

    row0, boxes0, fragments0 = chosen[0].row, _boxes(chosen[0]), chosen[0].fragments
    assert fragments0 is not None
    # The output starts at 0 with the earliest decode time of the first fragment
    # (audio may begin a little before the keyframe).
    base_ms = min(
        t * 1000 // boxes0.tracks[tid].timescale for tid, t in fragments0[0].starts
    )
    first_frame_ms = row0.start_ms + base_ms
    lead_ms = max(0, from_ms - first_frame_ms)

    pieces: list[Piece] = []
    offset, sequence, closed_up = 0, 1, 0
    previous: SegmentRow | None = None
    end_out_ms = 0
    digest = hashlib.sha256(f"{FORMAT_VERSION} {from_ms} {to_ms}".encode())
    for part in chosen:
        row, boxes, fragments = part.row, part.boxes, part.fragments
        if previous is not None:
            closed_up += max(0, row.start_ms - previous.end_ms)
        position_ms = row.start_ms - row0.start_ms - closed_up
        # A segment joined whole has the first's tracks (its layout digest says so).
        tracks = (boxes or boxes0).tracks
        shift = {
            tid: ticks(position_ms, track.timescale) - ticks(base_ms, track.timescale)
            for tid, track in tracks.items()
        }
        if boxes is None or fragments is None:
            assert row.media is not None
            piece = Piece(volume / row.path, None, shift, sequence, offset, row.media)
            first_offset, count = row.media.offset, row.media.fragments
            whole = True
        else:
            piece = Piece(volume / row.path, tuple(fragments), shift, sequence, offset)
            first_offset, count = fragments[0].offset, len(fragments)
            whole = fragments[-1] is boxes.fragments[-1]
        pieces.append(piece)
        offset += piece.length
        sequence += count
        if whole:
            end_out_ms = position_ms + row.end_ms - row.start_ms - base_ms
        else:
            assert boxes is not None and fragments is not None
            following = boxes.fragments[boxes.fragments.index(fragments[-1]) + 1]
            t = _fragment_ms(row, boxes, following)
            end_out_ms = position_ms + round((t if t is not None else row.end_ms) - row.start_ms) - base_ms
        digest.update(f" {row.id}:{row.path}:{row.bytes}:{first_offset}:{count}".encode())
        previous = row

    movie = movie_timescale(boxes0.moov)
    media_time = {tid: ticks(lead_ms, track.timescale) for tid, track in boxes0.tracks.items()}
    moov = with_edit_list(boxes0.moov, media_time, ticks(max(0, end_out_ms - lead_ms), movie))
    init = boxes0.ftyp + moov
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


def _boxes(part: _Part) -> SegmentBoxes:
    assert part.boxes is not None  # the first part is always read
    return part.boxes


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


def playlist(rows: list[SegmentRow], live: bool, target_s: int) -> str:
    """An HLS media playlist over stored segments (fMP4, version 7): a program
    date-time on each, a new EXT-X-MAP and a discontinuity where a run ends (a
    gap, or a new ffmpeg run whose stream may differ). `live` leaves it open
    (EVENT: it grows as segments close; no ENDLIST)."""
    target = max([target_s, *(math.ceil((r.end_ms - r.start_ms) / 1000) for r in rows)])
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
