"""LED backends and the buzzer, against what they write.

sysfs-leds runs against a tmp tree shaped like /sys/class/leds (the vm tier runs it
against real LED class devices). ledctl is checked by its exact command lines, and
for how it behaves where no enclosure exists. The buzzer writes to a plain file
standing in for /dev/input/eventN: the bytes are exactly linux/input.h's input_event.
"""

from __future__ import annotations

import asyncio
import os
import stat
import struct
from pathlib import Path

import pytest

from nvrd.indicators.backends import LEDCTL_PATTERNS, Ledctl, SysfsLeds, ledctl_argv
from nvrd.indicators.buzzer import Alarm, EvdevBuzzer, find_speaker, tone_event
from nvrd.indicators.leds import DriveLed, ProductLed


def fake_led(root: Path, name: str) -> Path:
    led = root / "class" / "leds" / name
    led.mkdir(parents=True)
    (led / "brightness").write_text("0\n")
    (led / "max_brightness").write_text("1\n")
    (led / "trigger").write_text("[none] timer kbd-numlock\n")
    return led


def state(led: Path) -> tuple[str, str, str | None]:
    """(trigger written, brightness, delay_on/off) — the fake tree keeps what was written."""
    delays = None
    if (led / "delay_on").exists():
        delays = f"{(led / 'delay_on').read_text()}/{(led / 'delay_off').read_text()}"
    return (led / "trigger").read_text().strip(), (led / "brightness").read_text().strip(), delays


@pytest.fixture
def bay(tmp_path: Path) -> tuple[SysfsLeds, dict[str, Path]]:
    leds = {c: fake_led(tmp_path, f"bay1:{c}") for c in ("green", "amber", "red")}
    leds |= {f"p{c}": fake_led(tmp_path, f"power:{c}") for c in ("green", "amber")}
    backend = SysfsLeds(
        {1: {"green": "bay1:green", "amber": "bay1:amber", "red": "bay1:red"}},
        {"green": "power:green", "amber": "power:amber"},
        sysfs=tmp_path,
    )
    return backend, leds


async def test_sysfs_steady_colours(bay) -> None:
    backend, leds = bay
    await backend.show_drive(1, "/dev/sda", DriveLed.FAILED)
    assert state(leds["red"])[:2] == ("none", "1")
    assert state(leds["green"])[:2] == ("none", "0") and state(leds["amber"])[:2] == ("none", "0")
    await backend.show_drive(1, "/dev/sda", DriveLed.DEGRADED)
    assert state(leds["amber"])[:2] == ("none", "1") and state(leds["red"])[:2] == ("none", "0")
    await backend.show_drive(1, None, DriveLed.OFF)
    assert all(state(leds[c])[1] == "0" for c in ("green", "amber", "red"))
    assert backend.problems == []


async def test_sysfs_blinking_uses_the_timer_trigger(bay) -> None:
    backend, leds = bay
    await backend.show_drive(1, "/dev/sda", DriveLed.SYNCING)
    assert state(leds["green"]) == ("timer", "0", "500/500")
    await backend.show_drive(1, "/dev/sda", DriveLed.LOCATE)
    assert state(leds["amber"]) == ("timer", "0", "150/150")
    assert state(leds["green"])[:2] == ("none", "0")


async def test_sysfs_product_led(bay) -> None:
    backend, leds = bay
    await backend.show_product(ProductLed.STARTING)
    assert state(leds["pamber"])[:2] == ("none", "1") and state(leds["pgreen"])[:2] == ("none", "0")
    await backend.show_product(ProductLed.OK)
    assert state(leds["pgreen"])[:2] == ("none", "1") and state(leds["pamber"])[:2] == ("none", "0")


async def test_a_bay_without_red_shows_red_as_fast_amber(tmp_path: Path) -> None:
    green, amber = fake_led(tmp_path, "g"), fake_led(tmp_path, "a")
    backend = SysfsLeds({1: {"green": "g", "amber": "a"}}, {}, sysfs=tmp_path)
    await backend.show_drive(1, None, DriveLed.FAILED)
    assert state(amber) == ("timer", "0", "150/150") and state(green)[1] == "0"


async def test_missing_leds_are_a_problem_not_a_crash(tmp_path: Path) -> None:
    fake_led(tmp_path, "g")
    backend = SysfsLeds({1: {"green": "g"}, 2: {"green": "nowhere"}}, {}, sysfs=tmp_path)
    await backend.start()
    assert backend.problems == ["LEDs named in [indicators] do not exist: nowhere"]
    await backend.show_drive(2, None, DriveLed.ONLINE)
    assert len(backend.problems) == 2 and "slot 2" in backend.problems[1]
    await backend.show_drive(1, None, DriveLed.ONLINE)
    assert (tmp_path / "class/leds/g/brightness").read_text() == "1"


@pytest.mark.parametrize(
    "led, pattern",
    [
        (DriveLed.OFF, "off"),
        (DriveLed.ONLINE, "normal"),
        (DriveLed.SYNCING, "rebuild"),
        (DriveLed.DEGRADED, "degraded"),
        (DriveLed.FAILED, "failure"),
        (DriveLed.ARRAY_FAILED, "failed_array"),
        (DriveLed.SPARE, "hotspare"),
        (DriveLed.LOCATE, "locate"),
    ],
)
def test_ledctl_command_lines(led: DriveLed, pattern: str) -> None:
    assert ledctl_argv(led, "/dev/sdb") == ["ledctl", "--listed-only", f"{pattern}=/dev/sdb"]


def test_every_state_has_a_ledctl_pattern() -> None:
    assert set(LEDCTL_PATTERNS) == set(DriveLed)


def fake_ledctl(tmp_path: Path, controllers: str) -> tuple[Path, Path]:
    """A stand-in ledctl that logs its argv and lists `controllers`."""
    log = tmp_path / "ledctl.log"
    script = tmp_path / "ledctl"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        f'if [ "$1" = --list-controllers ]; then printf "%s" "{controllers}"; fi\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, log


async def test_ledctl_without_an_enclosure_is_unavailable(tmp_path: Path) -> None:
    # ledmon 0.95 on a machine without SES/SGPIO/NPEM/VMD lists nothing and exits 0.
    script, log = fake_ledctl(tmp_path, "")
    backend = Ledctl(str(script))
    await backend.start()
    assert not backend.available
    assert backend.problems == ["ledctl finds no enclosure LED controller (SES-2, SGPIO, NPEM, VMD)"]
    await backend.show_drive(1, "/dev/sda", DriveLed.FAILED)
    assert log.read_text().splitlines() == ["--list-controllers"]  # nothing else ran


async def test_ledctl_not_installed(tmp_path: Path) -> None:
    backend = Ledctl(str(tmp_path / "no-ledctl"))
    await backend.start()
    assert not backend.available and "cannot list controllers" in backend.problems[0]


async def test_ledctl_with_a_controller_runs_the_pattern_for_disks_behind_it(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    controller = sysfs / "devices/pci0000:00/0000:00:17.0"
    (controller / "ata1/host0/target0:0:0/0:0:0:0/block/sda").mkdir(parents=True)
    (sysfs / "devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1").mkdir(parents=True)
    (sysfs / "block").mkdir()
    (sysfs / "block/sda").symlink_to(controller / "ata1/host0/target0:0:0/0:0:0:0/block/sda")
    (sysfs / "block/nvme0n1").symlink_to(sysfs / "devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1")
    script, log = fake_ledctl(tmp_path, "/sys/devices/pci0000:00/0000:00:17.0 (AHCI)\\n")
    backend = Ledctl(str(script), sysfs=sysfs)
    await backend.start()
    assert backend.available and backend.controllers == [controller]
    await backend.show_drive(1, "/dev/sda", DriveLed.SYNCING)
    await backend.show_drive(2, None, DriveLed.FAILED)  # an empty bay: ledctl cannot address it
    await backend.show_drive(3, "/dev/nvme0n1", DriveLed.FAILED)  # not behind that controller
    assert log.read_text().splitlines() == ["--list-controllers", "--listed-only rebuild=/dev/sda"]
    assert backend.problems == ["slot 3: /dev/nvme0n1 is behind no LED controller ledctl knows"]


# --- the buzzer -----------------------------------------------------------------------


def test_tone_event_is_a_linux_input_event() -> None:
    # struct input_event on x86-64: tv_sec, tv_usec (8 bytes each), type, code (u16), value (s32).
    raw = tone_event(2000)
    assert len(raw) == 24
    assert raw == struct.pack("<qqHHi", 0, 0, 0x12, 0x02, 2000)
    assert tone_event(0)[-4:] == b"\0\0\0\0"


def test_find_speaker(tmp_path: Path) -> None:
    assert find_speaker(str(tmp_path / "*-event-spkr")) is None
    (tmp_path / "platform-pcspkr-event-spkr").touch()
    assert find_speaker(str(tmp_path / "*-event-spkr")) == tmp_path / "platform-pcspkr-event-spkr"


async def test_alarm_beeps_until_silenced_and_a_new_alarm_sounds_again(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("nvrd.indicators.buzzer.BEEP_S", 0.01)
    monkeypatch.setattr("nvrd.indicators.buzzer.PAUSE_S", 0.01)
    # A FIFO stands in for /dev/input/eventN: each write is one input_event, read back in order.
    device = tmp_path / "event2"
    os.mkfifo(device)
    reader = os.open(device, os.O_RDONLY | os.O_NONBLOCK)
    try:
        alarm = Alarm(EvdevBuzzer(device))
        alarm.raise_("the RAID has failed")
        await asyncio.sleep(0.1)
        assert alarm.sounding
        assert alarm.silence() is True
        written = os.read(reader, 65536)
        events = [written[i : i + 24] for i in range(0, len(written), 24)]
        assert events[:4] == [tone_event(2000), tone_event(0), tone_event(2000), tone_event(0)]
        assert events[-1] == tone_event(0)  # silenced: the tone is off
        assert not alarm.sounding and alarm.reason == "the RAID has failed"
        await asyncio.sleep(0.05)
        later = os.read(reader, 65536)
        # Quiet: at most the stopped beep task's own "off" comes after.
        assert later in (b"", tone_event(0)), later
    finally:
        os.close(reader)
    device.unlink()
    device.touch()  # a plain file now: the second alarm's writes land somewhere
    alarm.raise_("the drive in slot 2 has failed")
    await asyncio.sleep(0.05)
    assert alarm.sounding and not alarm.silenced
    alarm.clear()
    assert not alarm.sounding and alarm.reason is None
    await alarm.close()


async def test_an_alarm_without_a_buzzer_is_only_state() -> None:
    alarm = Alarm(None)
    alarm.raise_("x")
    assert not alarm.sounding and alarm.reason == "x" and not alarm.available
    assert alarm.silence() is False


async def test_evdev_buzzer_writes_to_a_pipe() -> None:
    read, write = os.pipe()
    try:
        EvdevBuzzer(Path(f"/proc/self/fd/{write}")).tone(880)
        assert os.read(read, 64) == tone_event(880)
    finally:
        os.close(read)
        os.close(write)
