"""Host side of QMP for the vm tier.

The guest cannot reach QEMU's QMP socket. It writes SCRATCH/qmp/<id>.request (one QMP
command as JSON, renamed into place) and waits for <id>.reply. This relays them.
Only introspection and property commands are relayed.

    python3 tests/vm/qmp_relay.py SCRATCH/qmp.sock SCRATCH/qmp
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

ALLOWED = {"qom-get", "qom-set", "qom-list", "query-status", "query-pci"}


class Qmp:
    def __init__(self, path: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.file = self.sock.makefile("rw")
        self._read()  # the greeting
        self.command({"execute": "qmp_capabilities"})

    def _read(self) -> dict:
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("QEMU closed QMP")
            message = json.loads(line)
            if "event" not in message:
                return message

    def command(self, request: dict) -> dict:
        self.file.write(json.dumps(request) + "\n")
        self.file.flush()
        return self._read()


def main(sock_path: str, directory: str) -> None:
    requests = Path(directory)
    requests.mkdir(parents=True, exist_ok=True)
    qmp = Qmp(sock_path)
    (requests / "ready").touch()
    while True:
        for path in sorted(requests.glob("*.request")):
            try:
                request = json.loads(path.read_text())
                if request.get("execute") not in ALLOWED:
                    reply = {"error": {"class": "Refused", "desc": f"not relayed: {request.get('execute')}"}}
                else:
                    reply = qmp.command(request)
            except (ValueError, AttributeError) as exc:
                reply = {"error": {"class": "BadRequest", "desc": str(exc)}}
            tmp = path.with_suffix(".reply-tmp")
            tmp.write_text(json.dumps(reply))
            tmp.rename(path.with_suffix(".reply"))
            path.unlink()
        time.sleep(0.05)


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2])
    except (ConnectionError, OSError, KeyboardInterrupt):
        pass  # QEMU went away: the run is over
