"""What follows a job's end: whether it is retried (the retry policy), and, once its
row says how it ended, its retry polled for at its time, its job event, its callback,
and the operator waiting for a manual run told.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from jobd.config import TargetConfig, WorkerConfig
from jobd.jobs import Job, Outcome, Retry
from jobd.runtime.backoff import Backoff
from jobd.worker.callbacks import callback_payload, deliver
from jobd.worker.queues import TargetQueue

log = logging.getLogger("jobd.worker")

#: Callback deliveries at once; the rest wait.
CALLBACKS_AT_ONCE = 16


def retry_delay(options: TargetConfig, attempt: int, jitter: float) -> float:
    """The pause after failed attempt number `attempt` (1-based): retry_backoff, doubling
    up to retry_backoff_max; jitter in [0, 1) takes up to half of it off, so the retries
    of many jobs that failed together spread out."""
    backoff = Backoff(options.retry_backoff, options.retry_backoff_max)
    return backoff.after(attempt) * (1 - jitter / 2)


class ManualRunCancelled(Exception):
    """A reserved manual job that will not run here (target removed, worker stopping)."""


class Aftermath:
    """`poll_at(target, when)`: claim for the target again at that UNIX time.
    `record_callback(job_id, result)`: note how a callback went in the row.
    `on_event`: where job events go (the master link sets it)."""

    def __init__(
        self,
        config: WorkerConfig,
        targets: dict[str, TargetQueue],
        poll_at: Callable[[str, float], None],
        record_callback: Callable[[int, str], Awaitable[None]],
    ) -> None:
        self.config = config
        self.targets = targets
        self._poll_at = poll_at
        self._record_callback = record_callback
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        #: Told of each outcome once its row says so (the metrics count them).
        self.on_written: Callable[[Job, Outcome, Retry | None], None] | None = None
        #: Operators waiting for manual runs: job id -> its outcome.
        self.manual_results: dict[int, asyncio.Future[Outcome]] = {}
        self._callbacks = asyncio.Semaphore(CALLBACKS_AT_ONCE)
        self._callback_tasks: set[asyncio.Task[None]] = set()

    def retry_for(self, job: Job, outcome: Outcome) -> Retry | None:
        """A failed automatic job with attempts left goes back to waiting; manual runs
        report to the operator who asked instead."""
        target = self.targets.get(job.target)
        options = target.options if target else TargetConfig(slots={})
        if outcome.result == "ok" or job.manual or job.attempts >= options.max_attempts:
            return None
        delay = retry_delay(options, job.attempts, random.random())
        run_at = int(time.time() + delay + 0.999)
        summary = (
            f"attempt {job.attempts}/{options.max_attempts}: {outcome.describe()}"
            f" after {outcome.duration:.1f} s; retry at {run_at}\n"
        )
        return Retry(run_at, summary)

    def written(self, job: Job, outcome: Outcome, retry: Retry | None) -> None:
        """The job's row says how it ended (or that it waits for its retry)."""
        if retry is not None:
            log.info("job %d will be retried at %d", job.id, retry.run_at)
            self._poll_at(job.target, retry.run_at)
            self.emit("retry", job, outcome, run_at=retry.run_at)
        else:
            self.emit("finished", job, outcome)
            self._callback(job, outcome)
        future = self.manual_results.pop(job.id, None)
        if future is not None and not future.done():
            future.set_result(outcome)
        if self.on_written is not None:
            self.on_written(job, outcome, retry)

    # --- manual runs --------------------------------------------------------------

    def expect_manual(self, ids: Iterable[int]) -> dict[int, asyncio.Future[Outcome]]:
        loop = asyncio.get_running_loop()
        futures = {}
        for job_id in ids:
            futures[job_id] = self.manual_results[job_id] = loop.create_future()
        return futures

    def given_back(
        self, jobs: Iterable[Job], why: str = "the job was given back before it started"
    ) -> None:
        """Jobs that will not end here (given back before they started, or their rows
        taken back by a rescue): their operators are told."""
        for job in jobs:
            future = self.manual_results.pop(job.id, None)
            if future is not None and not future.done():
                future.set_exception(ManualRunCancelled(why))

    # --- events and callbacks -----------------------------------------------------

    def emit(self, kind: str, job: Job, outcome: Outcome | None = None, **extra: Any) -> None:
        if self.on_event is None:
            return
        event: dict[str, Any] = {
            "event": kind,
            "id": job.id,
            "target": job.target,
            "slot": job.slot,
            "worker": self.config.name,
            "time": time.time(),
            "attempts": job.attempts,
            **extra,
        }
        if outcome is not None:
            event.update(outcome.as_reply())
            del event["stdout"], event["stderr"]  # events stay small; the row has the output
        self.on_event(event)

    def _callback(self, job: Job, outcome: Outcome) -> None:
        target = self.targets.get(job.target)
        url = job.callback_url or (target.options.callback_url if target else None)
        if url:
            task = asyncio.ensure_future(self._deliver_callback(url, job, outcome))
            self._callback_tasks.add(task)
            task.add_done_callback(self._callback_tasks.discard)

    async def _deliver_callback(self, url: str, job: Job, outcome: Outcome) -> None:
        settings = self.config.callbacks
        payload = callback_payload(job, outcome, settings.output_limit)
        async with self._callbacks:
            result = await deliver(url, payload, settings)
        log.info("job %d callback %s", job.id, result)
        await self._record_callback(job.id, result)

    async def stop(self, timeout: float) -> None:
        """Let the callbacks under way finish for up to `timeout` seconds."""
        if not self._callback_tasks:
            return
        _, late = await asyncio.wait(set(self._callback_tasks), timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            log.warning("%d callbacks were not delivered before exit", len(late))
