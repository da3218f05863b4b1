"""Command agent inside the appliance test guest (installed by the test harness only).

It owns the second serial port (/dev/ttyS1, which QEMU connects to a unix socket on
the host). Protocol, one JSON object per line in each direction:

    host -> guest  {"id": "...", "cmd": "shell command", "timeout": 60}
    guest -> host  {"id": "...", "rc": 0, "out": "<base64 of stdout+stderr>"}

rc is -1 when the command timed out (its process group is killed). Lines that are
not JSON (noise on the port before the agent opened it) are ignored. Commands run
one at a time, as root, with stdin from /dev/null, in the host's namespaces.
"""

import base64
import json
import os
import signal
import subprocess
import termios
import tty

PORT = "/dev/ttyS1"


def trace(message: str) -> None:
    """One line in the kernel log, which the host keeps as console.log: when the
    channel stalls, that file shows the last command the agent ran."""
    try:
        with open("/dev/kmsg", "w") as kmsg:
            kmsg.write(f"nvrd-test-agent: {message}\n")
    except OSError:
        pass


def run(cmd: str, timeout: float) -> tuple[int, bytes]:
    proc = subprocess.Popen(
        ["/bin/bash", "-c", cmd],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -1, out + b"\n[agent: timed out after %ss]\n" % str(timeout).encode()


def main() -> None:
    fd = os.open(PORT, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[3] &= ~termios.ECHO
    # The line speed sets QEMU's receive timeout (4 character times) per chunk.
    attrs[4] = attrs[5] = termios.B115200
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    termios.tcflush(fd, termios.TCIFLUSH)
    reader = os.fdopen(fd, "rb", buffering=0, closefd=False)
    buf = b""
    while True:
        chunk = reader.read(65536)
        if not chunk:
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                req = json.loads(line)
                rid, cmd = req["id"], req["cmd"]
            except (ValueError, KeyError, TypeError):
                continue
            trace(f"{rid} run {cmd[:100]!r}")
            rc, out = run(cmd, float(req.get("timeout", 60)))
            trace(f"{rid} rc={rc}, {len(out)} bytes")
            reply = {"id": rid, "rc": rc, "out": base64.b64encode(out).decode()}
            data = json.dumps(reply).encode() + b"\n"
            while data:
                data = data[os.write(fd, data):]


if __name__ == "__main__":
    main()
