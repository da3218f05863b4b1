"""Run every benchmark and print its figures (see docs/benchmarks.md)."""

from __future__ import annotations

import os
import sys

from bench import auth_api, daemon_api, playback, recording


def main() -> int:
    print(f"python {sys.version.split()[0]}")
    daemon_api.main()
    auth_api.main()
    # NVRD_BENCH_CAMERAS="16" limits the streams part on a shared machine.
    cameras = os.environ.get("NVRD_BENCH_CAMERAS", "16 64 128").split()
    recording.main(["--cameras", *cameras])
    playback.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
