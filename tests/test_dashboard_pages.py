"""The job list of the dashboard (and of `jobctl jobs`) pages through a large table by
id (keyset pagination): on 100,000 rows, the query of every page (the first and one deep
down; no filter, a status, a target, both) reads one range of its key, never the table,
and following `before` = the last id shown yields the next page without overlap.  A
search by text reads one window of ids a page, and the next page starts below it."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pymysql
import pytest

from jobd.store import search
from jobd.store.columns import STATUSES
from jobd.store.dashboard import DashboardStore

ROWS = 100_000
BATCH = 10_000
PAGE = 50
#: Targets and statuses interleaved row by row: `done` common, the others rarer, and
#: (done, mail) the only rows of `mail`.
MIX = [(t, "done") for t in ("build", "deploy", "report", "mail")] * 3 + [
    (t, s) for s in ("waiting", "manual", "ignored", "running") for t in ("build", "deploy")
]
#: The most rows the server may read of one range for a page of PAGE rows: a page reads
#: PAGE entries of each range its filters select.  Anything that reads the table, or the
#: whole of a (status, target) prefix, reads thousands.
MOST_READ = PAGE
FILTERS = [
    {},
    {"status": "done"},
    {"status": "running"},
    {"target": "mail"},
    {"status": "done", "target": "mail"},
]


def fill(jobs: Any) -> None:
    """ROWS rows of MIX in multi-row INSERTs of BATCH rows each."""
    now = int(time.time())
    mix = itertools.cycle(MIX)
    sql = f"INSERT INTO `{jobs.table}` (target, status, result, time_created) VALUES "
    sql += ", ".join(["(%s, %s, %s, %s)"] * BATCH)
    with jobs.conn.cursor() as cur:
        for start in range(0, ROWS, BATCH):
            params: list[Any] = []
            for n in range(start, start + BATCH):
                target, status = next(mix)
                params += [target, status, "ok" if status == "done" else None, now - ROWS + n]
            cur.execute(sql, params)
        cur.execute(f"ANALYZE TABLE `{jobs.table}`")  # fresh index statistics
        cur.fetchall()


def plan(jobs: Any, statement: str, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    """The rows of EXPLAIN (the optimizer's plan) or ANALYZE (the plan, run: r_rows is
    the rows it read) of the page's query that read the table: one, or one per range of
    a union."""
    with jobs.conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute(f"{statement} {sql}", params)
        rows = list(cur.fetchall())
    reads = [row for row in rows if row["table"] == jobs.table]
    others = [row["select_type"] for row in rows if row not in reads]
    assert others == (["UNION RESULT"] if len(reads) > 1 else []), rows  # no subquery
    return reads


def expected_ranges(jobs: Any, filters: dict[str, Any]) -> list[tuple[str, str]]:
    """The (status, target) pairs with rows that a filter of a status, a target or both
    selects; [()] for none (the primary key's one range)."""
    if not filters:
        return [()]
    where = " AND ".join(f"{name} = %s" for name in filters)
    sql = f"SELECT DISTINCT status, target FROM `{jobs.table}` WHERE {where}"
    found = jobs.execute(sql, list(filters.values()))
    # A target's search reads a range for every status, with rows or not.
    return found if "status" in filters else [(s, filters["target"]) for s in STATUSES]


def expected(jobs: Any, filters: dict[str, Any], count: int) -> list[int]:
    """The ids a page should show, read by the test's own SQL."""
    where = ["1"] + [f"{name} = %s" for name in ("status", "target") if name in filters]
    params = [filters[name] for name in ("status", "target") if name in filters]
    if filters.get("before"):
        where.append("id < %s")
        params.append(filters["before"])
    sql = f"SELECT id FROM `{jobs.table}` WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT %s"
    return [row[0] for row in jobs.execute(sql, [*params, count])]


@pytest.mark.timeout(60)
async def test_pages_of_100000_rows_read_an_index_range_each(jobs, monkeypatch):
    began = time.monotonic()
    fill(jobs)
    assert jobs.count() == ROWS
    filled = time.monotonic() - began
    store = DashboardStore(jobs.db.url, jobs.table, pool_size=1)
    await store.connect()
    try:
        (middle,) = jobs.execute(f"SELECT (MIN(id) + MAX(id)) DIV 2 FROM `{jobs.table}`")[0]
        problems = []
        for base in FILTERS:
            for before in (None, middle):
                filters = {**base, "before": before}
                sql, params = await store.search_statement(PAGE, **filters)
                explained = plan(jobs, "EXPLAIN", sql, params)
                analyzed = plan(jobs, "ANALYZE", sql, params)
                # One range of the primary key without a status or a target; else one of
                # status_target_idx for each (status, target) that has rows.
                ranges = len(expected_ranges(jobs, base))
                key = "status_target_idx" if base else "PRIMARY"
                assert len(explained) == ranges, explained
                for row, run in zip(explained, analyzed, strict=True):
                    read = float(run["r_rows"] or 0)
                    seen = (
                        f"{filters}: type {row['type']}, key {row['key']}"
                        f" ({row['key_len']} bytes), {read:.0f} rows read,"
                        f" extra {row['Extra']!r}"
                    )
                    print(seen)
                    # A range of the key (or the prefix of one, `ref`) read in its order,
                    # no sort; a first page may read the primary key from its end
                    # (`index`, stopped by the LIMIT).  However many rows the range
                    # holds, the LIMIT stops the read: r_rows is what was read.
                    types = ("range", "ref", "index") if before is None else ("range",)
                    if (
                        row["type"] not in types
                        or row["key"] != key
                        or (row["type"] == "index" and row["key"] != "PRIMARY")
                        or "filesort" in (row["Extra"] or "")
                        or "temporary" in (row["Extra"] or "")
                        or read > MOST_READ
                    ):
                        problems.append(seen)

                # The page itself: PAGE rows, newest first, those the filters select,
                # and the next page (before = the last id shown) right after it.
                page = await store.search(PAGE, **filters)
                ids = [row["id"] for row in page.rows]
                assert len(ids) == PAGE and page.next_before == ids[-1]
                assert ids == sorted(ids, reverse=True)
                assert all(row[k] == v for row in page.rows for k, v in base.items())
                following = await store.search(PAGE, **{**filters, "before": ids[-1]})
                next_ids = [row["id"] for row in following.rows]
                assert len(next_ids) == PAGE and next_ids[0] < ids[-1]
                assert not set(ids) & set(next_ids)
                assert ids + next_ids == expected(jobs, filters, 2 * PAGE)
        assert not problems, (
            f"pages that do not read a range of at most {MOST_READ} rows of an index:\n"
            + "\n".join(problems)
        )
        await search_by_text_reads_a_window_a_page(jobs, store, monkeypatch)
    finally:
        await store.close()
    print(f"{time.monotonic() - began:.1f} s, {filled:.1f} s of them to fill the table")


async def search_by_text_reads_a_window_a_page(jobs: Any, store: Any, monkeypatch: Any) -> None:
    """No key serves a text: a page reads SEARCH_WINDOW ids at most, says how far down it
    looked, and the next page goes on below that."""
    window = 5_000
    monkeypatch.setattr(search, "SEARCH_WINDOW", window)
    (top,) = jobs.execute(f"SELECT MAX(id) FROM `{jobs.table}`")[0]
    needles = [top - 10, top - 3 * window, top - 3 * window - 1]
    jobs.execute(
        f"UPDATE `{jobs.table}` SET stdout = CONCAT('a 50%%_needle ', id) WHERE id IN (%s, %s, %s)",
        needles,
    )
    for filters in ({}, {"status": "done"}):  # over the primary key; over the ranges
        sql, params = await store.search_statement(PAGE, text="50%_needle", **filters)
        read = sum(float(row["r_rows"] or 0) for row in plan(jobs, "ANALYZE", sql, params))
        assert read <= window, (filters, read)
    first = await store.search(PAGE, text="50%_needle")
    assert [row["id"] for row in first.rows] == [top - 10]
    assert first.next_before == first.searched_down_to == top + 1 - window
    found, before, pages = [], first.next_before, 1
    while before is not None and pages < 10:
        page = await store.search(PAGE, text="50%_needle", before=before)
        found += [row["id"] for row in page.rows]
        before, pages = page.next_before, pages + 1
    assert found == needles[1:]
    assert not (await store.search(PAGE, text="50%Xneedle")).rows  # % and _ are literal

    # A status of more targets than MAX_RANGES: the primary key, a window a page.
    monkeypatch.setattr(search, "MAX_RANGES", 3)
    sql, params = await store.search_statement(PAGE, status="done")
    (row,) = plan(jobs, "ANALYZE", sql, params)
    assert row["key"] == "PRIMARY" and float(row["r_rows"]) <= window, row
    page = await store.search(PAGE, status="done")
    assert len(page.rows) == PAGE and {r["status"] for r in page.rows} == {"done"}
