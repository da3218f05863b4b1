"""A camera that goes away for 20 s and comes back: offline, then recording, and
exactly one gap, with reason offline, covering the outage."""

from __future__ import annotations

import asyncio
import time

from nvrd.recording.cameras import CameraCreate
from nvrd.recording.recorder import CameraState

from .conftest import RtspServer, clip, wait_for


async def test_camera_outage_is_one_offline_gap(make_recorder) -> None:
    server = RtspServer({"cam": clip("h264-aac-600")}).start()
    try:
        harness = await make_recorder()
        recorder = harness.recorder
        await recorder.create(CameraCreate(id="door", url=server.url("cam"), segment_seconds=4))
        sup = recorder.supervisors["door"]
        await wait_for(lambda: sup.segments_closed >= 2, 60, what="recording")

        await asyncio.to_thread(server.stop)
        stopped_ms = time.time_ns() // 1_000_000
        await wait_for(lambda: sup.state is CameraState.OFFLINE, 30, what="offline")
        assert sup.last_error
        await asyncio.sleep(20 - (time.time_ns() // 1_000_000 - stopped_ms) / 1000)

        server = RtspServer({"cam": clip("h264-aac-600")}, port=server.port)
        await asyncio.to_thread(server.start)
        back_ms = time.time_ns() // 1_000_000
        closed = sup.segments_closed
        await wait_for(lambda: sup.segments_closed >= closed + 2, 60, what="recording again")
        assert sup.state is CameraState.RECORDING and sup.last_error is None

        runs, gaps = await recorder.runs_and_gaps(["door"], 0, 2**62)
        assert len(runs) == 2
        assert len(gaps) == 1
        gap = gaps[0]
        assert gap.reason == "offline"
        assert abs(gap.start_ms - stopped_ms) <= 2000, gap.start_ms - stopped_ms
        assert abs(gap.end_ms - back_ms) <= 2000, gap.end_ms - back_ms
    finally:
        await asyncio.to_thread(server.stop)
