"""Watching the kernel for storage changes, without a busy loop.

md sends no uevent when an array degrades or a sync starts or ends; it notifies
sysfs attributes instead. So one thread poll()s `array_state`, `degraded`,
`sync_action` and `sync_completed` of every array for POLLPRI|POLLERR (after a
notification: seek(0) and read again, which also re-arms it). While nothing syncs,
the thread sleeps until the kernel wakes it; while a sync runs, it also wakes every
second for progress. Disk hot-plug comes from udev (pyudev's netlink monitor on the
event loop), and a disk's removal also from the kernel's own uevent, which comes
first. Either way the owner's `on_change` runs on the event loop, coalesced.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

WATCHED = ("array_state", "degraded", "sync_action", "sync_completed")
SYNC_POLL_S = 1.0
# Several attributes change together (a member fails: state, degraded, sync_action);
# one refresh for the burst is enough.
COALESCE_S = 0.05


class MdWatcher(threading.Thread):
    def __init__(self, notify: Callable[[], None], sysfs: Path = Path("/sys")) -> None:
        super().__init__(name="md-watch", daemon=True)
        self._notify = notify
        self._sysfs = sysfs
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False

    def rescan(self) -> None:
        """Arrays came or went: rebuild the watched set."""
        os.write(self._wake_w, b"r")

    def stop(self) -> None:
        self._stopping = True
        os.write(self._wake_w, b"s")

    def _open_attributes(self) -> dict[int, tuple[Path, str]]:
        """Open and read (which arms the notification) every watched attribute."""
        files: dict[int, tuple[Path, str]] = {}
        for md in sorted((self._sysfs / "block").glob("md*/md")):
            for name in WATCHED:
                path = md / name
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:
                    continue  # RAID 0 has no `degraded`; an array may be vanishing
                files[fd] = (path, _meaning(name, _read(fd)))
        return files

    def run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        files: dict[int, tuple[Path, str]] = {}
        try:
            while not self._stopping:
                for fd in files:
                    poller.unregister(fd)
                    os.close(fd)
                files = self._open_attributes()
                for fd in files:
                    poller.register(fd, select.POLLPRI | select.POLLERR)
                rescan = False
                while not (rescan or self._stopping):
                    syncing = any(
                        path.name == "sync_action" and value not in ("idle", "frozen", "")
                        for path, value in files.values()
                    )
                    events = poller.poll(SYNC_POLL_S * 1000 if syncing else None)
                    changed = False
                    for fd, _ in events:
                        if fd == self._wake_r:
                            os.read(self._wake_r, 64)
                            rescan = True
                            continue
                        path, before = files[fd]
                        now = _meaning(path.name, _read(fd))
                        if now != before:
                            files[fd] = (path, now)
                            changed = True
                    if changed or (syncing and not events):
                        self._notify()
        finally:
            for fd in files:
                os.close(fd)
            os.close(self._wake_r)
            os.close(self._wake_w)


# array_state flips between clean and active around every write burst (the file
# system's journal commits every few seconds); for status they are the same
# running array, and waking the daemon for each flip would cost CPU for nothing.
_RUNNING_STATES = frozenset({"clean", "active", "active-idle", "write-pending"})


def _meaning(name: str, value: str) -> str:
    if name == "array_state" and value in _RUNNING_STATES:
        return "running"
    return value


def _read(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 4096).decode().strip()
    except OSError:
        return ""  # the array went away; the next rescan drops it


class StorageMonitor:
    """Runs `on_change` on the loop whenever md or udev reports something."""

    def __init__(self, on_change: Callable[[], None], sysfs: Path = Path("/sys")) -> None:
        self._on_change = on_change
        self._sysfs = sysfs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: asyncio.TimerHandle | None = None
        self._md: MdWatcher | None = None
        self._udev_monitor: object | None = None
        self._kernel_monitor: object | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._md = MdWatcher(self._notify_threadsafe, self._sysfs)
        self._md.start()
        self._start_udev()

    def _start_udev(self) -> None:
        try:
            import pyudev

            monitor = pyudev.Monitor.from_netlink(pyudev.Context())
            monitor.filter_by("block")
            monitor.start()
        except Exception as exc:  # no udev (a container): md polling still works
            log.warning("no udev monitor, hot-plug is seen only through md: %s", exc)
            return
        assert self._loop is not None
        self._loop.add_reader(monitor.fileno(), self._udev_ready, monitor)
        self._udev_monitor = monitor
        # The kernel's own uevent for a vanishing disk comes seconds before udev's
        # (udevd first runs its rules, mdadm's incremental fail among them: 2-4 s
        # under TCG, measured by tests/vm/bench_indicators.py). The disk is out of
        # sysfs already, so a refresh then shows its slot empty: the LED turns
        # without waiting. Only removals: an added disk needs udev's properties.
        try:
            kernel = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
            kernel.start()
        except Exception as exc:
            log.debug("no kernel uevent monitor: %s", exc)
            return
        self._loop.add_reader(kernel.fileno(), self._kernel_ready, kernel)
        self._kernel_monitor = kernel

    def _udev_ready(self, monitor: object) -> None:
        import pyudev

        assert isinstance(monitor, pyudev.Monitor)
        while (device := monitor.poll(timeout=0)) is not None:
            log.debug("udev %s %s", device.action, device.sys_name)
            if device.sys_name.startswith("md") and self._md is not None:
                self._md.rescan()
        self._schedule()

    def _kernel_ready(self, monitor: object) -> None:
        import pyudev

        assert isinstance(monitor, pyudev.Monitor)
        removed = False
        while (device := monitor.poll(timeout=0)) is not None:
            if device.action == "remove" and device.subsystem == "block":
                log.debug("kernel: %s removed", device.sys_name)
                removed = True
        if removed:
            self._schedule()

    def _notify_threadsafe(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        if self._pending is None and self._loop is not None:
            self._pending = self._loop.call_later(COALESCE_S, self._fire)

    def _fire(self) -> None:
        self._pending = None
        try:
            self._on_change()
        except Exception:
            log.exception("storage refresh failed")

    def rescan(self) -> None:
        if self._md is not None:
            self._md.rescan()

    def stop(self) -> None:
        if self._udev_monitor is not None and self._loop is not None:
            self._loop.remove_reader(self._udev_monitor.fileno())  # type: ignore[attr-defined]
        if self._kernel_monitor is not None and self._loop is not None:
            self._loop.remove_reader(self._kernel_monitor.fileno())  # type: ignore[attr-defined]
        if self._md is not None:
            self._md.stop()
            self._md.join(timeout=5)
        if self._pending is not None:
            self._pending.cancel()
