"""Typed keys for what hangs on the application (aiohttp's web.AppKey)."""

from __future__ import annotations

from aiohttp import web

from nvrd.bus import Bus
from nvrd.config import Config
from nvrd.device import DeviceState
from nvrd.jobs import Jobs
from nvrd.logs import LogLevels
from nvrd.recording.recorder import Recorder
from nvrd.storage.volume import DirectoryVolume
from nvrd.system.tls import TlsService

CONFIG = web.AppKey("config", Config)
BUS = web.AppKey("bus", Bus)
JOBS = web.AppKey("jobs", Jobs)
DEVICE = web.AppKey("device", DeviceState)
TLS = web.AppKey("tls", TlsService)
LOG_LEVELS = web.AppKey("log_levels", LogLevels)
VOLUME = web.AppKey("volume", DirectoryVolume)
RECORDER = web.AppKey("recorder", Recorder)
