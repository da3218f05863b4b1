"""Boot-time settings from /etc/nvrd/nvrd.toml, validated before anything starts.

Everything an administrator changes at run time (cameras, accounts, storage layout)
lives in the state directory instead; this file only says where things are and how
the daemon listens. A bad file stops start-up with one line that names the file and
the key: the daemon must never guess at what the administrator meant.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
Port = Annotated[int, Field(ge=0, le=65535)]


class ConfigError(Exception):
    """The config file is unreadable or invalid. str() is the one line to print."""


class _Section(BaseModel):
    # strict: a port written as "80" is a mistake worth reporting, not coercing.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _under_dev(patterns: list[str]) -> list[str]:
    """Disk globs must name /dev paths (a bare `sd*` would match nothing, silently)."""
    for pattern in patterns:
        if not pattern.startswith("/dev/"):
            raise ValueError(f"{pattern!r} is not under /dev/")
    return patterns


class DaemonConfig(_Section):
    state_dir: Annotated[Path, Field(strict=False)] = Path("/var/lib/nvrd")


class LogConfig(_Section):
    level: LogLevel = "info"
    levels: dict[str, LogLevel] = {}


class EncryptionConfig(_Section):
    """LUKS2 key derivation cost; unset values keep cryptsetup's defaults
    (argon2id, benchmarked on this machine). Tests set a cheap pbkdf2."""

    pbkdf: Literal["argon2id", "argon2i", "pbkdf2"] | None = None
    pbkdf_iterations: Annotated[int, Field(ge=1000)] | None = None
    pbkdf_memory_kib: Annotated[int, Field(ge=32)] | None = None


class StorageConfig(_Section):
    mode: Literal["managed", "directory"] = "managed"
    disks: list[str] = []
    directory: Annotated[Path, Field(strict=False)] = Path("/srv/nvrd")
    # A blank disk put in the slot of a missing or faulty member joins the array and
    # the rebuild starts, as on the reference recorder. Off: the admin adds it.
    auto_replace: bool = True
    # Slot number → /dev/disk/by-path/... link, for chassis whose bay order differs
    # from the controllers' order. Unset: slots follow the udev ID_PATH order.
    slots: dict[str, str] = {}
    encryption: EncryptionConfig = EncryptionConfig()

    @field_validator("slots")
    @classmethod
    def _slot_numbers(cls, slots: dict[str, str]) -> dict[str, str]:
        for slot, path in slots.items():
            if not slot.isdigit():
                raise ValueError(f"slot {slot!r} is not a number")
            if not path.startswith("/dev/"):
                raise ValueError(f"{path!r} is not under /dev/")
        return slots

    @field_validator("disks")
    @classmethod
    def _absolute_disks(cls, disks: list[str]) -> list[str]:
        return _under_dev(disks)


class HttpConfig(_Section):
    listen: str = "0.0.0.0"
    http_port: Port = 80
    https_port: Port = 443

    @field_validator("listen")
    @classmethod
    def _ip_address(cls, listen: str) -> str:
        ipaddress.ip_address(listen)  # ValueError names the bad value
        return listen


class ExportsConfig(_Section):
    max_concurrent: Annotated[int, Field(ge=1, le=16)] = 2
    expire_after_hours: Annotated[float, Field(gt=0, le=24 * 365)] = 24.0
    # Export to USB: removable or USB disks matching these globs (device node or a
    # udev link, as `[storage] disks`) may be mounted and written; never one of the
    # `[storage] disks`. Off: no USB disk is ever touched.
    usb: bool = True
    usb_disks: list[str] = ["/dev/disk/by-id/usb-*"]

    @field_validator("usb_disks")
    @classmethod
    def _absolute_usb_disks(cls, disks: list[str]) -> list[str]:
        return _under_dev(disks)


class LedNames(_Section):
    """The LED class devices (/sys/class/leds/<name>) of one bay or of the product
    LED, by colour. A colour left out is not shown (a bay without red shows red
    states as fast-blinking amber)."""

    green: str | None = None
    amber: str | None = None
    red: str | None = None

    def by_colour(self) -> dict[str, str]:
        return {c: n for c, n in (("green", self.green), ("amber", self.amber), ("red", self.red)) if n}


class IndicatorsConfig(_Section):
    # "sysfs-leds": Linux LED class devices named below; "ledctl": ledmon's ledctl
    # for SES-2/SGPIO/NPEM backplanes (Debian package ledmon); "none".
    backend: Literal["sysfs-leds", "ledctl", "none"] = "none"
    # Slot number (as in [storage] slots) → its LEDs; sysfs-leds only.
    slots: dict[str, LedNames] = {}
    product: LedNames = LedNames()
    # The PC speaker (evdev, /dev/input/by-path/*-event-spkr) beeps on a RAID or drive
    # failure until silenced (POST /api/v1/system/buzzer/silence).
    buzzer: bool = True

    @field_validator("slots")
    @classmethod
    def _slot_numbers(cls, slots: dict[str, LedNames]) -> dict[str, LedNames]:
        for slot in slots:
            if not slot.isdigit():
                raise ValueError(f"slot {slot!r} is not a number")
        return slots


class HealthConfig(_Section):
    # SMART is read this often (minutes; fractions allowed for tests), never waking a
    # disk in standby.
    smart_interval_minutes: Annotated[float, Field(gt=0, le=1440)] = 10.0
    # A disk hotter than this raises `disk.alert`; it clears when the disk is
    # `temperature_hysteresis_c` cooler than the limit.
    temperature_limit_c: Annotated[int, Field(ge=20, le=120)] = 60
    temperature_hysteresis_c: Annotated[int, Field(ge=0, le=30)] = 5


class Config(_Section):
    daemon: DaemonConfig = DaemonConfig()
    log: LogConfig = LogConfig()
    storage: StorageConfig = StorageConfig()
    http: HttpConfig = HttpConfig()
    exports: ExportsConfig = ExportsConfig()
    indicators: IndicatorsConfig = IndicatorsConfig()
    health: HealthConfig = HealthConfig()


def parse(text: str, source: str = "<string>") -> Config:
    """Parse and validate TOML text; `source` is named in errors."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe(exc)}") from None


def load(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse(text, str(path))


def describe(exc: ValidationError) -> str:
    """One line for the first error, naming the dotted key; later ones are counted."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    else:
        message = first["msg"].removeprefix("Value error, ")
        if "input" in first and not isinstance(first["input"], (dict, list)):
            message += f" (got {first['input']!r})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{key}: {message}{more}"
