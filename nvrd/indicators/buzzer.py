"""The buzzer: the PC speaker through evdev (EV_SND/SND_TONE), or nothing.

The kernel's pcspkr driver is an input device (`/dev/input/by-path/*-event-spkr`);
writing an input_event with type EV_SND, code SND_TONE and a frequency in Hz starts
a tone, value 0 stops it. No library is needed: an input_event is a `struct timeval`
and three integers (linux/input.h), written with `struct`.

The alarm beeps (on, off, on, ...) until it is silenced or the condition ends. A
silenced alarm stays silent until a new alarm is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import struct
from pathlib import Path

log = logging.getLogger(__name__)

EV_SND = 0x12
SND_TONE = 0x02
# struct input_event { struct timeval time; __u16 type; __u16 code; __s32 value; }
# The kernel ignores the time of events written to it; zeros are fine.
INPUT_EVENT = struct.Struct("llHHi")
SPEAKER_GLOB = "/dev/input/by-path/*-event-spkr"
TONE_HZ = 2000
BEEP_S = 0.5
PAUSE_S = 0.5


def tone_event(hz: int) -> bytes:
    """The input_event bytes that start a tone of `hz` (0 stops it)."""
    return INPUT_EVENT.pack(0, 0, EV_SND, SND_TONE, hz)


def find_speaker(pattern: str = SPEAKER_GLOB) -> Path | None:
    found = sorted(glob.glob(pattern))
    return Path(found[0]) if found else None


class EvdevBuzzer:
    """A tone generator behind an evdev node (or any file, for tests)."""

    def __init__(self, device: Path) -> None:
        self.device = device

    def tone(self, hz: int) -> None:
        fd = os.open(self.device, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, tone_event(hz))
        finally:
            os.close(fd)


class Alarm:
    """Beeps through a buzzer while raised and not silenced. One owner: the
    indicator service raises and clears it; the API silences it."""

    def __init__(self, buzzer: EvdevBuzzer | None, tone_hz: int = TONE_HZ) -> None:
        self.buzzer = buzzer
        self.tone_hz = tone_hz
        self.reason: str | None = None  # why it is raised; None when quiet
        self.silenced = False
        self._task: asyncio.Task[None] | None = None

    @property
    def sounding(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def available(self) -> bool:
        return self.buzzer is not None

    def raise_(self, reason: str) -> None:
        """A new alarm: sounds even if an earlier one was silenced."""
        self.reason = reason
        self.silenced = False
        log.warning("buzzer: %s", reason)
        if self.buzzer is not None and not self.sounding:
            self._task = asyncio.create_task(self._beep(), name="buzzer")

    def silence(self) -> bool:
        """Stop the sound (the alarm stays raised). True if it was sounding."""
        was = self.sounding
        self.silenced = True
        self._stop()
        return was

    def clear(self) -> None:
        """The condition ended."""
        self.reason = None
        self._stop()

    def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._quiet()

    def _quiet(self) -> None:
        if self.buzzer is not None:
            with contextlib.suppress(OSError):
                self.buzzer.tone(0)

    async def _beep(self) -> None:
        assert self.buzzer is not None
        try:
            while True:
                self.buzzer.tone(self.tone_hz)
                await asyncio.sleep(BEEP_S)
                self.buzzer.tone(0)
                await asyncio.sleep(PAUSE_S)
        except OSError as exc:
            log.warning("buzzer %s: %s", self.buzzer.device, exc)
        finally:
            self._quiet()

    async def close(self) -> None:
        task = self._task
        self._stop()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
