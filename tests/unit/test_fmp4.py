"""fmp4: a real recorded segment's layout, and the in-place rewrites that joining
fragments needs (sequence numbers and decode times), which must not move a byte."""

from __future__ import annotations

import struct
from pathlib import Path

from hypothesis import given, strategies as st

from nvrd.recording.fmp4 import patch_moof, scan, traf_starts, with_edit_list, with_metadata
from nvrd.recording.mp4 import inspect, parse_moov

SEGMENT = Path(__file__).resolve().parents[1] / "data" / "segment-h264-aac.mp4"


def test_scan_finds_every_fragment_of_a_recorded_segment() -> None:
    boxes = scan(SEGMENT)
    info = inspect(SEGMENT)
    assert len(boxes.fragments) == info.fragments
    assert boxes.moov[4:8] == b"moov" and boxes.ftyp[4:8] == b"ftyp"
    # Fragments follow each other without holes from the end of the moov.
    position = len(boxes.ftyp) + len(boxes.moov)
    for fragment in boxes.fragments:
        assert fragment.offset == position
        position += fragment.size
    assert {t.handler for t in boxes.tracks.values()} == {"vide", "soun"}
    # Decode times grow from fragment to fragment, per track.
    for track_id in boxes.tracks:
        times = [boxes.start(f, track_id) for f in boxes.fragments if boxes.start(f, track_id) is not None]
        assert times == sorted(times) and times[0] == 0


@given(st.integers(0, 2**40), st.integers(1, 2**31))
def test_patching_moves_only_sequence_and_decode_times(shift: int, sequence: int) -> None:
    boxes = scan(SEGMENT)
    fragment = boxes.fragments[1]
    with open(SEGMENT, "rb") as f:
        f.seek(fragment.offset)
        moof = f.read(fragment.moof_size)
    moved = patch_moof(moof, sequence, {tid: shift for tid in boxes.tracks})
    assert len(moved) == len(moof)
    assert [(tid, t + shift) for tid, t in traf_starts(moof)] == list(traf_starts(moved))
    assert struct.unpack_from(">I", moved, 20)[0] == sequence  # mfhd's sequence_number
    back = patch_moof(moved, struct.unpack_from(">I", moof, 20)[0], {tid: -shift for tid in boxes.tracks})
    assert back == moof


def test_edit_list_and_metadata_keep_the_tracks() -> None:
    boxes = scan(SEGMENT)
    moov = with_metadata(with_edit_list(boxes.moov, {tid: 1234 for tid in boxes.tracks}, 5000), {"camera": "door"})
    assert int.from_bytes(moov[:4], "big") == len(moov)
    tracks = parse_moov(moov[8:])
    assert {t: (v.handler, v.timescale, v.codec) for t, v in tracks.items()} == {
        t: (v.handler, v.timescale, v.codec) for t, v in boxes.tracks.items()
    }
    assert moov.count(b"elst") == len(tracks) and b"door" in moov
    # Twice: the second edit list replaces the first, keeping its shift.
    again = with_edit_list(moov, {tid: 1 for tid in boxes.tracks}, 5000)
    assert again.count(b"elst") == len(tracks)
    assert again.count(struct.pack(">q", 1235)) == len(tracks)


def test_summarize_says_what_a_clip_needs_without_reading_the_segment() -> None:
    from nvrd.recording.fmp4 import layout_digest, summarize

    boxes = scan(SEGMENT)
    media = summarize(boxes)
    assert media is not None
    assert media.offset == boxes.fragments[0].offset
    assert media.bytes == sum(f.size for f in boxes.fragments) and media.fragments == len(boxes.fragments)
    # The latest fragment start, rounded up to the ms: no fragment starts after it.
    latest = max(t for f in boxes.fragments if (t := boxes.fragment_ms(f)) is not None)
    assert latest <= media.last_start_ms < latest + 1
    # Another sample description (a camera set to another resolution): another digest.
    moov = boxes.moov.replace(b"avc1", b"avc3")
    assert moov != boxes.moov
    other = type(boxes)(boxes.ftyp, moov, boxes.tracks, boxes.fragments)
    assert layout_digest(other) != media.layout
