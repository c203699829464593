"""What the master's dashboard reads of the jobs table beyond a client's reads
(`JobCatalog`: its job list is `JobCatalog.search`, keyset by id), one named query each,
and the one write it makes: a retry of a failed job as a new row."""

from __future__ import annotations

import time
from typing import Any

from jobd.store.catalog import JobCatalog
from jobd.store.pool import StorageError


class DashboardQueries:
    # Jobs finished and failed per minute since a time (finished_idx).
    per_minute = (
        "SELECT time_finished DIV 60, COUNT(*), SUM(result = 'fail') FROM {t}"
        " WHERE status = 'done' AND time_finished >= %s GROUP BY time_finished DIV 60"
    )
    retry = (
        "INSERT INTO {t} (target, slot, priority, data, callback_url, retry_of, time_created)"
        " SELECT target, slot, priority, data, callback_url, id, %s FROM {t}"
        " WHERE id = %s AND status = 'done' AND result = 'fail'"
    )


class DashboardStore(JobCatalog):
    """The reads of the dashboard and of the master's metrics."""

    async def per_minute(self, since: float) -> dict[int, tuple[int, int]]:
        """{minute (UNIX time // 60): (finished, failed)} of the jobs done since `since`."""
        async with self._cursor() as cur:
            await cur.execute(self._sql(DashboardQueries.per_minute), (int(since),))
            return {int(m): (int(n), int(f or 0)) for m, n, f in await cur.fetchall()}

    async def job(self, job_id: int) -> dict[str, Any] | None:
        return (await self.jobs([job_id])).get(job_id)

    async def retry(self, job_id: int) -> int:
        """A new row with the failed job's target, slot, priority, data and callback,
        linked to it by `retry_of`; its id.  StorageError unless the job failed."""
        async with self._cursor() as cur:
            if not await cur.execute(self._sql(DashboardQueries.retry), (int(time.time()), job_id)):
                raise StorageError(f"job {job_id} is not a failed job", retryable=False)
            return int(cur.lastrowid)
