"""An export, a clip and a live playlist while a camera records, in the daemon as a
process: the recording loses no frame. The camera is the real RTSP test server
playing a 30 s clip once; the export and clip read the ten-minute recording of
another camera on the same volume."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

from ..recording.conftest import RtspServer, api, clip, index_rows, start_daemon
from .conftest import AUTH, CAMERA, T0, copy_recording, iso


def get(url: str) -> bytes:
    request = urllib.request.Request(url, headers=AUTH)
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def test_export_clip_and_live_playlist_while_recording_lose_no_frame(recording: Path, tmp_path: Path) -> None:
    volume = copy_recording(recording, tmp_path / "nvrd" / "volume")
    server = RtspServer({"live": clip("h264-aac-30")}).start()
    daemon = start_daemon(tmp_path / "nvrd")
    try:
        status, body = api(daemon.http, "POST", "/api/v1/cameras",
                           {"id": "live", "url": server.url("live"), "segment_seconds": 4})
        assert status == 201, body
        deadline = time.monotonic() + 30
        while not [r for r in index_rows(volume) if r["camera"] == "live"]:
            assert time.monotonic() < deadline, "the live camera recorded nothing"
            time.sleep(0.2)
        live_from = iso(min(r["start_ms"] for r in index_rows(volume) if r["camera"] == "live") - 1000)
        playlist_url = f"{daemon.http}/api/v1/cameras/live/playback.m3u8?from={live_from}"
        first_playlist = get(playlist_url).decode()

        # While it records: an encrypted export of five minutes and a three-minute clip.
        status, export = api(daemon.http, "POST", "/api/v1/exports",
                             {"camera": CAMERA, "from": iso(T0 + 60_000), "to": iso(T0 + 360_000),
                              "password": "secret"})
        assert status == 202, export
        clips: list[int] = []
        reader = threading.Thread(target=lambda: clips.append(len(get(
            f"{daemon.http}/api/v1/cameras/{CAMERA}/clip.mp4?from={iso(T0 + 200_000)}&to={iso(T0 + 380_000)}"))))
        reader.start()
        deadline = time.monotonic() + 120
        while api(daemon.http, "GET", f"/api/v1/exports/{export['id']}")[1]["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        reader.join(60)
        final = api(daemon.http, "GET", f"/api/v1/exports/{export['id']}")[1]
        assert final["state"] == "succeeded", final
        assert clips and clips[0] > 1_000_000, clips

        done = server.wait_event("media-done", 60)
        deadline = time.monotonic() + 30
        while True:  # the last segment is committed when ffmpeg has seen the end
            rows = [r for r in index_rows(volume) if r["camera"] == "live"]
            first_run = [r for r in rows if r["run_id"] == rows[0]["run_id"]]
            if sum(r["frames"] for r in first_run) >= done["frames"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert done["frames"] == 30 * 15, server.events
        assert sum(r["frames"] for r in first_run) == done["frames"], (rows, server.events)

        # The live playlist grew meanwhile and is still open.
        later_playlist = get(playlist_url).decode()
        assert later_playlist.count(".m4s") > first_playlist.count(".m4s") >= 1, (first_playlist, later_playlist)
        assert "#EXT-X-ENDLIST" not in later_playlist
    finally:
        daemon.stop()
        server.stop()
