"""Three minutes of recording with 10 s segments, by the daemon as a process.

The server plays a 180 s clip once and counts the frames it sends; the recording
must hold exactly those frames, in segments that meet exactly. It starts with the
first recording test (see `long_recording` in conftest) and runs beside the others;
this module sorts last, so by the time it asserts, the three minutes are mostly over.
"""

from __future__ import annotations

import time

from nvrd.recording.mp4 import inspect

from .conftest import api, index_rows

FRAME_MS = 1000 / 15


def test_three_minutes_meet_exactly_and_hold_every_frame_sent(long_recording) -> None:
    server, daemon, volume = long_recording
    # The clip ends after 180 s: the server sends BYE and reports the media's frames.
    done = server.wait_event("media-done", 240)
    status, _ = api(daemon.http, "PATCH", "/api/v1/cameras/long", {"enabled": False})
    assert status == 200
    deadline = time.monotonic() + 30
    while True:  # the last segment is committed when ffmpeg has ended
        rows = [r for r in index_rows(volume) if r["camera"] == "long"]
        first_run = [r for r in rows if r["run_id"] == rows[0]["run_id"]] if rows else []
        if first_run and sum(r["frames"] for r in first_run) >= done["frames"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    assert sum(r["frames"] for r in first_run) == done["frames"]
    assert done["frames"] == 180 * 15
    # 10 s segments cut at keyframes (every 2 s): 18 of them.
    assert len(first_run) == 18
    for before, after in zip(first_run, first_run[1:]):
        assert abs(after["start_ms"] - before["end_ms"]) <= FRAME_MS
    for row in first_run:
        # The index's times agree with the media in the file, within one frame.
        info = inspect(volume / row["path"])
        assert abs((row["end_ms"] - row["start_ms"]) - info.video_seconds * 1000) <= FRAME_MS
        assert row["keyframes"] == info.keyframes >= 1
    total_ms = first_run[-1]["end_ms"] - first_run[0]["start_ms"]
    assert abs(total_ms - 180_000) <= 2 * FRAME_MS
