"""LED backends behind one small interface: `sysfs-leds`, `ledctl`, `none`.

A backend shows a `DriveLed` on a slot and a `ProductLed` on the product LED. It
never raises for hardware trouble: it logs once, records the problem in `problems`
and carries on, since an LED must never stop the recorder.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from nvrd.errors import Gone
from nvrd.indicators.leds import DriveLed, ProductLed
from nvrd.storage import tools  # the generic tool runner (argv, timeout, typed failure)
from nvrd.storage.sysfs import read_attr, write_attr

log = logging.getLogger(__name__)

Colour = Literal["green", "amber", "red"]
# Blink timings (ms). Syncing blinks slowly; locate fast, so it stands out from it.
SLOW = (500, 500)
FAST = (150, 150)


class LedBackend(Protocol):
    name: str
    problems: list[str]

    @property
    def available(self) -> bool: ...

    async def show_drive(self, slot: int, device: str | None, led: DriveLed) -> None:
        """Show `led` on `slot`; `device` is the disk in it (/dev/...), if any."""
        ...

    async def show_product(self, led: ProductLed) -> None: ...


class NoLeds:
    """`backend = "none"`: nothing to drive (the API still shows the states)."""

    name = "none"

    def __init__(self) -> None:
        self.problems: list[str] = []

    @property
    def available(self) -> bool:
        return False

    async def show_drive(self, slot: int, device: str | None, led: DriveLed) -> None:
        return None

    async def show_product(self, led: ProductLed) -> None:
        return None


# --- sysfs LED class devices ----------------------------------------------------


class SysfsLed:
    """One LED class device, `/sys/class/leds/<name>`: a handle that writes the
    kernel attributes each time (the kernel is the truth)."""

    def __init__(self, name: str, sysfs: Path = Path("/sys")) -> None:
        self.name = name
        self.path = sysfs / "class" / "leds" / name

    def __repr__(self) -> str:
        return f"SysfsLed({self.name!r})"

    @property
    def exists(self) -> bool:
        return self.path.is_dir()

    @property
    def max_brightness(self) -> int:
        return read_attr(self.path, "max_brightness", int) or 1

    @property
    def brightness(self) -> int:
        return read_attr(self.path, "brightness", int) or 0

    @property
    def trigger(self) -> str | None:
        """The selected trigger (`[timer]` in the list), None when none is."""
        text = read_attr(self.path, "trigger") or ""
        chosen = next((w for w in text.split() if w.startswith("[")), "[none]")
        return None if chosen == "[none]" else chosen.strip("[]")

    @property
    def triggers(self) -> frozenset[str]:
        return frozenset(w.strip("[]") for w in (read_attr(self.path, "trigger") or "").split())

    def steady(self, on: bool) -> None:
        # Writing brightness 0 also detaches a trigger; for "on", detach it first.
        write_attr(self.path, "trigger", "none")
        write_attr(self.path, "brightness", str(self.max_brightness if on else 0))

    def blink(self, on_ms: int, off_ms: int) -> None:
        if self.trigger != "timer":
            write_attr(self.path, "trigger", "timer")  # creates delay_on/delay_off
        write_attr(self.path, "delay_on", str(on_ms))
        write_attr(self.path, "delay_off", str(off_ms))


# What each state lights, per colour: True = steady, (on, off) = blinking. A colour
# left out is off. A bay without a red LED shows red states as fast-blinking amber.
Pattern = Mapping[Colour, bool | tuple[int, int]]
DRIVE_PATTERNS: dict[DriveLed, Pattern] = {
    DriveLed.OFF: {},
    DriveLed.ONLINE: {"green": True},
    DriveLed.SYNCING: {"green": SLOW},
    DriveLed.DEGRADED: {"amber": True},
    DriveLed.FAILED: {"red": True},
    DriveLed.ARRAY_FAILED: {"red": True},
    DriveLed.SPARE: {"green": (100, 1900)},  # a short flash every 2 s: present, idle
    DriveLed.LOCATE: {"amber": FAST},
}
PRODUCT_PATTERNS: dict[ProductLed, Pattern] = {
    ProductLed.STARTING: {"amber": True},
    ProductLed.OK: {"green": True},
    ProductLed.ATTENTION: {"amber": SLOW},
}
NO_RED_FALLBACK: Pattern = {"amber": FAST}


@dataclass(frozen=True)
class LedSet:
    """The LEDs of one bay (or of the product LED), by colour."""

    leds: Mapping[Colour, SysfsLed]

    def show(self, pattern: Pattern) -> None:
        if "red" in pattern and "red" not in self.leds:
            pattern = NO_RED_FALLBACK
        for colour, led in self.leds.items():
            mode = pattern.get(colour, False)
            if isinstance(mode, tuple):
                led.blink(*mode)
            else:
                led.steady(mode)


class SysfsLeds:
    """`backend = "sysfs-leds"`: Linux LED class devices named in the config
    (`[indicators.slots."1"] green = "..."`). Blinking uses the `timer` trigger
    (module ledtrig-timer, loaded at start if the kernel lacks it)."""

    name = "sysfs-leds"

    def __init__(
        self,
        slots: Mapping[int, Mapping[Colour, str]],
        product: Mapping[Colour, str],
        sysfs: Path = Path("/sys"),
    ) -> None:
        self.slots = {slot: LedSet({c: SysfsLed(n, sysfs) for c, n in colours.items()}) for slot, colours in slots.items()}
        self.product = LedSet({c: SysfsLed(n, sysfs) for c, n in product.items()})
        self.problems: list[str] = []
        self._reported: set[str] = set()

    @property
    def available(self) -> bool:
        return any(led.exists for bay in self.slots.values() for led in bay.leds.values())

    async def start(self) -> None:
        """Make sure blinking works: load the timer trigger if no LED offers it."""
        every = [led for bay in [*self.slots.values(), self.product] for led in bay.leds.values()]
        missing = [led.name for led in every if not led.exists]
        if missing:
            self._problem(f"LEDs named in [indicators] do not exist: {', '.join(missing)}")
        present = [led for led in every if led.exists]
        if present and "timer" not in present[0].triggers:
            try:
                await tools.run("modprobe", "ledtrig-timer", timeout=30)
            except tools.CommandFailed as exc:
                self._problem(f"no LED timer trigger, blinking shows as steady: {exc}")

    def _problem(self, text: str) -> None:
        if text not in self._reported:
            self._reported.add(text)
            self.problems.append(text)
            log.warning("indicators: %s", text)

    def _show(self, bay: LedSet, pattern: Pattern, what: str) -> None:
        try:
            bay.show(pattern)
        except (Gone, OSError) as exc:
            self._problem(f"{what}: {exc}")

    async def show_drive(self, slot: int, device: str | None, led: DriveLed) -> None:
        bay = self.slots.get(slot)
        if bay is not None:
            self._show(bay, DRIVE_PATTERNS[led], f"slot {slot} LED")

    async def show_product(self, led: ProductLed) -> None:
        if self.product.leds:
            self._show(self.product, PRODUCT_PATTERNS[led], "product LED")


# --- ledmon's ledctl (SES-2, SGPIO, NPEM backplanes) ------------------------------

# IBPI patterns (ledctl(8)). ledctl addresses a bay through the disk in it: an empty
# bay cannot be set, so a pulled disk's bay keeps the `failure` it got while the disk
# was still there (md marks it faulty before the device goes).
LEDCTL_PATTERNS: dict[DriveLed, str] = {
    DriveLed.OFF: "off",
    DriveLed.ONLINE: "normal",
    DriveLed.SYNCING: "rebuild",
    DriveLed.DEGRADED: "degraded",
    DriveLed.FAILED: "failure",
    DriveLed.ARRAY_FAILED: "failed_array",
    DriveLed.SPARE: "hotspare",
    DriveLed.LOCATE: "locate",
}


def ledctl_argv(led: DriveLed, device: str, ledctl: str = "ledctl") -> list[str]:
    """The one command that shows `led` for `device`. `--listed-only`: without it,
    ledctl sets every other disk it knows to `normal`, undoing their states."""
    return [ledctl, "--listed-only", f"{LEDCTL_PATTERNS[led]}={device}"]


class Ledctl:
    """`backend = "ledctl"`. Available when ledctl is installed and lists at least
    one LED controller (`ledctl --list-controllers`); otherwise every call is a no-op
    and `problems` says why. A disk that is not behind a listed controller (its
    sysfs path is not below one, which is how ledmon itself matches them) is not
    sent to ledctl either: a machine may have an SGPIO-capable AHCI controller and
    its data disks on NVMe."""

    name = "ledctl"

    def __init__(self, ledctl: str | None = None, sysfs: Path = Path("/sys")) -> None:
        self.ledctl = ledctl or shutil.which("ledctl") or shutil.which("ledctl", path="/usr/sbin:/sbin")
        self.sysfs = sysfs
        self.problems: list[str] = []
        self.controllers: list[Path] = []

    @property
    def available(self) -> bool:
        return bool(self.controllers)

    async def start(self) -> None:
        if self.ledctl is None:
            self._problem("ledctl is not installed (Debian package ledmon)")
            return
        try:
            listing = await tools.run(self.ledctl, "--list-controllers", timeout=30)
        except tools.CommandFailed as exc:
            self._problem(f"ledctl cannot list controllers: {exc}")
            return
        # One controller a line, its sysfs path first (ledmon 0.95).
        for line in listing.splitlines():
            words = line.split()
            if words and words[0].startswith("/sys/"):
                self.controllers.append(self.sysfs / words[0].removeprefix("/sys/"))
        if not self.controllers:
            self._problem("ledctl finds no enclosure LED controller (SES-2, SGPIO, NPEM, VMD)")
        else:
            log.info("ledctl controllers: %s", ", ".join(map(str, self.controllers)))

    def behind_controller(self, device: str) -> bool:
        block = (self.sysfs / "block" / Path(device).name).resolve()
        return any(block.is_relative_to(controller) for controller in self.controllers)

    def _problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)
            log.warning("indicators: %s", text)

    async def show_drive(self, slot: int, device: str | None, led: DriveLed) -> None:
        if not self.available or device is None or self.ledctl is None:
            return
        if not self.behind_controller(device):
            self._problem(f"slot {slot}: {device} is behind no LED controller ledctl knows")
            return
        argv = ledctl_argv(led, device, self.ledctl)
        try:
            await tools.run(argv[0], *argv[1:], timeout=30)
        except tools.CommandFailed as exc:
            self._problem(f"slot {slot}: {exc}")

    async def show_product(self, led: ProductLed) -> None:
        return None  # backplanes have drive LEDs only


def make_backend(
    kind: str,
    slots: Mapping[int, Mapping[Colour, str]] | None = None,
    product: Mapping[Colour, str] | None = None,
    sysfs: Path = Path("/sys"),
) -> SysfsLeds | Ledctl | NoLeds:
    if kind == "sysfs-leds":
        return SysfsLeds(slots or {}, product or {}, sysfs)
    if kind == "ledctl":
        return Ledctl()
    return NoLeds()


__all__: Sequence[str] = [
    "DRIVE_PATTERNS", "LEDCTL_PATTERNS", "LedBackend", "Ledctl", "NoLeds", "SysfsLed",
    "SysfsLeds", "ledctl_argv", "make_backend",
]
