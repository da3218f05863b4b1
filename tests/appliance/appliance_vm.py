"""The appliance tier's machinery: a cached Debian 12 base image, the image under
test (base + the built .deb), and a QEMU guest that the host drives over a serial
command channel and through hostfwd ports on 127.0.0.1.

Everything here runs as root on the build machine (mmdebstrap, chroot, dpkg).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

SUITE = "bookworm"
# What the image needs besides the package's own Depends: an init, udev, a kernel
# to boot, and ip(8) for the checks.
BASE_PACKAGES = ["systemd", "systemd-sysv", "udev", "kmod", "iproute2", "python3", "linux-image-amd64"]
# Bump when the way the base image is made changes (not the package list: that is
# part of the key already).
BASE_RECIPE = 1
CACHE_DIR = Path(os.environ.get("NVRD_TEST_CACHE", "/var/cache/nvrd-test"))
KEEP_BASE_IMAGES = 3

GUEST_HOSTNAME = "nvrd-test"
GUEST_ADDRESS = "10.0.2.15"  # QEMU user networking's guest address, target of hostfwd
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}


class ApplianceError(RuntimeError):
    """The harness itself failed (image build, boot, command channel)."""


def _run(argv: list, log: Path | None = None, **kw) -> subprocess.CompletedProcess:
    """Run a host command; on failure raise with the tail of its output."""
    argv = [str(a) for a in argv]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(argv)}\n{proc.stdout}\n")
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise ApplianceError(f"{' '.join(argv)} failed with exit code {proc.returncode}:\n{tail}")
    return proc


# --- The package under test ----------------------------------------------------------


def deb_field(deb: Path, field: str) -> str:
    return _run(["dpkg-deb", "-f", deb, field]).stdout.strip()


def deb_dependencies(deb: Path) -> list[str]:
    """Package names in the .deb's Pre-Depends and Depends (first alternative of
    each, versions dropped), so that the base image already has them all and dpkg -i
    needs no network."""
    names = []
    for field in ("Pre-Depends", "Depends"):
        for item in filter(None, (i.strip() for i in deb_field(deb, field).split(","))):
            first = item.split("|")[0].strip()
            m = re.match(r"[a-z0-9][a-z0-9+.-]*", first)
            if not m:
                raise ApplianceError(f"cannot parse dependency {item!r} of {deb}")
            names.append(m.group(0))
    return names


# --- The base image (cached) ----------------------------------------------------------


def base_image(packages: list[str], refresh: bool = False) -> Path:
    """A tarball of `mmdebstrap --variant=minbase --include=<packages> bookworm`,
    cached in CACHE_DIR under a hash of the recipe and package list. Concurrent
    sessions on one machine share it (a lock serialises the build)."""
    packages = sorted(set(packages))
    recipe = {"recipe": BASE_RECIPE, "suite": SUITE, "variant": "minbase", "packages": packages}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tar = CACHE_DIR / f"base-{SUITE}-{key}.tar"
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tar.exists() and not refresh:
            os.utime(tar)  # most recently used: pruned last
            return tar
        part = tar.with_name(tar.name + ".part")
        log = tar.with_suffix(".log")
        log.write_text("")
        _run(
            [
                "mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar",
                "--include=" + ",".join(packages), SUITE, part,
            ],
            log=log,
            env=CLEAN_ENV,
        )
        tar.with_suffix(".json").write_text(json.dumps(recipe, indent=1) + "\n")
        os.replace(part, tar)
        _prune_base_images(keep=KEEP_BASE_IMAGES)
    return tar


def _prune_base_images(keep: int) -> None:
    tars = sorted(CACHE_DIR.glob("base-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in tars[keep:]:
        for p in (old, old.with_suffix(".json"), old.with_suffix(".log")):
            p.unlink(missing_ok=True)


# --- The image under test -------------------------------------------------------------

AGENT_UNIT = """\
[Unit]
Description=nvrd appliance tests: command agent on ttyS1 (test image only)
DefaultDependencies=no
After=systemd-journald.socket
Conflicts=shutdown.target
Before=shutdown.target

[Service]
ExecStart=/usr/bin/python3 /usr/local/lib/nvrd-test/agent.py
Restart=always
RestartSec=1s

[Install]
WantedBy=sysinit.target
"""

# Only the guest's own address, no gateway and no DNS: the guest can reach
# nothing but itself (QEMU's restrict=on enforces the same on the host side).
NETWORK_UNIT = f"""\
[Match]
Name=en* eth*

[Network]
Address={GUEST_ADDRESS}/24
LinkLocalAddressing=no
IPv6AcceptRA=no
"""


@dataclass
class Image:
    root: Path
    kernel: Path
    initrd: Path


def build_image(base_tar: Path, deb: Path, workdir: Path, log: Path) -> Image:
    """Unpack the base image, add the harness bits, install the .deb with dpkg -i in
    a chroot (as an image builder would), and make an ext4 disk image of it."""
    rootfs = workdir / "rootfs"
    rootfs.mkdir()
    _run(["tar", "-C", rootfs, "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", base_tar], log=log)

    (rootfs / "etc/fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
    (rootfs / "etc/hostname").write_text(GUEST_HOSTNAME + "\n")
    (rootfs / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {GUEST_HOSTNAME}\n")
    (rootfs / "etc/resolv.conf").unlink(missing_ok=True)
    (rootfs / "etc/systemd/network/10-test.network").write_text(NETWORK_UNIT)
    agent_dir = rootfs / "usr/local/lib/nvrd-test"
    agent_dir.mkdir(parents=True)
    shutil.copy(HERE / "guest_agent.py", agent_dir / "agent.py")
    (rootfs / "etc/systemd/system/nvrd-test-agent.service").write_text(AGENT_UNIT)
    chroot = ["chroot", rootfs]
    _run([*chroot, "systemctl", "enable", "nvrd-test-agent.service", "systemd-networkd.service"], log=log, env=CLEAN_ENV)
    # Nothing in the guest may try to reach a mirror.
    _run([*chroot, "systemctl", "mask", "apt-daily.timer", "apt-daily-upgrade.timer"], log=log, env=CLEAN_ENV)

    shutil.copy(deb, rootfs / "root/nvrd.deb")
    _run([*chroot, "dpkg", "-i", "/root/nvrd.deb"], log=log, env={**CLEAN_ENV, "DEBIAN_FRONTEND": "noninteractive"})

    kernel = sorted((rootfs / "boot").glob("vmlinuz-*"))[-1]
    initrd = sorted((rootfs / "boot").glob("initrd.img-*"))[-1]
    image = Image(root=workdir / "root.img", kernel=workdir / kernel.name, initrd=workdir / initrd.name)
    shutil.copy(kernel, image.kernel)
    shutil.copy(initrd, image.initrd)
    _run(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", rootfs, image.root, "2G"], log=log)
    shutil.rmtree(rootfs)
    return image


# --- The guest --------------------------------------------------------------------------


class Guest:
    """Runs shell commands in the guest through the agent on its second serial port."""

    def __init__(self, sock_path: Path, qemu: subprocess.Popen) -> None:
        self.qemu = qemu
        self._ids = itertools.count()
        self._buf = b""
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(sock_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                self._check_alive()
                if time.monotonic() > deadline:
                    raise ApplianceError(f"no control socket {sock_path}")
                time.sleep(0.2)

    def _check_alive(self) -> None:
        if self.qemu.poll() is not None:
            raise ApplianceError(f"QEMU exited with code {self.qemu.returncode}")

    def _send(self, cmd: str, timeout: float) -> str:
        rid = f"{os.getpid()}-{next(self._ids)}"
        self.sock.sendall(json.dumps({"id": rid, "cmd": cmd, "timeout": timeout}).encode() + b"\n")
        return rid

    def _receive(self, rid: str, deadline: float) -> dict | None:
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue
                # Until the agent has turned echo off, the guest's tty echoes our own
                # requests back: those carry the id too, but no "rc".
                if isinstance(reply, dict) and reply.get("id") == rid and "rc" in reply:
                    return reply
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._check_alive()
            self.sock.settimeout(min(left, 1.0))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise ApplianceError("control socket closed by QEMU")
            self._buf += chunk

    def run(self, cmd: str, timeout: float = 60) -> tuple[int, str]:
        """Run `cmd` with bash as root in the guest: (exit code, stdout+stderr).
        The exit code is -1 if the command ran longer than `timeout` seconds."""
        rid = self._send(cmd, timeout)
        reply = self._receive(rid, time.monotonic() + timeout + 60)
        if reply is None:
            raise ApplianceError(f"no answer from the guest agent for {cmd!r}")
        return reply["rc"], base64.b64decode(reply["out"]).decode(errors="replace")

    def check(self, cmd: str, timeout: float = 60) -> str:
        """Like run(), but a non-zero exit code fails with the command's output."""
        rc, out = self.run(cmd, timeout)
        if rc != 0:
            raise AssertionError(f"guest command {cmd!r} exited with {rc}:\n{out}")
        return out

    def wait_ready(self, timeout: float) -> None:
        """Wait until the agent answers (it starts early in boot)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rid = self._send("true", 5)
            if self._receive(rid, min(deadline, time.monotonic() + 2)) is not None:
                return
        raise ApplianceError(f"the guest agent did not answer within {timeout:.0f} s")

    def close(self) -> None:
        self.sock.close()


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Appliance:
    """One booted guest: `guest` runs commands, `http_port`/`https_port` on
    127.0.0.1 reach the guest's ports 80 and 443."""

    def __init__(self, image: Image, workdir: Path) -> None:
        self.image = image
        self.workdir = workdir
        self.console_log = workdir / "console.log"
        self.http_port, self.https_port = _free_ports(2)
        self.qemu: subprocess.Popen | None = None
        self.guest: Guest | None = None
        self._ctl_dir: Path | None = None

    def data_disk(self, name: str, size: str = "128M") -> Path:
        path = self.workdir / f"{name}.img"
        _run(["truncate", "-s", size, path])
        return path

    def start(self, boot_timeout: float = 300) -> None:
        # A short path: unix socket names are limited to 107 bytes.
        self._ctl_dir = Path(tempfile.mkdtemp(prefix="nvrd-appliance-"))
        ctl = self._ctl_dir / "ctl.sock"
        net = (
            "user,id=net0,restrict=on,"
            f"hostfwd=tcp:127.0.0.1:{self.https_port}-:443,"
            f"hostfwd=tcp:127.0.0.1:{self.http_port}-:80"
        )
        argv = [
            "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", "1024", "-smp", "2",
            "-nodefaults", "-display", "none", "-no-reboot",
            "-kernel", self.image.kernel, "-initrd", self.image.initrd,
            "-append", "root=/dev/vda rw console=ttyS0 panic=-1",
            # cache=unsafe: the guest's flushes cost nothing; every image is thrown away.
            "-drive", f"file={self.image.root},if=virtio,format=raw,cache=unsafe",
            "-netdev", net, "-device", "virtio-net-pci,netdev=net0",
            "-serial", f"file:{self.console_log}",
            "-serial", f"unix:{ctl},server=on,wait=off",
        ]
        # Two small NVMe disks for the sandbox check (md RAID 1 + LUKS + mount).
        for i in range(2):
            argv += [
                "-drive", f"file={self.data_disk(f'nvme{i}')},if=none,id=nvme{i},format=raw,cache=unsafe",
                "-device", f"nvme,serial=NVRDTEST{i},drive=nvme{i}",
            ]
        with open(self.workdir / "qemu.log", "w") as qlog:
            self.qemu = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT)
        try:
            self.guest = Guest(ctl, self.qemu)
            deadline = time.monotonic() + boot_timeout
            self.guest.wait_ready(boot_timeout)
            # Wait for the end of boot ("running", or "degraded" if a unit failed:
            # the tests look at that) with short commands, so that a stalled guest
            # shows up as such.
            while True:
                try:
                    state = self.guest.run("systemctl is-system-running", timeout=30)[1].strip()
                except ApplianceError:
                    if self.qemu.poll() is not None:
                        raise
                    # A host shared with other emulators can stall the guest for
                    # minutes during boot; only the boot deadline decides.
                    state = "no answer"
                if state not in ("initializing", "starting", "no answer"):
                    break
                if time.monotonic() > deadline:
                    raise ApplianceError(f"boot did not finish within {boot_timeout:.0f} s (state {state})")
                time.sleep(2)
        except Exception as e:
            qemu_log = (self.workdir / "qemu.log").read_text(errors="replace")[-2000:]
            raise ApplianceError(
                f"{e}\n--- qemu.log:\n{qemu_log}\n--- console ({self.console_log}), last lines:\n{self.console_tail()}"
            ) from e

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.guest is not None:
            try:
                out = self.guest.run("journalctl -b --no-pager -o short-precise -n 3000", timeout=60)[1]
                (self.workdir / "journal.txt").write_text(out)
            except Exception:
                pass
            self.guest.close()
        if self.qemu is not None and self.qemu.poll() is None:
            self.qemu.terminate()
            try:
                self.qemu.wait(10)
            except subprocess.TimeoutExpired:
                self.qemu.kill()
                self.qemu.wait()
        if self._ctl_dir is not None:
            shutil.rmtree(self._ctl_dir, ignore_errors=True)
