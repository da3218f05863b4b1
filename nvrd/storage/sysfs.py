"""Reading and writing kernel attributes: the one place that parses sysfs text.

Attributes are read fresh every time (the kernel is the truth; a cached copy is how
status goes stale). Kernel placeholders such as `none` become None.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, overload

from nvrd.errors import Gone

T = TypeVar("T")

PLACEHOLDERS = frozenset({"none", ""})


@overload
def read_attr(directory: Path, name: str) -> str | None: ...
@overload
def read_attr(directory: Path, name: str, as_: Callable[[str], T]) -> T | None: ...


def read_attr(directory: Path, name: str, as_: Callable[[str], object] = str) -> object | None:
    """The attribute `directory/name`, stripped and converted; None for a kernel
    placeholder or an attribute this kernel does not have. Gone if the object
    itself (the directory) has vanished."""
    try:
        text = (directory / name).read_text().strip()
    except FileNotFoundError:
        if not directory.exists():
            raise Gone(f"{directory} is gone", path=str(directory)) from None
        return None
    except OSError as exc:
        if exc.errno == 19:  # ENODEV: the device went away while we read
            raise Gone(f"{directory} is gone", path=str(directory)) from None
        raise
    if text in PLACEHOLDERS:
        return None
    return as_(text)


def write_attr(directory: Path, name: str, value: str) -> None:
    try:
        (directory / name).write_text(value)
    except FileNotFoundError:
        raise Gone(f"{directory} is gone", path=str(directory)) from None


def words(text: str) -> frozenset[str]:
    """A comma- or space-separated flag list, e.g. a member's `state`."""
    return frozenset(part for part in text.replace(",", " ").split() if part)
