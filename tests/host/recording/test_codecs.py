"""H.264 and H.265 video, AAC kept, G.711 transcoded to AAC or dropped."""

from __future__ import annotations

from nvrd.recording.cameras import CameraCreate
from nvrd.recording.mp4 import inspect

from .conftest import wait_for


async def test_h265_aac_and_g711_sources(make_recorder, shared_server) -> None:
    harness = await make_recorder()
    recorder = harness.recorder
    events = harness.bus.subscribe(["camera", "segment"])
    cameras = {
        "hevc": shared_server.url("h265-aac"),
        "avc-aac": shared_server.url("h264-aac"),
        "g711-aac": shared_server.url("h264-g711"),
        "g711-drop": shared_server.url("h264-g711"),
    }
    for name, url in cameras.items():
        g711 = "drop" if name == "g711-drop" else "aac"
        await recorder.create(CameraCreate(id=name, url=url, segment_seconds=2, g711=g711))

    def each_has_two() -> bool:
        return all(recorder.supervisors[name].segments_closed >= 2 for name in cameras)

    await wait_for(each_has_two, 90, what="two segments from every camera")
    rows = {name: await recorder.index.segments(name, 0, 2**62) for name in cameras}

    assert {r.codec for r in rows["hevc"]} == {"h265"}
    assert {r.codec for r in rows["avc-aac"]} == {"h264"}
    assert {r.audio for r in rows["hevc"]} == {"aac"}
    assert {r.audio for r in rows["avc-aac"]} == {"aac"}
    assert {r.audio for r in rows["g711-aac"]} == {"aac"}
    assert {r.audio for r in rows["g711-drop"]} == {None}
    # The camera's own codec is reported, before any transcoding.
    assert recorder.supervisors["g711-aac"].audio_codec == "pcm_mulaw"
    for name, segments in rows.items():
        for row in segments:
            assert row.frames > 0 and row.keyframes >= 1, name
            info = inspect(recorder.layout.volume / row.path)  # the file says the same
            assert (info.frames, info.keyframes, info.codec) == (row.frames, row.keyframes, row.codec)

    # What /events carries: camera.changed with the state, segment.closed per row.
    seen: list = []
    while not events._queue.empty():
        seen.append(await events.get())
    closed = {(e.data["camera"], e.data["id"]) for e in seen if e.topic == "segment.closed"}
    assert closed >= {(name, r.id) for name, segments in rows.items() for r in segments}
    states = {e.data["id"]: e.data["state"] for e in seen if e.topic == "camera.changed"}
    assert set(states) == set(cameras) and set(states.values()) == {"recording"}
