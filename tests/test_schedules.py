"""Schedules against the real database: the scheduler in-process with a fake clock
(its tick takes `now`), and with the real one for short intervals."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from jobd.cron import Rule
from jobd.runtime.scheduler import Scheduler
from jobd.store.schedules import ScheduleStore


@pytest.fixture
async def store(jobs):
    stores = []

    async def make() -> ScheduleStore:
        s = ScheduleStore(jobs.db.url, jobs.table)
        await s.connect()
        stores.append(s)
        return s

    yield make
    for s in stores:
        await s.close()


def set_next_fire(jobs, name: str, when: int) -> None:
    jobs.execute(
        f"UPDATE `{jobs.table}_schedules` SET next_fire = %s WHERE name = %s", (when, name)
    )


async def test_cron_schedule_fires_on_time(jobs, store):
    schedules = await store()
    pokes: list[list[str]] = []
    added = await schedules.add("every5", Rule(cron="*/5 * * * *"), "reports", priority=3)
    assert added.next_fire % 300 == 0 and added.next_fire > time.time()
    t = 1_800_000_000  # a multiple of 300: a fire time of */5
    set_next_fire(jobs, "every5", t)
    scheduler = Scheduler(schedules, pokes.append)

    assert await scheduler.tick(t - 1) == []  # not yet
    (job_id,) = await scheduler.tick(t + 0.4)
    row = jobs.row(job_id)
    assert (row["target"], row["priority"], row["schedule_id"], row["scheduled_at"]) == (
        "reports",
        3,
        added.id,
        t,
    )
    assert row["status"] == "waiting"
    assert pokes == [["reports"]]
    after = await schedules.get("every5")
    assert (after.last_fire, after.next_fire) == (t, t + 300)
    assert await scheduler.tick(t + 1) == []  # a fire time makes one job


async def test_interval_schedule_fires_with_the_real_clock(jobs, store):
    schedules = await store()
    await schedules.add("tick", Rule(interval=1), "t", data='{"k": 1}')
    scheduler = Scheduler(schedules, lambda targets: None)
    began = time.time()
    task = asyncio.create_task(scheduler.run())
    # Until the third fire: the first comes at the next whole second, one a second after.
    while jobs.count() < 3:
        assert time.time() - began < 5, "three fires in 5 s"
        await asyncio.sleep(0.02)
    took = time.time() - began
    task.cancel()
    rows = jobs.rows()
    assert 2 <= took < 3.6, took  # paced by the real clock, not faster, not slower
    assert 3 <= len(rows) <= 4
    fire_times = [r["scheduled_at"] for r in rows]
    assert fire_times == sorted(set(fire_times))
    assert all(b - a == 1 for a, b in itertools.pairwise(fire_times))
    assert all(r["data"] == '{"k": 1}' for r in rows)
    # Each job was created within a second of its fire time.
    assert all(0 <= r["time_created"] - r["scheduled_at"] <= 1 for r in rows)


async def test_two_schedulers_create_each_run_once(jobs, store):
    first, second = await store(), await store()
    await first.add("shared", Rule(interval=60), "t")
    t = 1_800_000_000
    set_next_fire(jobs, "shared", t)
    schedulers = [Scheduler(s, lambda targets: None) for s in (first, second)]
    for now in (t + 0.1, t + 60.2, t + 120.3):
        created = await asyncio.gather(*(s.tick(now) for s in schedulers))
        assert sum(len(c) for c in created) == 1
    assert [r["scheduled_at"] for r in jobs.rows()] == [t, t + 60, t + 120]


@pytest.mark.parametrize(("catch_up", "expected"), [("once", 1), ("skip", 0)])
async def test_fires_missed_while_down_make_one_job_or_none(jobs, store, catch_up, expected):
    schedules = await store()
    await schedules.add("hourly", Rule(cron="0 * * * *"), "t", catch_up=catch_up)
    t = 1_800_000_000 - 1_800_000_000 % 3600
    set_next_fire(jobs, "hourly", t)
    now = t + 5 * 3600 + 600  # down for five hours and ten minutes
    created = await Scheduler(schedules, lambda targets: None).tick(now)
    assert len(created) == expected
    if expected:
        assert jobs.row(created[0])["scheduled_at"] == t + 5 * 3600  # the latest missed
    schedule = await schedules.get("hourly")
    assert schedule.next_fire == t + 6 * 3600


async def test_disabled_schedules_do_not_fire_and_resume_without_catch_up(jobs, store):
    schedules = await store()
    await schedules.add("off", Rule(interval=10), "t", enabled=False)
    set_next_fire(jobs, "off", 1000)
    assert await Scheduler(schedules, lambda targets: None).tick(time.time()) == []
    enabled = await schedules.set_enabled("off", True)
    assert enabled.enabled and enabled.next_fire > time.time()


async def test_invalid_schedules_are_refused(store):
    schedules = await store()
    with pytest.raises(ValueError, match="not a cron expression"):
        await schedules.add("bad", Rule(cron="every day"), "t")
    with pytest.raises(ValueError, match="catch_up"):
        await schedules.add("bad", Rule(interval=5), "t", catch_up="twice")
