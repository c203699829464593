"""The scheduler of recurring schedules, as both daemons run it: jobd-master with a
database, and workers with `scheduler: true`.  Each fire time makes one job row however
many schedulers run (see jobd.store.schedules), and each fire pokes the schedule's target.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from jobd.config import DatabaseURL
from jobd.cron import due_fires
from jobd.runtime.background import open_store, start_background
from jobd.store.pool import StorageError
from jobd.store.schedules import ScheduleStore

log = logging.getLogger("jobd.scheduler")


class Scheduler:
    """Fires due schedules and pokes their targets; runs in the master (and in workers
    with `scheduler: true`)."""

    #: Longest sleep between looks at the table, so new schedules are seen soon.
    MAX_SLEEP = 1.0

    def __init__(self, store: ScheduleStore, poke: Callable[[list[str]], None]) -> None:
        self.store = store
        self.poke = poke
        #: Jobs this scheduler created (each the one job of its fire time).
        self.fired = 0

    async def run(self) -> None:
        while True:
            try:
                await self.tick(time.time())
                wakeup = await self.store.next_wakeup()
            except StorageError as exc:
                log.warning("scheduler: %s", exc)
                wakeup = None
            pause = self.MAX_SLEEP if wakeup is None else wakeup - time.time()
            await asyncio.sleep(min(max(pause, 0.01), self.MAX_SLEEP))

    async def tick(self, now: float) -> list[int]:
        """Fire every due schedule once; returns the ids of the jobs created."""
        created: list[int] = []
        targets: set[str] = set()
        for schedule in await self.store.due(now):
            assert schedule.next_fire is not None
            try:
                fires, upcoming = due_fires(
                    schedule.rule, schedule.next_fire, now, schedule.catch_up
                )
            except ValueError as exc:  # e.g. a time zone that went away
                log.error("schedule %s: %s", schedule.name, exc)
                continue
            jobs = await self.store.fire(schedule, fires, upcoming)
            if jobs:
                log.info("schedule %s fired: jobs %s", schedule.name, jobs)
                targets.add(schedule.target)
            elif not fires:
                log.info("schedule %s: missed fire times skipped", schedule.name)
            created += jobs
        self.fired += len(created)
        if targets:
            self.poke(sorted(targets))
        return created


async def run_scheduler(scheduler: Scheduler, table: str, who: str) -> None:
    """A daemon's scheduler (`who`: "jobd-master", "worker w1"), until cancelled."""
    store = scheduler.store
    try:
        await open_store(store, store.has_table, f"{table}_schedules", "scheduler")
        log.info("scheduler of %s runs the schedules of %s_schedules", who, table)
        await scheduler.run()
    finally:
        await store.close()


def start_scheduler(
    url: DatabaseURL, table: str, poke: Callable[[list[str]], None], who: str
) -> tuple[Scheduler, asyncio.Task[None]]:
    """A daemon's scheduler, as a task of its own (jobd.runtime.background)."""
    scheduler = Scheduler(ScheduleStore(url, table, pool_size=1), poke)
    return scheduler, start_background(run_scheduler(scheduler, table, who), "scheduler")
