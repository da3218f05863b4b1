"""Recording: RTSP cameras → one ffmpeg each → fMP4 segments on the volume → index.

cameras.py   camera settings (device database) and their validation
ffmpeg.py    the one place that starts ffmpeg: command, process, segment-list parsing
mp4.py       reads a closed fragmented-MP4 segment: frames, keyframes, codec, truncation
segments.py  a closed segment: inspect → fsync file → rename into place → fsync dirs → row
index.py     the recordings index on the volume: segments, runs, gaps, reconciliation
retention.py what to delete: per-camera age, then a free-space floor, oldest first
recorder.py  the service: one supervisor per camera, storage coupling, events
clock.py     wall and monotonic time, injectable so tests can step the clock
fmp4.py      a segment's fragments, and the in-place rewrites that join them
playback.py  clip.mp4 and HLS planned from the index and the boxes, read as sent
exports.py   export jobs: MKV/MP4 with metadata, AES-256 ZIP, staging, expiry
"""
