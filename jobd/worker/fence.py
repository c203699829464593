"""What the worker does when its fence closes and opens (jobd.worker.heartbeat): the
claims stop and the queued jobs are held back, the running jobs are stopped, and when
the database answers again the worker goes on, or starts a fresh instance."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from jobd.jobs import Job
from jobd.store.jobstore import JobStore
from jobd.worker.claims import Claimer
from jobd.worker.inflight import InFlight
from jobd.worker.outcomes import OutcomeWriter
from jobd.worker.queues import TargetQueue
from jobd.worker.runner import JobRunner

log = logging.getLogger("jobd.worker")


class FencedWrites:
    """Writes that found a row no longer held by this instance: they changed nothing.
    `lost(jobs)`: told of the jobs whose rows were taken (an operator may wait for one)."""

    def __init__(self, lost: Callable[[list[Job], str], None]) -> None:
        self.count = 0
        self._lost = lost

    def __call__(self, what: str, jobs: Iterable[Job]) -> None:
        jobs = list(jobs)
        for job in jobs:
            self.count += 1
            log.warning("job %d: %s changed nothing: the row is not this instance's", job.id, what)
        self._lost(jobs, "the job's row was taken back from this worker (rescued)")


class Fence:
    def __init__(
        self,
        store: JobStore,
        targets: dict[str, TargetQueue],
        claimer: Claimer,
        runner: JobRunner,
        writer: OutcomeWriter,
        inflight: InFlight,
        release: Callable[[list[Job]], Awaitable[None]],
    ) -> None:
        self.store = store
        self.targets = targets
        self.claimer = claimer
        self.runner = runner
        self.writer = writer
        self.inflight = inflight
        self._release = release
        #: Jobs queued when the fence closed: given back once the database answers.
        self.held_back: list[Job] = []

    def _close(self) -> None:
        self.claimer.fenced = self.runner.fenced = True
        self.held_back += [job for target in self.targets.values() for job in target.drain()]

    def stop_claiming(self) -> None:
        self._close()

    def stop_jobs(self, reason: str, grace: float) -> None:
        if self.runner.running:
            self.inflight.spawn(self.runner.stop_running(reason, grace))

    def resume(self) -> None:
        held, self.held_back = self.held_back, []
        self.inflight.spawn(self._release(held))
        self.claimer.fenced = self.runner.fenced = False
        self.claimer.want(self.targets)

    async def renew(self, instance: str, reason: str) -> None:
        """The instance was rescued: stop its jobs at once, let every write of it go out
        (each finds its row taken: it changes nothing), then hold rows as `instance`."""
        self._close()
        self.held_back.clear()  # their rows are not ours to give back
        await self.claimer.idle()
        await self.runner.stop_running(reason, self.runner.config.kill_grace)
        while self.runner.running:
            await asyncio.sleep(0.05)
        await self.writer.drain(None)
        self.claimer.failed = False
        self.store.instance = instance
