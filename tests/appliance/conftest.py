"""Appliance tier: the built .deb, installed into Debian 12, booted with systemd.

One guest is booted per session; the tests in test_appliance.py run against it in
file order (the last ones remove and purge the package).

Environment:
  NVRD_DEB            the package under test (make appliance sets it)
  NVRD_TEST_CACHE     base image cache, default /var/cache/nvrd-test
  NVRD_TEST_REFRESH=1 rebuild the cached base image

Each session's logs (console.log, qemu.log, image.log, journal.txt,
systemd-analyze-security.txt) are kept in build/appliance/run-*/ (the last 3).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from appliance_vm import Appliance, base_image, build_image, deb_dependencies, deb_field, BASE_PACKAGES


RUNS_DIR = Path(__file__).resolve().parents[2] / "build" / "appliance"
KEEP_RUNS = 3


def _workdir() -> Path:
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    workdir = RUNS_DIR / time.strftime(f"run-%Y%m%d-%H%M%S-{os.getpid()}")
    workdir.mkdir()
    for old in sorted(RUNS_DIR.glob("run-*"))[:-KEEP_RUNS]:
        shutil.rmtree(old, ignore_errors=True)
    return workdir


# Figures for the terminal summary (also when pytest runs with -q).
FIGURES: list[str] = []


def _phase(name: str, started: float) -> None:
    FIGURES.append(f"{name}: {time.monotonic() - started:.1f} s")


@pytest.fixture(scope="session")
def figures() -> list[str]:
    return FIGURES


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("appliance figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def deb() -> Path:
    value = os.environ.get("NVRD_DEB")
    if not value:
        pytest.fail("NVRD_DEB is not set: run `make appliance`, or set it to a built nvrd_*.deb")
    path = Path(value).resolve()
    if not path.is_file():
        pytest.fail(f"NVRD_DEB={value}: no such file")
    if os.geteuid() != 0:
        pytest.fail("the appliance tier needs root (mmdebstrap, chroot, dpkg)")
    return path


@pytest.fixture(scope="session")
def deb_version(deb: Path) -> str:
    return deb_field(deb, "Version")


@pytest.fixture(scope="session")
def appliance(deb: Path):
    """The booted appliance with the package installed. Logs (console.log,
    qemu.log, image.log, journal.txt) stay in its work directory."""
    workdir = _workdir()
    FIGURES.append(f"logs: {workdir}")
    t = time.monotonic()
    base = base_image(BASE_PACKAGES + deb_dependencies(deb), refresh=os.environ.get("NVRD_TEST_REFRESH") == "1")
    _phase(f"base image {base}", t)
    t = time.monotonic()
    image = build_image(base, deb, workdir, log=workdir / "image.log")
    _phase("image with the package installed", t)
    vm = Appliance(image, workdir)
    t = time.monotonic()
    try:
        vm.start()
        _phase("boot", t)
        yield vm
    finally:
        vm.stop()
        for p in (image.root, image.kernel, image.initrd, *workdir.glob("nvme*.img")):
            p.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def guest(appliance: Appliance):
    return appliance.guest


def pytest_runtest_makereport(item, call):
    # Point at the guest's logs when an appliance test fails.
    if call.when == "call" and call.excinfo is not None:
        vm = item.funcargs.get("appliance")
        if vm is not None:
            item.add_report_section("call", "appliance", f"logs in {vm.workdir}\n--- console tail:\n{vm.console_tail(20)}")
