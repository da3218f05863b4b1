import asyncio

import pytest

from nvrd.bus import Bus
from nvrd.errors import Invalid, NotFound
from nvrd.jobs import JobContext, Jobs, JobState


async def test_job_succeeds_with_progress_events() -> None:
    bus = Bus()
    sub = bus.subscribe(["job"])
    jobs = Jobs(bus)

    async def work(ctx: JobContext) -> str:
        for i in range(1, 5):
            ctx.progress(i / 4, f"step {i}")
            await asyncio.sleep(0)
        return "done"

    job = jobs.submit("format", work, target="md0")
    finished = await jobs.wait(job.id)
    assert finished.state is JobState.SUCCEEDED
    assert finished.progress == 1.0 and finished.result == "done"
    states = []
    while not sub._queue.empty():
        states.append((await sub.get()).data["state"])
    assert states[0] == "queued" and "running" in states and states[-1] == "succeeded"


async def test_domain_error_fails_the_job_with_its_message() -> None:
    jobs = Jobs(Bus())

    async def work(ctx: JobContext) -> None:
        raise Invalid("disk /dev/x carries a filesystem", field="disks")

    job = await jobs.wait(jobs.submit("raid-create", work).id)
    assert job.state is JobState.FAILED
    assert job.error == "disk /dev/x carries a filesystem"


async def test_unexpected_error_fails_the_job_and_registry_goes_on() -> None:
    jobs = Jobs(Bus())

    async def boom(ctx: JobContext) -> None:
        raise RuntimeError("kaput")

    async def fine(ctx: JobContext) -> int:
        return 1

    bad = await jobs.wait(jobs.submit("x", boom).id)
    good = await jobs.wait(jobs.submit("x", fine).id)
    assert bad.state is JobState.FAILED and "kaput" in (bad.error or "")
    assert good.state is JobState.SUCCEEDED


async def test_limit_queues_the_rest() -> None:
    jobs = Jobs(Bus(), limits={"export": 2})
    release = asyncio.Event()

    async def work(ctx: JobContext) -> None:
        await release.wait()

    submitted = [jobs.submit("export", work) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert [j.state for j in submitted] == [JobState.RUNNING, JobState.RUNNING, JobState.QUEUED]
    release.set()
    for job in submitted:
        assert (await jobs.wait(job.id)).state is JobState.SUCCEEDED


async def test_unknown_job_is_not_found() -> None:
    with pytest.raises(NotFound):
        Jobs(Bus()).get("nope")


async def test_finished_jobs_are_bounded() -> None:
    jobs = Jobs(Bus(), keep_finished=3)

    async def work(ctx: JobContext) -> None:
        return None

    ids = [jobs.submit("x", work).id for _ in range(6)]
    for job_id in ids[-1:]:
        await jobs.wait(job_id)
    await asyncio.sleep(0.01)
    kept = [job.id for job in jobs.list()]
    assert kept == ids[-3:]


async def test_close_fails_running_jobs() -> None:
    jobs = Jobs(Bus())

    async def forever(ctx: JobContext) -> None:
        await asyncio.sleep(3600)

    job = jobs.submit("check", forever)
    await asyncio.sleep(0)
    await jobs.close()
    assert job.state is JobState.FAILED and "stopping" in (job.error or "")


def test_progress_is_clamped() -> None:
    from nvrd.jobs import Job

    published = []
    ctx = JobContext(Job(id="a", kind="k"), published.append)
    ctx.progress(1.7)
    assert ctx.job.progress == 1.0
    ctx.progress(-1)
    assert ctx.job.progress == 0.0
