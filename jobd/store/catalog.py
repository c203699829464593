"""The jobs table as clients see it: add jobs, read them, search them, count them and
purge old ones.  Every statement is one named query of `CatalogQueries`; jobd.client
and jobctl run no SQL of their own.

The daemons never delete a row; `purge` is the only DELETE, run by an operator.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobd.jobs import Outcome, waited
from jobd.store.columns import FINISHED, JOB_COLUMNS
from jobd.store.search import JobSearch, filter_clause

#: Rows deleted by one purge statement: each DELETE is its own short transaction.
PURGE_BATCH = 1000
#: Ids in one `IN (...)` list.
ID_CHUNK = 1000
#: Seconds of finished jobs counted as recent failures (TargetQueue.failed_recently).
RECENT_FAILURES = 300


class CatalogQueries:
    """`{t}` is the (validated, quoted) table name, `{ids}` a list of placeholders and
    `{where}` a conjunction of `SEARCH_FILTERS`.  All values are parameters."""

    insert = (
        "INSERT INTO {t} (target, slot, priority, run_at, data, callback_url, status,"
        " time_created) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    )
    select_jobs = "SELECT " + ", ".join(JOB_COLUMNS) + " FROM {t} WHERE id IN ({ids})"
    select_finished = select_jobs + " AND status IN ('done', 'ignored')"
    select_existing = "SELECT id FROM {t} WHERE id IN ({ids})"
    # Counts per target of the rows finished since a time (key finished_idx).
    stats_counts = (
        "SELECT target, SUM(status = 'done'), SUM(status = 'done' AND result = 'ok'),"
        " SUM(status = 'done' AND result = 'fail'), SUM(status = 'ignored'),"
        " SUM(status = 'done' AND attempts > 1)"
        " FROM {t} WHERE status IN ('done', 'ignored') AND time_finished >= %s AND {where}"
        " GROUP BY target ORDER BY target"
    )
    # Durations: milliseconds (duration_ms, or whole seconds for rows from before it),
    # grouped to three significant digits, so a histogram per target stays small however
    # many rows it counts (at most 900 values a decade) and percentiles are within 0.5 %.
    stats_durations = (
        "SELECT target, ROUND(d, 2 - FLOOR(LOG10(GREATEST(d, 1)))) AS b, COUNT(*), SUM(d)"
        " FROM (SELECT target, COALESCE(duration_ms, 1000 * (CAST(time_finished AS SIGNED)"
        " - CAST(time_started AS SIGNED))) AS d FROM {t} WHERE status = 'done'"
        " AND time_finished >= %s AND time_started > 0 AND time_finished >= time_started"
        " AND {where}) AS runs GROUP BY target, b"
    )
    # How long the rows waited to be claimed (whole seconds), likewise.
    stats_waits = (
        "SELECT target, CAST(time_claimed AS SIGNED) - CAST(time_created AS SIGNED) AS w,"
        " COUNT(*) FROM {t} WHERE status = 'done' AND time_finished >= %s"
        " AND time_claimed >= time_created AND time_claimed > 0 AND {where}"
        " GROUP BY target, w"
    )
    # Per target: waiting, oldest waiting, held by workers, running, failed recently.
    # Both halves of the condition are prefixes of an index (status_target_idx,
    # finished_idx), so the server reads only those rows.
    queue = (
        "SELECT target, SUM(status = 'waiting'), MIN(IF(status = 'waiting', time_created, NULL)),"
        " SUM(status IN ('accepted', 'running')), SUM(status = 'running'),"
        " SUM(status = 'done' AND result = 'fail' AND time_finished >= %s)"
        " FROM {t} WHERE status IN ('waiting', 'accepted', 'running')"
        " OR (status = 'done' AND time_finished >= %s) GROUP BY target ORDER BY target"
    )
    count_purgeable = "SELECT COUNT(*) FROM {t} WHERE status = %s AND time_finished < %s"
    # In the order of key finished_idx (status, time_finished, then the primary key):
    # each batch reads only the rows it deletes.
    purge_batch = (
        "DELETE FROM {t} WHERE status = %s AND time_finished < %s"
        " ORDER BY time_finished, id LIMIT %s"
    )


@dataclass(frozen=True)
class TargetStats:
    target: str
    runs: int  # rows done (ok + failed)
    ok: int
    failed: int
    ignored: int  # rows of a slot no worker had
    retried: int  # done rows started more than once (attempts > 1)
    mean: float | None  # seconds (millisecond precision), over the done rows
    p50: float | None
    p95: float | None
    wait_mean: float | None = None  # seconds from created to claimed, over the done rows
    wait_p95: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class TargetQueue:
    """A target as the table has it now."""

    target: str
    waiting: int
    oldest_waiting: int | None  # time_created of its oldest waiting row
    held: int  # accepted or running
    running: int
    failed_recently: int  # done and failed in the last RECENT_FAILURES seconds

    def oldest_age(self, now: float) -> float | None:
        return None if self.oldest_waiting is None else max(0.0, now - self.oldest_waiting)


def percentile(histogram: Mapping[float, int], fraction: float) -> float | None:
    """The nearest-rank percentile of {value: count}: the smallest value that at least
    `fraction` of the samples do not exceed."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    raise AssertionError("unreachable")


def outcome_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """The outcome of a finished row as the client API returns it: a run-manual reply's
    fields (Outcome.as_reply; `duration` in seconds, with milliseconds) with `id`,
    `status`, `worker`, `attempts` and `waited` (seconds from created to claimed)."""
    return {
        "id": row["id"],
        "status": row["status"],
        **Outcome.from_row(row).as_reply(),
        "worker": row["worker"],
        "attempts": row["attempts"],
        "waited": waited(row),
    }


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for i in range(0, len(ids), ID_CHUNK):
        yield ids[i : i + ID_CHUNK]


class JobCatalog(JobSearch):
    """A client's access to one jobs table."""

    async def insert(
        self,
        target: str,
        *,
        slot: str | None = None,
        priority: int = 0,
        run_at: int | None = None,
        data: str | None = None,
        callback_url: str | None = None,
        manual: bool = False,
    ) -> int:
        """Add one job; returns its id.  `data` is JSON text."""
        params = (
            target, slot, priority, run_at, data, callback_url,
            "manual" if manual else "waiting", int(time.time()),
        )  # fmt: skip
        async with self._cursor() as cur:
            await cur.execute(self._sql(CatalogQueries.insert), params)
            return int(cur.lastrowid)

    async def jobs(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """{id: every column} of the rows that exist among `ids`."""
        return await self._rows(CatalogQueries.select_jobs, ids)

    async def finished(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """{id: every column} of the rows among `ids` that are done or ignored."""
        return await self._rows(CatalogQueries.select_finished, ids)

    async def existing(self, ids: Sequence[int]) -> set[int]:
        found: set[int] = set()
        async with self._cursor() as cur:
            for chunk in _chunks(ids):
                await cur.execute(self._sql(CatalogQueries.select_existing, ids=len(chunk)), chunk)
                found.update(row[0] for row in await cur.fetchall())
        return found

    async def _rows(self, query: str, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        async with self._cursor() as cur:
            for chunk in _chunks(ids):
                await cur.execute(self._sql(query, ids=len(chunk)), chunk)
                for row in await cur.fetchall():
                    found[row[0]] = dict(zip(JOB_COLUMNS, row, strict=True))
        return found

    async def stats(self, *, target: str | None = None, since: int = 0) -> list[TargetStats]:
        """Per target, over the rows finished at or after `since` (UNIX time)."""
        where, params = filter_clause(target=target)
        durations: dict[str, dict[float, int]] = {}
        sums: dict[str, tuple[int, float]] = {}
        waits: dict[str, dict[float, int]] = {}
        async with self._cursor() as cur:
            await cur.execute(self._filtered(CatalogQueries.stats_counts, where), (since, *params))
            counts = list(await cur.fetchall())
            await cur.execute(
                self._filtered(CatalogQueries.stats_durations, where), (since, *params)
            )
            for name, bucket, n, total in await cur.fetchall():
                durations.setdefault(name, {})[float(bucket) / 1000] = int(n)
                runs, seconds = sums.get(name, (0, 0.0))
                sums[name] = (runs + int(n), seconds + float(total) / 1000)
            await cur.execute(self._filtered(CatalogQueries.stats_waits, where), (since, *params))
            for name, seconds, n in await cur.fetchall():
                waits.setdefault(name, {})[float(seconds)] = int(n)
        out = []
        for name, runs, ok, failed, ignored, retried in counts:
            histogram, wait = durations.get(name, {}), waits.get(name, {})
            timed, seconds = sums.get(name, (0, 0.0))
            mean = round(seconds / timed, 3) if timed else None
            wait_total = sum(wait.values())
            wait_mean = sum(w * n for w, n in wait.items()) / wait_total if wait_total else None
            counted = (int(runs), int(ok), int(failed), int(ignored), int(retried))
            p50, p95 = percentile(histogram, 0.5), percentile(histogram, 0.95)
            out.append(
                TargetStats(name, *counted, mean, p50, p95, wait_mean, percentile(wait, 0.95))
            )
        return out

    async def queue(self, now: float | None = None) -> list[TargetQueue]:
        """Every target with rows waiting, held, or failed in the last RECENT_FAILURES
        seconds: one grouped query."""
        since = int((time.time() if now is None else now) - RECENT_FAILURES)
        async with self._cursor() as cur:
            await cur.execute(self._sql(CatalogQueries.queue), (since, since))
            rows = await cur.fetchall()
        return [
            TargetQueue(
                target,
                int(waiting or 0),
                oldest,
                int(held or 0),
                int(running or 0),
                int(failed or 0),
            )
            for target, waiting, oldest, held, running, failed in rows
        ]

    async def purge(
        self, older_than: float, statuses: Sequence[str] = FINISHED, dry_run: bool = False
    ) -> int:
        """Delete rows of `statuses` (finished ones only) that finished more than
        `older_than` seconds ago, PURGE_BATCH rows per statement; returns how many (with
        `dry_run`, how many would go)."""
        unfinished = [s for s in statuses if s not in FINISHED]
        if unfinished:
            raise ValueError(f"only finished rows are purged, not {', '.join(unfinished)}")
        cutoff = int(time.time() - older_than)
        total = 0
        async with self._cursor() as cur:
            for status in statuses:
                if dry_run:
                    await cur.execute(self._sql(CatalogQueries.count_purgeable), (status, cutoff))
                    row = await cur.fetchone()
                    total += int(row[0]) if row else 0
                    continue
                while True:  # autocommit: every batch is a transaction of its own
                    deleted = await cur.execute(
                        self._sql(CatalogQueries.purge_batch), (status, cutoff, PURGE_BATCH)
                    )
                    total += int(deleted)
                    if deleted < PURGE_BATCH:
                        break
        return total
