"""Exports: jobs with progress, at most two at once, MKV in an AES-256 ZIP that 7z
opens with the password only, frame count equal to the source range, metadata,
MP4, deletion (expiry: test_export_expiry.py)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from nvrd.api.keys import BUS

from .conftest import CAMERA, T0, ffprobe, iso

PASSWORD = "hand-over 2611"


async def finished(client: Any, export_id: str, timeout: float = 120) -> dict[str, Any]:
    for _ in range(int(timeout * 10)):
        body = await (await client.get(f"/api/v1/exports/{export_id}")).json()
        if body["state"] in ("succeeded", "failed"):
            return body
        await asyncio.sleep(0.1)
    raise TimeoutError(export_id)


async def download(client: Any, export: dict[str, Any], path: Path) -> Path:
    response = await client.get(export["file"])
    assert response.status == 200
    path.write_bytes(await response.read())
    return path


async def test_encrypted_mkv_opens_with_the_password_only_and_holds_the_range(
    played: Any, tmp_path: Path, source_keyframes: list[float], source_packets: list[tuple[float, str]]
) -> None:
    # Mid-frame times (frames every 66.7 ms), across a segment boundary (40 s).
    start, end = T0 + 30_567, T0 + 52_033
    response = await played.post("/api/v1/exports", json={"camera": CAMERA, "from": iso(start), "to": iso(end),
                                                           "format": "mkv", "password": PASSWORD})
    assert response.status == 202, await response.text()
    export = await response.json()
    assert export["encrypted"] and "password" not in export
    export = await finished(played, export["id"])
    assert export["state"] == "succeeded", export
    assert export["job"]["progress"] == 1 and export["filename"].endswith(".mkv.zip")
    archive = await download(played, export, tmp_path / export["filename"])

    wrong = subprocess.run(["7z", "x", "-pwrong", f"-o{tmp_path / 'wrong'}", str(archive)], capture_output=True, text=True)
    assert wrong.returncode != 0 and "Wrong password" in wrong.stdout + wrong.stderr
    listing = subprocess.run(["7z", "l", "-slt", str(archive)], capture_output=True, text=True, check=True).stdout
    assert "Method = AES-256" in listing and "Encrypted = +" in listing
    subprocess.run(["7z", "x", f"-p{PASSWORD}", f"-o{tmp_path / 'out'}", str(archive)], capture_output=True, check=True)
    mkv = tmp_path / "out" / export["filename"].removesuffix(".zip")

    # Every source frame from the keyframe at or before `from` to the end of the GOP
    # holding `to`, and no other.
    first = max(k for k in source_keyframes if k <= (start - T0) / 1000)
    stop = min(k for k in source_keyframes if k >= (end - T0) / 1000)
    expected = sum(1 for pts, _ in source_packets if first - 0.001 < pts < stop - 0.001)
    probe = ffprobe(mkv, "-count_packets", "-show_entries", "stream=codec_type,nb_read_packets:format_tags")
    video = next(s for s in probe["streams"] if s["codec_type"] == "video")
    assert int(video["nb_read_packets"]) == expected
    subprocess.run(["ffmpeg", "-v", "error", "-xerror", "-i", str(mkv), "-f", "null", "-"], check=True)
    tags = {k.lower(): v for k, v in probe["format"]["tags"].items()}
    assert tags["camera_id"] == CAMERA and tags["start_utc"] == iso(start)
    assert tags["end_utc"] == iso(end) and "recorder_serial" in tags


async def test_mp4_export_metadata_queue_delete(played: Any, tmp_path: Path) -> None:
    seen_running: list[int] = []
    bus = played.app[BUS]
    running: set[str] = set()
    subscription = bus.subscribe(["job.changed"])

    async def watch() -> None:
        async for event in subscription:
            job = event.data
            if job["kind"] != "export":
                continue
            (running.add if job["state"] == "running" else running.discard)(job["id"])
            seen_running.append(len(running))

    watcher = asyncio.create_task(watch())
    ids = []
    for n in range(4):
        response = await played.post("/api/v1/exports", json={"camera": CAMERA, "from": iso(T0 + n * 60_000),
                                                               "to": iso(T0 + n * 60_000 + 50_000), "format": "mp4"})
        assert response.status == 202
        ids.append((await response.json())["id"])
    listed = await (await played.get("/api/v1/exports")).json()
    assert [e["id"] for e in listed] == ids
    results = [await finished(played, i) for i in ids]
    watcher.cancel()
    assert all(r["state"] == "succeeded" for r in results), results
    assert max(seen_running) <= 2 and 2 in seen_running  # two at once, never three
    mp4 = await download(played, results[1], tmp_path / "x.mp4")
    probe = ffprobe(mp4, "-show_entries", "format_tags:stream=start_time,duration", "-select_streams", "v:0")
    assert probe["format"]["tags"]["camera_id"] == CAMERA
    assert probe["format"]["tags"]["start_utc"] == iso(T0 + 60_000)
    # The edit list survives: playback starts at `from` (the pre-roll is before 0).
    assert float(probe["streams"][0]["start_time"]) <= 0

    response = await played.delete(f"/api/v1/exports/{ids[0]}")
    assert response.status == 204
    assert (await played.get(f"/api/v1/exports/{ids[0]}")).status == 404
    assert (await played.get(results[0]["file"])).status == 404
    records = await (await played.get("/api/v1/logs/audit")).json()
    actions = [r["action"] for r in records]
    assert actions.count("create-export") == 4 and "download-export" in actions and "delete-export" in actions


async def test_bad_exports_name_the_field(played: Any) -> None:
    cases = [
        ({"camera": CAMERA, "from": iso(T0 + 1000), "to": iso(T0)}, "from", 422),
        ({"camera": CAMERA, "from": iso(T0), "to": iso(T0 + 32 * 86_400_000)}, "to", 422),
        ({"camera": CAMERA, "from": "noon", "to": iso(T0)}, "from", 422),
        ({"camera": CAMERA, "from": iso(T0), "to": iso(T0 + 1000), "format": "avi"}, "format", 422),
        ({"camera": CAMERA, "from": iso(T0), "to": iso(T0 + 1000), "password": ""}, "password", 422),
        ({"camera": "nobody", "from": iso(T0), "to": iso(T0 + 1000)}, "camera", 404),
    ]
    for body, field, status in cases:
        response = await played.post("/api/v1/exports", json=body)
        assert response.status == status, (body, await response.text())
        assert (await response.json())["field"] == field, body


async def test_encrypted_mp4_is_streamed_into_the_zip(played: Any, tmp_path: Path) -> None:
    response = await played.post("/api/v1/exports", json={"camera": CAMERA, "from": iso(T0 + 5_000),
                                                           "to": iso(T0 + 25_000), "format": "mp4", "password": PASSWORD})
    export = await finished(played, (await response.json())["id"])
    assert export["state"] == "succeeded" and export["filename"].endswith(".mp4.zip"), export
    archive = await download(played, export, tmp_path / export["filename"])
    subprocess.run(["7z", "x", f"-p{PASSWORD}", f"-o{tmp_path}", str(archive)], capture_output=True, check=True)
    mp4 = tmp_path / export["filename"].removesuffix(".zip")
    subprocess.run(["ffmpeg", "-v", "error", "-xerror", "-i", str(mp4), "-f", "null", "-"], check=True)
    assert ffprobe(mp4, "-show_entries", "format_tags")["format"]["tags"]["camera_id"] == CAMERA


async def test_deleting_a_running_export_stops_it(played: Any, recording_volume: Path) -> None:
    response = await played.post("/api/v1/exports", json={"camera": CAMERA, "from": iso(T0), "to": iso(T0 + 590_000),
                                                           "format": "mkv", "password": PASSWORD})
    export = await response.json()
    job_id = export["job"]["id"]
    assert (await played.delete(f"/api/v1/exports/{export['id']}")).status == 204
    for _ in range(100):
        job = await (await played.get(f"/api/v1/jobs/{job_id}")).json()
        if job["state"] == "failed":
            break
        await asyncio.sleep(0.1)
    assert job["state"] == "failed" and job["error"] == "cancelled", job
    assert not (recording_volume / "exports" / export["id"]).exists()
