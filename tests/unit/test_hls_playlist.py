"""The HLS playlist's target duration (RFC 8216): every EXTINF rounded to the
nearest second is at most the target, and a live playlist's target stays the same
while it grows."""

from __future__ import annotations

import re

from nvrd.recording.index import SegmentRow
from nvrd.recording.playback import playlist

T0 = 1_795_514_400_000


def rows(*durations_ms: int) -> list[SegmentRow]:
    out, t = [], T0
    for n, duration in enumerate(durations_ms):
        out.append(SegmentRow("lobby", t, t + duration, 1000, 100, 1, "h264", None, f"s{n}.mp4", run_id=1, id=n + 1))
        t += duration
    return out


def target(text: str) -> int:
    return int(re.search(r"#EXT-X-TARGETDURATION:(\d+)", text).group(1))  # type: ignore[union-attr]


def extinfs(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"#EXTINF:([\d.]+),", text)]


def test_every_rounded_segment_duration_is_within_the_target() -> None:
    for durations in ([60_000, 60_020, 59_980], [60_000, 60_499], [60_000, 60_500, 75_900], [4_000, 8_600]):
        for live in (False, True):
            text = playlist(rows(*durations), live=live, target_s=60 if durations[0] == 60_000 else 4)
            assert all(round(d) <= target(text) for d in extinfs(text)), (durations, live, text)


def test_a_vod_target_is_the_segment_length_when_segments_run_a_little_long() -> None:
    # 60.02 s rounds to 60: the target need not say 61.
    assert target(playlist(rows(60_000, 60_020, 60_499), live=False, target_s=60)) == 60


def test_a_live_target_does_not_change_as_slightly_longer_segments_arrive() -> None:
    durations = [60_000, 60_000, 61_400, 62_000, 64_900, 60_000]
    targets = {target(playlist(rows(*durations[: n + 1]), live=True, target_s=60)) for n in range(len(durations))}
    assert targets == {75}
