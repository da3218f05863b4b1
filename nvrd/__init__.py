"""nvrd: network video recorder appliance daemon."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nvrd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
