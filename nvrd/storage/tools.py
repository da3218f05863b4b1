"""The one way storage runs a tool: argv list, timeout, typed failure.

mdadm, cryptsetup, mkfs, mount and fsck all go through `run()`, which uses `sh`
without blocking the event loop. Secrets never go on argv: pass them as `input`
(stdin) or through `secret_fds` (memfd descriptors opened by `secret_fd()`), so
they appear in no log, no `ps` and no file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import sh

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0


class CommandFailed(Exception):
    def __init__(self, argv: list[str], returncode: int | None, stderr: str) -> None:
        reason = "timed out" if returncode is None else f"exit {returncode}"
        super().__init__(f"{' '.join(argv)}: {reason}: {stderr.strip()}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


async def run(
    tool: str,
    *args: str,
    input: str | bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    secret_fds: Iterable[int] = (),
    ok_codes: Iterable[int] = (0,),
) -> str:
    """Run `tool args...`; return stdout. Raises CommandFailed on another exit code
    or on timeout."""
    argv = [tool, *args]
    log.debug("run %s", " ".join(argv))
    try:
        command = sh.Command(tool)
    except sh.CommandNotFound as exc:
        raise CommandFailed(argv, 127, f"{tool} is not installed") from exc
    try:
        finished = await command(
            *args,
            _in=input,
            _timeout=timeout,
            _pass_fds=set(secret_fds),
            _ok_code=list(ok_codes),
            _async=True,
            _return_cmd=True,
            _env={**os.environ, "LC_ALL": "C"},
        )
    except sh.ErrorReturnCode as exc:
        raise CommandFailed(argv, exc.exit_code, _text(exc.stderr)) from exc
    except sh.TimeoutException as exc:
        raise CommandFailed(argv, None, f"no answer within {timeout:g} s") from exc
    return _text(finished.stdout)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def secret_fd(secret: str | bytes) -> int:
    """A memory-only file holding `secret`, for a tool to read as /dev/fd/N (pass the
    number in `secret_fds`). The caller closes it."""
    data = secret.encode() if isinstance(secret, str) else secret
    # Not close-on-exec, or the tool could not open it; every child is started with
    # close_fds (sh and asyncio both default to it), so only `secret_fds` reach one.
    fd = os.memfd_create("nvrd-secret", 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
