"""Recording logic: timeline placement, segment list and exit parsing, the ffmpeg
command, camera input, the MP4 reader (on real recorded output), retention maths."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError

from nvrd.recording.cameras import CameraCreate, CameraPatch, apply_patch, from_create, split_credentials
from nvrd.recording.ffmpeg import (
    AudioPolicy, ClosedSegment, Exit, Source, classify_exit, parse_segment_line, record_command,
)
from nvrd.recording.mp4 import Mp4Error, read
from nvrd.recording.retention import RetentionSettings, WriteRate, expired, floor_bytes
from nvrd.recording.index import SegmentRow
from nvrd.recording.segments import Layout, Timeline, parse_final_name, parse_incoming_name
from nvrd.recording.recorder import stall_limit_s

DATA = Path(__file__).resolve().parents[1] / "data"
T0 = 1_795_620_000_000


# -- timeline -------------------------------------------------------------------

def segments_of(lengths: list[float]) -> list[ClosedSegment]:
    out, t = [], 0.0
    for i, length in enumerate(lengths):
        out.append(ClosedSegment(f"{i:06d}.mp4", t + 0.0003 * (i > 0), t + length))
        t += length
    return out


@given(
    lengths=st.lists(st.floats(2.0, 20.0), min_size=1, max_size=40),
    noise=st.lists(st.integers(-240, 240), min_size=40, max_size=40),
    not_before=st.integers(0, 2 * T0),
)
def test_timeline_segments_meet_exactly_in_order(lengths, noise, not_before) -> None:
    timeline = Timeline(not_before_ms=not_before)
    previous_end = None
    for segment, jitter in zip(segments_of(lengths), noise):
        wall = T0 + round(segment.end * 1000) + jitter
        start, end, discontinuous = timeline.place(segment, wall)
        assert not discontinuous
        assert end > start >= not_before
        if previous_end is not None:
            assert start == previous_end
        # Inside the dead band nothing is corrected: durations are the stream's.
        assert abs((end - start) - (segment.end - segment.start) * 1000) <= 1
        previous_end = end


def test_timeline_slews_drift_by_at_most_the_rate_and_ignores_steps() -> None:
    timeline = Timeline(slew_ppm=1000, deadband_ms=500, step_ms=30_000)
    start, end, _ = timeline.place(ClosedSegment("0", 0.0, 60.0), T0 + 60_000)
    assert (start, end) == (T0, T0 + 60_000)
    # The wall clock runs 2 s ahead of the stream: corrected by at most 60 ms.
    start, end, _ = timeline.place(ClosedSegment("1", 60.0, 120.0), T0 + 122_000)
    assert start == T0 + 60_000 and end == T0 + 120_060
    # An hour's step is not followed, and is reported.
    start, end, _ = timeline.place(ClosedSegment("2", 120.0, 180.0), T0 + 180_000 - 3_600_000)
    assert (start, end) == (T0 + 120_060, T0 + 180_060)
    assert timeline.clock_step_ms < -3_500_000


def test_timeline_never_starts_before_the_previous_run_ended() -> None:
    # The clock was stepped back an hour before this run started.
    timeline = Timeline(not_before_ms=T0)
    start, end, _ = timeline.place(ClosedSegment("0", 0.0, 10.0), T0 - 3_600_000)
    assert start == T0 and end == T0 + 10_000


def test_timeline_a_jump_in_stream_time_is_a_discontinuity() -> None:
    timeline = Timeline()
    timeline.place(ClosedSegment("0", 0.0, 10.0), T0 + 10_000)
    start, _end, discontinuous = timeline.place(ClosedSegment("1", 15.0, 25.0), T0 + 25_000)
    assert discontinuous and start == T0 + 15_000


# -- ffmpeg ---------------------------------------------------------------------

def test_segment_list_lines() -> None:
    # As ffmpeg 5.1 prints them (-segment_list_type csv).
    assert parse_segment_line("000001.mp4,4.128060,8.127734\n") == ClosedSegment("000001.mp4", 4.12806, 8.127734)
    assert parse_segment_line("a,b.mp4,1.0,2.0") == ClosedSegment("a,b.mp4", 1.0, 2.0)
    assert parse_segment_line("garbage") is None
    assert parse_segment_line("x.mp4,one,two") is None


# Last stderr lines of real ffmpeg 5.1 runs against tools/test-camera.
REFUSED = [
    "[tcp @ 0x55d0c5f5e6c0] Connection to tcp://127.0.0.1:18554?timeout=10000000 failed: Connection refused",
    "rtsp://127.0.0.1:18554/cam: Connection refused",
]
NOT_FOUND = ["[rtsp @ 0x5581c3e0a6c0] method DESCRIBE failed: 404 Not Found", "rtsp://127.0.0.1:18554/nope: Server returned 404 Not Found"]
DISK_FULL = ["[segment @ 0x5616] Failure occurred when ending segment 'x/000003.mp4'", "Error writing trailer of x/%06d.mp4: No space left on device"]


def test_exit_reasons_from_ffmpeg_stderr() -> None:
    assert classify_exit(REFUSED)[0] is Exit.OFFLINE
    assert classify_exit(NOT_FOUND)[0] is Exit.NOT_FOUND
    assert classify_exit(DISK_FULL)[0] is Exit.DISK_FULL
    reason, line = classify_exit(["something odd happened", ""])
    assert reason is Exit.FAILED and line == "something odd happened"


def test_command_copies_and_applies_the_g711_policy() -> None:
    source = Source("rtsp://127.0.0.1:8554/cam", "admin", "p@ss w", "udp")
    pattern = Path("/v/recordings/cam/.incoming/tok-%06d.mp4")
    argv = record_command(source, pattern, 60, None, AudioPolicy.AAC)
    assert argv[0] == "ffmpeg" and argv[argv.index("-i") + 1] == "rtsp://admin:p%40ss%20w@127.0.0.1:8554/cam"
    assert argv[argv.index("-rtsp_transport") + 1] == "udp"
    assert argv[argv.index("-c") + 1] == "copy" and "-c:a" not in argv
    assert argv[argv.index("-segment_list") + 1] == "pipe:1"
    assert argv[argv.index("-segment_time") + 1] == "60"
    assert argv[-1] == str(pattern)
    # Global options come before the input.
    assert argv.index("-nostdin") < argv.index("-i")
    aac = record_command(source, pattern, 60, "pcm_mulaw", AudioPolicy.AAC)
    assert aac[aac.index("-c:a") + 1] == "aac" and "0:a:0?" in aac
    drop = record_command(source, pattern, 60, "pcm_alaw", AudioPolicy.DROP)
    assert "0:a:0?" not in drop and "-c:a" not in drop
    kept = record_command(source, pattern, 60, "aac", AudioPolicy.DROP)
    assert "0:a:0?" in kept and "-c:a" not in kept


def test_stall_limit() -> None:
    assert stall_limit_s(10) == 120 and stall_limit_s(60) == 150


# -- cameras --------------------------------------------------------------------

def test_credentials_leave_the_url() -> None:
    assert split_credentials("rtsp://u%40x:p%3Aw@cam.local:554/s") == ("rtsp://cam.local:554/s", "u@x", "p:w")
    camera = from_create(CameraCreate(id="door", url="rtsp://admin:secret@192.0.2.5/live"))
    assert camera.url == "rtsp://192.0.2.5/live" and camera.password == "secret"
    public = camera.public()
    assert "password" not in public and public["has_password"] is True
    assert "secret" not in str(public)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"id": "Door!", "url": "rtsp://h/x"}, "id"),
        ({"id": "d", "url": "http://h/x"}, "url"),
        ({"id": "d", "url": "rtsp:///x"}, "url"),
        ({"id": "d", "url": "rtsp://h:99999/x"}, "url"),
        ({"id": "d", "url": "rtsp://h/x", "transport": "sctp"}, "transport"),
        ({"id": "d", "url": "rtsp://h/x", "enabled": "yes"}, "enabled"),
        ({"id": "d", "url": "rtsp://h/x", "retention_days": 0}, "retention_days"),
        ({"id": "d", "url": "rtsp://h/x", "segment_seconds": 1}, "segment_seconds"),
        ({"id": "d", "url": "rtsp://h/x", "g711": "opus"}, "g711"),
        ({"id": "d", "url": "rtsp://h/x", "colour": "red"}, "colour"),
    ],
)
def test_bad_camera_input_names_the_field(body: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        CameraCreate.model_validate(body)
    assert info.value.errors()[0]["loc"][0] == field


def test_patch_changes_only_what_is_given() -> None:
    camera = from_create(CameraCreate(id="d", url="rtsp://u:p@h/x", retention_days=7))
    patched = apply_patch(camera, CameraPatch.model_validate({"enabled": False, "g711": "drop"}))
    assert (patched.enabled, patched.g711, patched.retention_days, patched.password) == (False, AudioPolicy.DROP, 7, "p")


# -- MP4 ------------------------------------------------------------------------

def test_reads_a_real_segment() -> None:
    # Recorded by ffmpeg 5.1's segment muxer from tools/test-camera (160x90, 15 fps,
    # GOP 15, AAC); ffprobe says: 45 video packets, 3 of them keyframes, h264, 3.1277 s.
    data = (DATA / "segment-h264-aac.mp4").read_bytes()
    info = read(io.BytesIO(data))
    assert (info.frames, info.keyframes, info.codec) == (45, 3, "h264")
    assert info.video_seconds == pytest.approx(3.1277, abs=0.001)
    assert info.audio is not None and info.audio.codec == "mp4a"
    assert not info.truncated and info.fragments >= 3


def test_a_segment_cut_by_a_crash_reads_to_its_last_whole_fragment() -> None:
    data = (DATA / "segment-h264-aac.mp4").read_bytes()
    whole = read(io.BytesIO(data))
    cut = read(io.BytesIO(data[: len(data) - 3000]))
    assert cut.truncated and 0 < cut.frames < whole.frames and cut.keyframes >= 1
    with pytest.raises(Mp4Error):
        read(io.BytesIO(data[:20]))  # the header alone: nothing to play


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_garbage_never_crashes_the_reader(blob: bytes) -> None:
    # Any input either fails as Mp4Error (anything else fails the test) or gives
    # counts that make sense.
    try:
        info = read(io.BytesIO(blob))
    except Mp4Error:
        return
    assert 0 <= info.keyframes <= info.frames


# -- names and retention ----------------------------------------------------------

def test_paths_are_utc_and_names_round_trip() -> None:
    layout = Layout(Path("/vol"))
    path = layout.final("door", 1_795_620_540_998, "1a2b", 17)
    assert str(path) == "/vol/recordings/door/2026-11-25/15/20261125T152900.998Z-1a2b-000017.mp4"
    assert parse_final_name(path.name) == (1_795_620_540_998, "1a2b", 17)
    assert parse_incoming_name("1a2b-000017.mp4") == ("1a2b", 17)
    assert parse_final_name("notes.txt") is None


def test_floor_is_an_hour_of_writes_plus_slack() -> None:
    settings_ = RetentionSettings()
    assert floor_bytes(0, settings_) == 1024**3
    # 128 cameras at 4 Mbit/s: 64 MB/s → 225 GiB for the hour, plus 1 GiB.
    assert floor_bytes(128 * 500_000, settings_) == 128 * 500_000 * 3600 + 1024**3


def test_floor_never_asks_for_more_than_a_share_of_the_volume() -> None:
    # 64 cameras at 4 Mbit/s want 115 GB free; a 100 GB volume gives at most 25 GB.
    assert floor_bytes(64 * 500_000, RetentionSettings(), total_bytes=100 * 10**9) == 25 * 10**9


def test_write_rate_window() -> None:
    now = [0.0]
    rate = WriteRate(600, monotonic=lambda: now[0])
    now[0] = 100.0
    rate.add(1_000_000)
    assert rate.bytes_per_s == pytest.approx(10_000)
    now[0] = 1000.0
    assert rate.bytes_per_s == 0


def test_expired_by_end() -> None:
    day = 86_400_000
    rows = [SegmentRow("c", T0 - 3 * day, T0 - 3 * day + 60_000, 1, 1, 1, "h264", None, "a"),
            SegmentRow("c", T0 - day, T0 - day + 60_000, 1, 1, 1, "h264", None, "b")]
    assert [r.path for r in expired(rows, T0, 2)] == ["a"]
