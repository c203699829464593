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

from jobd.jobs import Outcome
from jobd.store.pool import Database

#: Statuses of a row that will not change any more.
FINISHED = ("done", "ignored")
STATUSES = ("waiting", "manual", "accepted", "running", "done", "ignored")
#: Rows deleted by one purge statement: each DELETE is its own short transaction.
PURGE_BATCH = 1000
#: Ids in one `IN (...)` list.
ID_CHUNK = 1000

_JOB_COLUMNS = (
    "id", "target", "slot", "status", "priority", "result", "return_code", "sig",
    "time_created", "run_at", "time_claimed", "time_started", "time_finished", "attempts",
    "worker", "schedule_id", "scheduled_at", "callback_url", "callback_result", "data",
    "attempt_log", "stdout", "stderr",
)  # fmt: skip
#: What a listing shows: no output, no data.
_SUMMARY_COLUMNS = _JOB_COLUMNS[: _JOB_COLUMNS.index("callback_url")]


class CatalogQueries:
    """`{t}` is the (validated, quoted) table name, `{ids}` a list of placeholders and
    `{where}` a conjunction of `SEARCH_FILTERS`.  All values are parameters."""

    insert = (
        "INSERT INTO {t} (target, slot, priority, run_at, data, callback_url, status,"
        " time_created) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    )
    select_jobs = "SELECT " + ", ".join(_JOB_COLUMNS) + " FROM {t} WHERE id IN ({ids})"
    select_finished = select_jobs + " AND status IN ('done', 'ignored')"
    select_existing = "SELECT id FROM {t} WHERE id IN ({ids})"
    search = (
        "SELECT " + ", ".join(_SUMMARY_COLUMNS) + " FROM {t} WHERE {where}"
        " ORDER BY id DESC LIMIT %s"
    )
    # Counts per target of the rows finished since a time (key finished_idx).
    stats_counts = (
        "SELECT target, SUM(status = 'done'), SUM(status = 'done' AND result = 'ok'),"
        " SUM(status = 'done' AND result = 'fail'), SUM(status = 'ignored'),"
        " SUM(status = 'done' AND attempts > 1)"
        " FROM {t} WHERE status IN ('done', 'ignored') AND time_finished >= %s AND {where}"
        " GROUP BY target ORDER BY target"
    )
    # Durations are whole seconds (the seed's time columns), so a histogram per target
    # is small whatever the number of rows, and exact percentiles come from it.
    stats_durations = (
        "SELECT target, CAST(time_finished AS SIGNED) - CAST(time_started AS SIGNED) AS d,"
        " COUNT(*) FROM {t} WHERE status = 'done' AND time_finished >= %s"
        " AND time_started > 0 AND time_finished >= time_started AND {where}"
        " GROUP BY target, d"
    )
    count_purgeable = "SELECT COUNT(*) FROM {t} WHERE status = %s AND time_finished < %s"
    # In the order of key finished_idx (status, time_finished, then the primary key):
    # each batch reads only the rows it deletes.
    purge_batch = (
        "DELETE FROM {t} WHERE status = %s AND time_finished < %s"
        " ORDER BY time_finished, id LIMIT %s"
    )


#: The filters of `search` and `stats`, by name: each is a fixed SQL fragment with one
#: parameter, so no caller's text ever becomes SQL.
SEARCH_FILTERS = {
    "status": "status = %s",
    "target": "target = %s",
    "since": "time_created >= %s",
}


@dataclass(frozen=True)
class TargetStats:
    target: str
    runs: int  # rows done (ok + failed)
    ok: int
    failed: int
    ignored: int  # rows of a slot no worker had
    retried: int  # done rows started more than once (attempts > 1)
    mean: float | None  # seconds, over the done rows
    p50: float | None
    p95: float | None

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def percentile(histogram: Mapping[int, int], fraction: float) -> float | None:
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
    fields (Outcome.as_reply, `duration` in whole seconds from the row) with `id`,
    `status`, `worker` and `attempts`."""
    return {
        "id": row["id"],
        "status": row["status"],
        **Outcome.from_row(row).as_reply(),
        "worker": row["worker"],
        "attempts": row["attempts"],
    }


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for i in range(0, len(ids), ID_CHUNK):
        yield ids[i : i + ID_CHUNK]


class JobCatalog(Database):
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
                    found[row[0]] = dict(zip(_JOB_COLUMNS, row, strict=True))
        return found

    async def search(
        self,
        *,
        status: str | None = None,
        target: str | None = None,
        since: int | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """The newest rows first (no output, no data), filtered by status, target and
        creation time."""
        where, params = _where(status=status, target=target, since=since)
        sql = self._sql(CatalogQueries.search.replace("{where}", where))
        async with self._cursor() as cur:
            await cur.execute(sql, (*params, limit))
            return [dict(zip(_SUMMARY_COLUMNS, row, strict=True)) for row in await cur.fetchall()]

    async def stats(self, *, target: str | None = None, since: int = 0) -> list[TargetStats]:
        """Per target, over the rows finished at or after `since` (UNIX time)."""
        where, params = _where(target=target)
        counts_sql = self._sql(CatalogQueries.stats_counts.replace("{where}", where))
        durations_sql = self._sql(CatalogQueries.stats_durations.replace("{where}", where))
        histograms: dict[str, dict[int, int]] = {}
        async with self._cursor() as cur:
            await cur.execute(counts_sql, (since, *params))
            counts = list(await cur.fetchall())
            await cur.execute(durations_sql, (since, *params))
            for name, seconds, n in await cur.fetchall():
                histograms.setdefault(name, {})[int(seconds)] = int(n)
        out = []
        for name, runs, ok, failed, ignored, retried in counts:
            histogram = histograms.get(name, {})
            total = sum(histogram.values())
            mean = sum(d * n for d, n in histogram.items()) / total if total else None
            counted = (int(runs), int(ok), int(failed), int(ignored), int(retried))
            p50, p95 = percentile(histogram, 0.5), percentile(histogram, 0.95)
            out.append(TargetStats(name, *counted, mean, p50, p95))
        return out

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


def _where(**filters: Any) -> tuple[str, list[Any]]:
    """A conjunction of SEARCH_FILTERS for the filters that are not None."""
    parts, params = ["1 = 1"], []
    for name, value in filters.items():
        if value is not None:
            parts.append(SEARCH_FILTERS[name])
            params.append(value)
    return " AND ".join(parts), params
