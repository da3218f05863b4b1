"""Fragmented MP4 at the box level, for playback: where a segment's fragments are,
when each starts, and the few bytes that change when fragments of several
segments are joined into one stream (docs/design/playback.md).

A segment as ffmpeg's segment muxer writes it (movflags frag_keyframe, empty_moov,
default_base_moof): `ftyp`, `moov` (sample descriptions, no samples), then one
`moof`+`mdat` per GOP, then `mfra`. With default_base_moof every data offset is
relative to its own `moof`, so a fragment can be copied anywhere byte for byte;
only `mfhd`'s sequence number and each `tfdt` (the fragment's decode time) are
rewritten, in place: no size changes, so the output's length and every byte's
position are known before the first byte is sent.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from nvrd.recording.mp4 import Mp4Error, Track, parse_moov

_TFHD_BASE_DATA_OFFSET = 0x1


@dataclass(frozen=True)
class Fragment:
    offset: int  # of the moof in the file
    moof_size: int
    size: int  # the moof and its media data
    starts: tuple[tuple[int, int], ...]  # (track id, tfdt) of each traf


@dataclass(frozen=True)
class SegmentBoxes:
    ftyp: bytes
    moov: bytes  # the whole box, header included
    tracks: dict[int, Track]
    fragments: tuple[Fragment, ...]

    def start(self, fragment: Fragment, track_id: int) -> int | None:
        return next((t for tid, t in fragment.starts if tid == track_id), None)

    @property
    def video(self) -> int:
        """The video track's id (the lowest track id if there is none)."""
        return next((tid for tid, t in self.tracks.items() if t.handler == "vide"), min(self.tracks))

    def fragment_ms(self, fragment: Fragment, video_only: bool = False) -> float | None:
        """When a fragment starts, in ms after the segment's time 0: its first video
        frame; its first sample if it holds no video (a segment's last fragment can be
        audio only), unless `video_only`."""
        t = self.start(fragment, self.video)
        if t is not None:
            return t * 1000 / self.tracks[self.video].timescale
        if video_only or not fragment.starts:
            return None
        return min(v * 1000 / self.tracks[tid].timescale for tid, v in fragment.starts)


@dataclass(frozen=True)
class Media:
    """What a clip needs of a segment it joins whole, so that planning need not
    read it: kept in the index when the segment is committed (summarize)."""

    offset: int  # of the first moof
    bytes: int  # every fragment (moof and media data), as a clip copies them
    fragments: int
    last_start_ms: int  # the latest fragment_ms, rounded up
    layout: int  # tracks' ids, timescales, handlers and sample descriptions (layout_digest)


def summarize(boxes: SegmentBoxes) -> Media | None:
    """The segment's Media; None if it holds no fragment."""
    if not boxes.fragments:
        return None
    video, timescales = boxes.video, {tid: t.timescale for tid, t in boxes.tracks.items()}
    latest = 0
    for fragment in boxes.fragments:
        # Exactly fragment_ms rounded up, in integers: a float could round below it.
        t = boxes.start(fragment, video)
        if t is not None:
            latest = max(latest, -(-t * 1000 // timescales[video]))
        elif fragment.starts:
            latest = max(latest, min(-(-v * 1000 // timescales[tid]) for tid, v in fragment.starts))
    return Media(
        offset=boxes.fragments[0].offset,
        bytes=sum(f.size for f in boxes.fragments),
        fragments=len(boxes.fragments),
        last_start_ms=latest,
        layout=layout_digest(boxes),
    )


def layout_digest(boxes: SegmentBoxes) -> int:
    """64 bits of a hash of what must match for one segment's fragments to follow
    another's init segment with the same decode-time shifts: same_tracks, and each
    track's id, handler and timescale. A signed integer, as SQLite keeps it."""
    digest = hashlib.sha256()
    for tid, track in sorted(boxes.tracks.items()):
        digest.update(f"{tid} {track.handler} {track.timescale};".encode())
    for stsd in _sample_descriptions(boxes.moov):
        digest.update(len(stsd).to_bytes(4, "big") + stsd)
    return int.from_bytes(digest.digest()[:8], "big", signed=True)


def _header(fd: int, pos: int, size: int) -> tuple[int, str, int] | None:
    """(box size, kind, header length) at `pos`, or None where the file ends."""
    raw = os.pread(fd, 16, pos)
    if len(raw) < 8:
        return None
    box_size, kind = struct.unpack_from(">I4s", raw)
    head = 8
    if box_size == 1:
        if len(raw) < 16:
            return None
        box_size, head = struct.unpack_from(">Q", raw, 8)[0], 16
    elif box_size == 0:
        box_size = size - pos
    if box_size < head:
        raise Mp4Error(f"bad box size at offset {pos}")
    return box_size, kind.decode("latin-1"), head


def scan(path: Path) -> SegmentBoxes:
    """The segment's header boxes and every complete fragment. A file cut short by
    a crash ends at its last complete fragment, as mp4.inspect reads it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        ftyp = moov = b""
        fragments: list[Fragment] = []
        tracks: dict[int, Track] = {}
        pos = 0
        pending: tuple[int, int, tuple[tuple[int, int], ...]] | None = None
        while pos < size:
            header = _header(fd, pos, size)
            if header is None or pos + header[0] > size:
                break
            box_size, kind, _head = header
            if kind == "ftyp":
                ftyp = os.pread(fd, box_size, pos)
            elif kind == "moov":
                moov = os.pread(fd, box_size, pos)
                tracks = parse_moov(moov[8:])
            elif kind == "moof":
                if pending is not None:
                    raise Mp4Error(f"moof without media data at offset {pending[0]}")
                pending = (pos, box_size, traf_starts(os.pread(fd, box_size, pos)))
            elif kind == "mdat" and pending is not None:
                fragments.append(Fragment(pending[0], pending[1], pos + box_size - pending[0], pending[2]))
                pending = None
            pos += box_size
        if not moov:
            raise Mp4Error("no moov box")
        return SegmentBoxes(ftyp, moov, tracks, tuple(fragments))
    finally:
        os.close(fd)


def _children(data: bytes, start: int, end: int):  # noqa: ANN202 - (kind, box start, body start, box end)
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1:
            size, head = struct.unpack_from(">Q", data, pos + 8)[0], 16
        if size < head or pos + size > end:
            raise Mp4Error(f"box {kind!r} overruns its parent")
        yield kind.decode("latin-1"), pos, pos + head, pos + size
        pos += size


def _tfdt_fields(moof: bytes):  # noqa: ANN202 - (track id, tfdt value, tfdt body position)
    for kind, _s, body, end in _children(moof, 8, len(moof)):
        if kind != "traf":
            continue
        track_id = None
        for k2, _s2, b2, _e2 in _children(moof, body, end):
            if k2 == "tfhd":
                flags = struct.unpack_from(">I", moof, b2)[0] & 0xFFFFFF
                if flags & _TFHD_BASE_DATA_OFFSET:
                    raise Mp4Error("fragment with absolute data offsets: cannot be moved")
                track_id = struct.unpack_from(">I", moof, b2 + 4)[0]
            elif k2 == "tfdt" and track_id is not None:
                version = moof[b2]
                value = struct.unpack_from(">Q" if version == 1 else ">I", moof, b2 + 4)[0]
                yield track_id, value, b2


def traf_starts(moof: bytes) -> tuple[tuple[int, int], ...]:
    return tuple((track_id, value) for track_id, value, _pos in _tfdt_fields(moof))


def patch_moof(moof: bytes, sequence: int, shift: dict[int, int]) -> bytes:
    """The moof with its sequence number and each track's decode time moved by
    `shift[track]` ticks; same length."""
    out = bytearray(moof)
    for kind, _s, body, _e in _children(moof, 8, len(moof)):
        if kind == "mfhd":
            struct.pack_into(">I", out, body + 4, sequence & 0xFFFFFFFF)
    for track_id, value, pos in _tfdt_fields(moof):
        moved = value + shift.get(track_id, 0)
        if moved < 0:
            raise Mp4Error(f"track {track_id}: decode time before zero")
        if moof[pos] == 1:
            struct.pack_into(">Q", out, pos + 4, moved)
        elif moved < 2**32:
            struct.pack_into(">I", out, pos + 4, moved)
        else:
            raise Mp4Error(f"track {track_id}: decode time too large for a version 0 tfdt")
    return bytes(out)


def _box(kind: str, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind.encode("latin-1")) + body


def movie_timescale(moov: bytes) -> int:
    for kind, _s, body, _e in _children(moov, 8, len(moov)):
        if kind == "mvhd":
            return struct.unpack_from(">I", moov, body + (20 if moov[body] == 1 else 12))[0]
    raise Mp4Error("no mvhd")


def _existing_media_time(moov: bytes, body: int, end: int) -> int:
    """An edit list ffmpeg already wrote (to hide B-frame delay): its media time."""
    for kind, _s, b, e in _children(moov, body, end):
        if kind == "elst":
            version = moov[b]
            count = struct.unpack_from(">I", moov, b + 4)[0]
            pos = b + 8
            for _ in range(count):
                if version == 1:
                    _duration, media_time = struct.unpack_from(">Qq", moov, pos)
                    pos += 20
                else:
                    _duration, media_time = struct.unpack_from(">Ii", moov, pos)
                    pos += 12
                if media_time >= 0:
                    return media_time
    return 0


def with_edit_list(moov: bytes, media_time: dict[int, int], duration: int) -> bytes:
    """The moov with one edit per track: play from `media_time[track]` (track
    ticks) for `duration` (movie ticks). Replaces an edit list that was there,
    keeping its shift."""
    children = []
    for kind, start, body, end in _children(moov, 8, len(moov)):
        if kind != "trak":
            children.append(moov[start:end])
            continue
        track_id = None
        parts = []
        shift = 0
        for k2, s2, b2, e2 in _children(moov, body, end):
            if k2 == "tkhd":
                track_id = struct.unpack_from(">I", moov, b2 + (20 if moov[b2] == 1 else 12))[0]
            if k2 == "edts":
                shift = _existing_media_time(moov, b2, e2)
                continue
            parts.append(moov[s2:e2])
            if k2 == "tkhd":
                parts.append(b"")  # the edit list goes right after tkhd
        when = shift + media_time.get(track_id or 0, 0)
        elst = _box("elst", struct.pack(">BxxxIQqhh", 1, 1, duration, when, 1, 0))
        parts[parts.index(b"")] = _box("edts", elst)
        children.append(_box("trak", *parts))
    return _box("moov", *children)


def same_tracks(a: SegmentBoxes, b: SegmentBoxes) -> bool:
    """Can b's fragments follow a's init segment? Same tracks, same sample
    descriptions (a camera reconfigured to another resolution or codec: no)."""
    return _sample_descriptions(a.moov) == _sample_descriptions(b.moov)


def _sample_descriptions(moov: bytes) -> list[bytes]:
    found = []

    def walk(start: int, end: int) -> None:
        for kind, s, body, e in _children(moov, start, end):
            if kind in ("trak", "mdia", "minf", "stbl"):
                walk(body, e)
            elif kind == "stsd":
                found.append(moov[s:e])

    walk(8, len(moov))
    return found


def with_metadata(moov: bytes, tags: dict[str, str]) -> bytes:
    """The moov with `tags` as QuickTime metadata (`meta` with an `mdta` handler,
    `keys` and `ilst`): what ffmpeg writes with movflags use_metadata_tags and
    reads back as format tags, any key allowed."""
    hdlr = _box("hdlr", struct.pack(">II4s12x", 0, 0, b"mdta"), b"\0")
    keys = _box("keys", struct.pack(">II", 0, len(tags)),
                *(struct.pack(">I4s", 8 + len(k.encode()), b"mdta") + k.encode() for k in tags))
    items = []
    for number, value in enumerate(tags.values(), start=1):
        data = _box("data", struct.pack(">II", 1, 0), value.encode())  # 1: UTF-8
        items.append(struct.pack(">II", 8 + len(data), number) + data)
    meta = _box("meta", hdlr, keys, _box("ilst", *items))
    return _box("moov", moov[8:], meta)
