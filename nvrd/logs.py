"""Logging: structured records to journald under systemd, readable lines otherwise.

Structured fields travel as `extra=` (`log.info("closed", extra={"camera": "c1"})`);
the journal stores them as their own fields (CAMERA=c1), and the stderr format
appends them as key=value.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping

from nvrd.config import LogConfig

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class LineFormatter(logging.Formatter):
    """`2026-11-25T15:09:52.123Z INFO nvrd.jobs: message key=value`"""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created))
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname} {record.name}: "
        line += record.getMessage()
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def under_systemd() -> bool:
    # systemd sets JOURNAL_STREAM when stdout/stderr go to the journal.
    return "JOURNAL_STREAM" in os.environ and "INVOCATION_ID" in os.environ


def _handler() -> logging.Handler:
    if under_systemd():
        try:
            from systemd.journal import JournalHandler

            return JournalHandler(SYSLOG_IDENTIFIER="nvrd")
        except ImportError:
            pass
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    return handler


def setup(config: LogConfig) -> LogLevels:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(_handler())
    levels = LogLevels()
    levels.set(config.level, config.levels)
    return levels


class LogLevels:
    """The one owner of the levels in force: set from the config at start and on
    SIGHUP, or over the API until then."""

    def __init__(self) -> None:
        self.level = "info"
        self.levels: dict[str, str] = {}

    def set(self, level: str, levels: Mapping[str, str]) -> None:
        apply_levels(level, levels, self.levels)
        self.level, self.levels = level, dict(levels)


def apply_levels(
    level: str, levels: Mapping[str, str], previous: Mapping[str, str] | None = None
) -> None:
    """Set the root level and per-logger overrides; `previous` overrides are undone."""
    logging.getLogger().setLevel(level.upper())
    for name in (previous or {}).keys() - levels.keys():
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value.upper())
