"""Writing how jobs ended back to their rows: in batches (everything that finished since
the last write goes in one transaction), held in memory and retried while the database
is away, never dropped.  A batch the database refuses as it is goes again row by row,
each with what can be stored of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from jobd.jobs import Job, Outcome, Retry
from jobd.store.pool import StorageError
from jobd.worker.persist import persist

log = logging.getLogger("jobd.worker")

#: Seconds the writer waits for more outcomes while other jobs run (see OutcomeWriter).
WRITE_COALESCE = 0.01


class OutcomeStore(Protocol):
    async def record_outcomes(
        self, outcomes: Sequence[tuple[int, Outcome, Retry | None]]
    ) -> list[int]: ...


class OutcomeWriter:
    """`retry_for(job, outcome)`: whether the job goes back to waiting instead (the retry
    policy).  `written(job, outcome, retry)`: called once its row says so.  `busy()`:
    whether other jobs are running, which may finish in a moment.  `fenced(what, ids)`:
    told of writes that changed nothing (the rows are not this instance's any more)."""

    def __init__(
        self,
        store: OutcomeStore,
        retry_for: Callable[[Job, Outcome], Retry | None],
        written: Callable[[Job, Outcome, Retry | None], None],
        busy: Callable[[], bool],
        fenced: Callable[[str, list[Job]], None],
    ) -> None:
        self.store = store
        self._fenced = fenced
        self._retry_for = retry_for
        self._written = written
        self._busy = busy
        self._queue: asyncio.Queue[tuple[Job, Outcome]] = asyncio.Queue()
        #: Finished jobs whose outcome is not written yet.
        self.unwritten: set[int] = set()

    def put(self, job: Job, outcome: Outcome) -> None:
        self.unwritten.add(job.id)
        self._queue.put_nowait((job, outcome))

    @property
    def pending(self) -> int:
        """Outcomes not written yet: queued, or in the batch being written (held while the
        database is away)."""
        return len(self.unwritten)

    async def drain(self, timeout: float) -> bool:
        """Wait until every outcome is written; False when `timeout` passed first."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
            return True
        except TimeoutError:
            return False

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._busy():
                # Jobs are still running: give them a moment to finish, so one UPDATE
                # carries several outcomes.  An idle worker writes at once.
                await asyncio.sleep(WRITE_COALESCE)
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            rows = [(job.id, outcome, self._retry_for(job, outcome)) for job, outcome in batch]
            fenced: set[int] = set()
            try:
                fenced.update(
                    await persist("writing outcomes", lambda r=rows: self.store.record_outcomes(r))
                )
            except StorageError as exc:
                log.error("writing outcomes failed (%s); writing them one by one", exc)
                for row in rows:
                    fenced.update(await self._write_alone(*row))
            if fenced:
                self._fenced("writing the outcome", [job for job, _ in batch if job.id in fenced])
            for (job, outcome), (_, _, retry) in zip(batch, rows, strict=True):
                if job.id not in fenced:
                    self._written(job, outcome, retry)
                self.unwritten.discard(job.id)
                self._queue.task_done()

    async def _write_alone(self, job_id: int, outcome: Outcome, retry: Retry | None) -> list[int]:
        """One outcome that the database refused as it was: first with characters the
        columns cannot hold (a 3-byte utf8 table) replaced, then with no output at all."""
        for attempt in (outcome, outcome.storable(), outcome.without_output()):
            try:
                return await persist(
                    "writing an outcome",
                    lambda o=attempt: self.store.record_outcomes([(job_id, o, retry)]),
                )
            except StorageError as exc:
                log.error("job %d: the outcome was refused: %s", job_id, exc)
        # Left 'running': the instance's end or a rescue settles the row.
        return []
