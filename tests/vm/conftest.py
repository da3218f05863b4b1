"""vm tier fixtures. These tests run only inside the guest that tests/vm/run boots.

Outside it (no NVRD_VM_GUEST=1) every vm test is skipped. When NVRD_VM_GUEST=1 is
set but this does not look like that guest (no kernel command line marker, or not
the four QEMU NVMe disks with our serials) the session aborts before any test runs.
Nothing here touches a disk that was not found by one of those serials.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import guest

HERE = Path(__file__).parent


def _is_vm_item(item: pytest.Item) -> bool:
    return HERE in Path(item.path).parents


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get(guest.GUEST_ENV) is None:
        return
    problems = guest.guest_problems(guest.wanted_serials())
    if problems:
        pytest.exit(
            "vm tier: refusing to run, this is not the test guest: " + "; ".join(problems),
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(guest.GUEST_ENV) == "1":
        return
    skip = pytest.mark.skip(reason="vm tier runs only inside its virtme-ng guest: use `make vm`")
    for item in items:
        if _is_vm_item(item):
            item.add_marker(skip)


def _scratch() -> Path | None:
    scratch = os.environ.get("NVRD_VM_SCRATCH")
    return Path(scratch) if scratch and os.environ.get(guest.GUEST_ENV) == "1" else None


# If the guest hangs or dies, pytest never prints its summary; tests/vm/run then
# shows these two files instead.
def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    if scratch := _scratch():
        (scratch / "current-test").write_text(nodeid + "\n")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed and (scratch := _scratch()):
        with open(scratch / "failures.txt", "a") as f:
            f.write(f"{report.nodeid} ({report.when}) FAILED\n{report.longreprtext}\n\n")


@pytest.fixture(scope="session")
def vm_disks() -> list[guest.Disk]:
    """The four test disks, ordered by serial, with the md and dm modules loaded."""
    serials = guest.wanted_serials()
    problems = guest.guest_problems(serials)
    assert not problems, problems
    guest.load_modules()
    guest.settle()
    disks = [guest.Disk(serial, qom_id=f"nvmectl{i}") for i, serial in enumerate(serials)]
    for disk in disks:
        disk.check_is_test_disk()
    return disks


@pytest.fixture
def clean_disks(vm_disks: list[guest.Disk]) -> Iterator[list[guest.Disk]]:
    """The test disks with nothing on them and nothing stacked on them.

    Wiped before the test. After it, whatever the test left stacked on them (an
    array, a mapping, a mount) is stopped, so that nothing it started outlives it;
    their contents are left for the next test's wipe (a wipe costs seconds under TCG).
    """
    guest.wipe_disks(vm_disks)
    yield vm_disks
    guest.release_disks(vm_disks)
