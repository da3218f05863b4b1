"""Long operations as jobs: RAID builds, formats, exports.

A request that changes the machine must outlive the HTTP request that asked for it
(a client that disconnects cancels its handler), so such work runs here and the
handler answers 202 with the job's id. A job has a state, progress 0..1 and, when
it failed, an error. Changes go out on the bus as `job.changed`.

Jobs of one kind can be capped (at most N exports at once); the rest wait as
`queued`. Finished jobs are kept, the newest `keep_finished` of them, so that a
client polling after the fact still learns how its job ended.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from nvrd.bus import Bus
from nvrd.errors import NotFound, NvrdError

log = logging.getLogger(__name__)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass
class Job:
    id: str
    kind: str
    target: str | None = None
    state: JobState = JobState.QUEUED
    progress: float = 0.0
    message: str | None = None
    error: str | None = None
    result: Any = None
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: datetime | None = None
    finished: datetime | None = None

    @property
    def done(self) -> bool:
        return self.state in (JobState.SUCCEEDED, JobState.FAILED)


class JobContext:
    """What a running job sees: a way to report progress."""

    # Publishing every byte of an export would flood /events; one event per percent
    # or per second is what a progress bar needs.
    MIN_STEP = 0.01
    MIN_INTERVAL_S = 1.0

    def __init__(self, job: Job, publish: Callable[[Job], None]) -> None:
        self.job = job
        self._publish = publish
        self._last_published = (0.0, 0.0)

    def progress(self, fraction: float, message: str | None = None) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        self.job.progress = fraction
        if message is not None:
            self.job.message = message
        last_fraction, last_time = self._last_published
        now = time.monotonic()
        if fraction - last_fraction >= self.MIN_STEP or now - last_time >= self.MIN_INTERVAL_S:
            self._last_published = (fraction, now)
            self._publish(self.job)


JobFunction = Callable[[JobContext], Awaitable[Any]]


class Jobs:
    def __init__(
        self,
        bus: Bus,
        limits: Mapping[str, int] | None = None,
        keep_finished: int = 200,
    ) -> None:
        self._bus = bus
        self._limits = {kind: asyncio.Semaphore(n) for kind, n in (limits or {}).items()}
        self._keep_finished = keep_finished
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: dict[str, str] = {}

    def submit(self, kind: str, fn: JobFunction, target: str | None = None) -> Job:
        job = Job(id=secrets.token_hex(8), kind=kind, target=target)
        self._jobs[job.id] = job
        self._publish(job)
        self._tasks[job.id] = asyncio.create_task(self._run(job, fn), name=f"job-{kind}-{job.id}")
        return job

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"no job {job_id!r}", job=job_id) from None

    def list(self, kind: str | None = None) -> list[Job]:
        return [job for job in self._jobs.values() if kind is None or job.kind == kind]

    def cancel(self, job_id: str, reason: str = "cancelled") -> None:
        """Stop a queued or running job; it ends `failed` with `reason`."""
        task = self._tasks.get(job_id)
        if task is not None:
            self._cancelled[job_id] = reason
            task.cancel()

    async def wait(self, job_id: str) -> Job:
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.shield(task)
        return self.get(job_id)

    async def _run(self, job: Job, fn: JobFunction) -> None:
        limit = self._limits.get(job.kind)
        try:
            if limit is not None:
                async with limit:
                    await self._execute(job, fn)
            else:
                await self._execute(job, fn)
        except asyncio.CancelledError:
            reason = self._cancelled.pop(job.id, None)
            self._finish(job, JobState.FAILED, error=reason or "cancelled: the daemon is stopping")
            if reason is None:
                raise
        finally:
            self._tasks.pop(job.id, None)
            self._forget_old()

    async def _execute(self, job: Job, fn: JobFunction) -> None:
        job.state, job.started = JobState.RUNNING, datetime.now(UTC)
        self._publish(job)
        try:
            job.result = await fn(JobContext(job, self._publish))
        except NvrdError as exc:
            log.warning("job %s (%s) failed: %s", job.id, job.kind, exc.detail)
            self._finish(job, JobState.FAILED, error=exc.detail)
        except Exception as exc:
            log.exception("job %s (%s) failed unexpectedly", job.id, job.kind)
            self._finish(job, JobState.FAILED, error=f"internal error: {exc}")
        else:
            job.progress = 1.0
            self._finish(job, JobState.SUCCEEDED)

    def _finish(self, job: Job, state: JobState, error: str | None = None) -> None:
        if job.done:
            return
        job.state, job.error, job.finished = state, error, datetime.now(UTC)
        self._publish(job)

    def _forget_old(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.done]
        for job_id in finished[: max(0, len(finished) - self._keep_finished)]:
            del self._jobs[job_id]

    def _publish(self, job: Job) -> None:
        self._bus.publish("job.changed", job_summary(job))

    async def close(self, timeout: float = 5.0) -> None:
        """Cancel what still runs; each job decides in its own cancel handling
        what must be finished (a job that changes disks shields its critical part)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


def job_summary(job: Job) -> dict[str, Any]:
    """The job as the API and the bus show it."""
    return {
        "id": job.id,
        "kind": job.kind,
        "target": job.target,
        "state": job.state.value,
        "progress": round(job.progress, 4),
        "message": job.message,
        "error": job.error,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
    }
