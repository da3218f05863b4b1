"""Indicator benchmark, run inside the vm-tier guest by `make bench`:

- from a member failing (PCI hot-unplug) to its bay's red LED lit in sysfs
  (target: under 1 s), with the daemon as its own process and the guest's keyboard
  LEDs as the bays' LEDs (see test_indicators.py). Timed from the start of the
  write to the PCI device's `remove`, and from the kernel's remove uevent for the
  disk (the write returns only after the kernel's teardown, which can take seconds).

Figures are printed; nothing asserts on time. Under TCG every figure is inflated
several times over real hardware, so they are upper bounds.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pyudev

import guest
from bench_storage import _connects, call, free_port, put_back, until
from test_indicators import LEDS, by_path, keyboards, shown

FAILURES = 3


def lit(name: str) -> bool:
    return (LEDS / name / "brightness").read_text().strip() != "0"


def test_failure_to_red_led(clean_disks: list[guest.Disk], tmp_path: Path) -> None:
    Path("/proc/sys/dev/raid/speed_limit_min").write_text("500000\n")
    members = clean_disks[:2]
    kbds = keyboards()
    port = free_port()
    allowed = ", ".join(f'"/dev/disk/by-id/*{d.serial}"' for d in members)
    slots = "\n".join(f'"{i + 1}" = "{by_path(d)}"' for i, d in enumerate(members))
    bays = "".join(
        f'[indicators.slots.{i + 1}]\ngreen = "{k}::numlock"\namber = "{k}::capslock"\nred = "{k}::scrolllock"\n'
        for i, k in enumerate(kbds)
    )
    config = tmp_path / "nvrd.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[log]\nlevel = "info"\n'
        f'[storage]\nmode = "managed"\ndisks = [{allowed}]\nauto_replace = false\n'
        f"[storage.slots]\n{slots}\n"
        f'[http]\nlisten = "127.0.0.1"\nhttp_port = {port}\nhttps_port = 0\n'
        f'[indicators]\nbackend = "sysfs-leds"\nbuzzer = false\n{bays}'
    )
    log = open(tmp_path / "nvrd.log", "w")
    daemon = subprocess.Popen([sys.executable, "-m", "nvrd.daemon", "--config", str(config)], stderr=log)
    to_red: list[float] = []
    from_uevent: list[float] = []
    write_took: list[float] = []
    try:
        until("listening", lambda: daemon.poll() is None and _connects(port), 300)
        call(port, "POST", "/api/v1/setup", {"username": "admin", "password": "bench password"})
        job = call(port, "POST", "/api/v1/storage/raid", {"level": 1, "disks": [str(d.dev) for d in members], "confirm": True})
        until("created", lambda: call(port, "GET", f"/api/v1/jobs/{job['id']}")["state"] == "succeeded")
        for i in range(FAILURES):
            slot = i % 2 + 1
            disk, red = members[slot - 1], f"{kbds[slot - 1]}::scrolllock"
            # Steady green, not the rebuild's blinking (whose brightness is also 1 half the time).
            until("online", lambda: call(port, "GET", "/api/v1/storage")["raid"]["status"] == "online", 300)
            until("both green", lambda: all(shown(f"{k}::numlock") == "on" for k in kbds), 60)
            time.sleep(1)
            name = disk.name
            # The write to `remove` returns only once the kernel has torn the controller
            # down, which can take seconds; the LED may turn during it. So: the write runs
            # in a thread, udev's remove uevent for the disk (the kernel saying it is
            # gone) is timed too, and this thread polls the LED.
            monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
            monitor.filter_by("block")
            monitor.start()
            removed: list[float] = []
            watcher = threading.Thread(target=_wait_remove, args=(monitor, name, removed))
            watcher.start()
            wrote: list[float] = []
            writer = threading.Thread(target=_remove, args=(disk.pci_device, wrote))
            started = time.monotonic()
            writer.start()
            while not lit(red):
                time.sleep(0.001)
                if time.monotonic() - started > 30:
                    raise TimeoutError(f"slot {slot} never turned red")
            turned = time.monotonic()
            writer.join(60)
            watcher.join(30)
            to_red.append(turned - started)
            if removed:
                from_uevent.append(turned - removed[0])
            write_took.append(wrote[0] - started)
            print(
                f"failure {i + 1} (slot {slot}): red LED {to_red[-1] * 1000:.0f} ms after the remove began, "
                f"{from_uevent[-1] * 1000 if removed else float('nan'):.0f} ms after the kernel's remove uevent; "
                f"the remove write took {write_took[-1] * 1000:.0f} ms"
            )
            put_back(disk)
    finally:
        daemon.terminate()
        daemon.wait(20)
        log.close()
        print((tmp_path / "nvrd.log").read_text()[-3000:])
        Path("/sys/bus/pci/rescan").write_text("1")
    print()
    print("indicators (vm guest, TCG):")
    print(f"  PCI remove begun -> bay LED red in sysfs: {_ms(to_red)} (target < 1 s)")
    print(f"  kernel remove uevent -> bay LED red: {_ms(from_uevent)}")
    print(f"  (the write to the PCI device's remove took {_ms(write_took)})")


def _ms(values: list[float]) -> str:
    return ", ".join(f"{v * 1000:.0f} ms" for v in values)


def _remove(pci: Path, wrote: list[float]) -> None:
    (pci / "remove").write_text("1")
    wrote.append(time.monotonic())


def _wait_remove(monitor: pyudev.Monitor, name: str, removed: list[float]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        device = monitor.poll(timeout=1)
        if device is not None and device.action == "remove" and device.sys_name == name:
            removed.append(time.monotonic())
            return
    assert len(to_red) == FAILURES
