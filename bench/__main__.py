"""Run every benchmark and print its figures (see docs/benchmarks.md)."""

from __future__ import annotations

import sys

from bench import auth_api, daemon_api


def main() -> int:
    print(f"python {sys.version.split()[0]}")
    daemon_api.main()
    auth_api.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
