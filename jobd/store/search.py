"""Searching the jobs table a page at a time, newest first, keyset by id: every page
reads ranges of a key (status_target_idx, or the primary key), never the whole table.
A filter no key serves (a creation time, a text) reads a window of ids a page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobd.store.columns import STATUSES, SUMMARY_COLUMNS
from jobd.store.pool import Database

#: The most ids a search with a filter no key serves (a time, a text) reads for one page:
#: it goes on from there with `before` = JobPage.next_before.
SEARCH_WINDOW = 100_000


class SearchQueries:
    """`{t}` is the (validated, quoted) table name, `{where}` a conjunction of
    `SEARCH_FILTERS`.  All values are parameters."""

    # Newest first, keyset by id (`id < before`): over the primary key, or, given a
    # status or a target, as a union of ranges of status_target_idx, one per (status,
    # target), each read in id order and stopped by its LIMIT.  The key is forced
    # because, given `id < X` and a LIMIT, MariaDB would read a (status, target) prefix
    # from its end rather than its range.
    search = (
        "SELECT " + ", ".join(SUMMARY_COLUMNS) + " FROM {t} WHERE {where} ORDER BY id DESC LIMIT %s"
    )
    search_range = (
        "SELECT " + ", ".join(SUMMARY_COLUMNS) + " FROM {t} FORCE INDEX (status_target_idx)"
        " WHERE status = %s AND target = %s AND {where} ORDER BY id DESC LIMIT %s"
    )
    top_id = "SELECT MAX(id) FROM {t}"
    # The targets that have rows of a status, one dive into status_target_idx each.
    first_target = "SELECT MIN(target) FROM {t} WHERE status = %s"
    next_target = "SELECT MIN(target) FROM {t} WHERE status = %s AND target > %s"


#: The filters of `search` and `stats`, by name: each is a fixed SQL fragment whose
#: values are parameters, so no caller's text ever becomes SQL.  `text`: any of the data
#: and the output holds it.
SEARCH_FILTERS = {
    "before": "id < %s",
    "floor": "id >= %s",
    "status": "status = %s",
    "target": "target = %s",
    "since": "time_created >= %s",
    "until": "time_created < %s",
    "text": "(data LIKE %s OR stdout LIKE %s OR stderr LIKE %s)",
}
#: Filters no key serves: a search with one reads SEARCH_WINDOW ids at most.
UNKEYED = ("since", "until", "text")
#: The most ranges of status_target_idx one search reads (the targets of a status): a
#: status of more targets pages over the primary key, a window at a time.
MAX_RANGES = 64


@dataclass(frozen=True)
class JobPage:
    """One page of a search: its rows, newest first, and where the next page starts
    (`before`; None when no older row can match).  `searched_down_to`: the lowest id the
    page looked at when SEARCH_WINDOW stopped it short of a full page."""

    rows: list[dict[str, Any]]
    next_before: int | None
    searched_down_to: int | None = None


class JobSearch(Database):
    """The search of a jobs table (a part of JobCatalog)."""

    async def search(self, limit: int = 50, **filters: Any) -> JobPage:
        """The rows newest first (no output, no data) that match `filters`
        (SEARCH_FILTERS, but `floor`; None or "" is no filter), below `before`."""
        async with self._cursor() as cur:
            sql, params, floor = await self._search_statement(cur, limit, filters)
            await cur.execute(sql, params)
            rows = [dict(zip(SUMMARY_COLUMNS, row, strict=True)) for row in await cur.fetchall()]
        if len(rows) == limit:
            return JobPage(rows, rows[-1]["id"])
        if floor:  # ids below the window may match yet
            return JobPage(rows, floor, floor)
        return JobPage(rows, None)

    async def search_statement(self, limit: int = 50, **filters: Any) -> tuple[str, list[Any]]:
        """The SQL `search` runs for these filters, and its parameters."""
        async with self._cursor() as cur:
            sql, params, _ = await self._search_statement(cur, limit, filters)
            return sql, params

    async def _search_statement(
        self, cur: Any, limit: int, filters: Mapping[str, Any]
    ) -> tuple[str, list[Any], int | None]:
        chosen = {k: v for k, v in filters.items() if v is not None and v != ""}
        unknown = set(chosen) - set(SEARCH_FILTERS) | ({"floor"} & set(chosen))
        if unknown:
            raise ValueError(f"unknown search filter: {', '.join(sorted(unknown))}")
        ranges = await self._ranges(cur, chosen.get("status"), chosen.get("target"))
        rest = chosen if ranges is None else {
            k: v for k, v in chosen.items() if k not in ("status", "target")
        }  # fmt: skip
        floor = None
        if set(rest) - {"before"}:  # a filter no key serves
            top = chosen.get("before")
            if top is None:
                await cur.execute(self._sql(SearchQueries.top_id))
                top = int((await cur.fetchone() or [0])[0] or 0) + 1
            floor = rest["floor"] = max(0, int(top) - SEARCH_WINDOW)
        where, params = filter_clause(**rest)
        if ranges is None:
            return self._filtered(SearchQueries.search, where), [*params, limit], floor
        branch = self._filtered(SearchQueries.search_range, where)
        values = [v for pair in ranges for v in (*pair, *params, limit)]
        if len(ranges) == 1:
            return branch, values, floor
        statement = " UNION ALL ".join([f"({branch})"] * len(ranges))
        return f"{statement} ORDER BY id DESC LIMIT %s", [*values, limit], floor

    def _filtered(self, query: str, where: str) -> str:
        return self._sql(query.replace("{where}", where))

    async def _ranges(
        self, cur: Any, status: str | None, target: str | None
    ) -> list[tuple[str, str]] | None:
        """The (status, target) ranges of status_target_idx a search reads; None: the
        primary key's."""
        if status is not None and target is not None:
            return [(status, target)]
        if target is not None:
            return [(name, target) for name in STATUSES]
        if status is None:
            return None
        targets: list[str] = []
        await cur.execute(self._sql(SearchQueries.first_target), (status,))
        while (row := await cur.fetchone()) and row[0] is not None:
            if len(targets) == MAX_RANGES:
                return None
            targets.append(row[0])
            await cur.execute(self._sql(SearchQueries.next_target), (status, row[0]))
        # A status no row has: one range, empty.
        return [(status, name) for name in targets] or [(status, "")]


def filter_clause(**filters: Any) -> tuple[str, list[Any]]:
    """A conjunction of SEARCH_FILTERS for the filters that are not None."""
    parts, params = ["1 = 1"], []
    for name, value in filters.items():
        if value is None:
            continue
        parts.append(SEARCH_FILTERS[name])
        params += [like_pattern(value)] * 3 if name == "text" else [value]
    return " AND ".join(parts), params


def like_pattern(text: str) -> str:
    """A LIKE pattern that finds `text` anywhere, its own % and _ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
