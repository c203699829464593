"""Recurring schedules: the `<table>_schedules` table (the scheduler that turns fire
times into job rows is jobd.runtime.scheduler).

Every fire time creates exactly one row in the jobs table, however many schedulers
run (the master, and workers with `scheduler: true`): a row's insert is a no-op when
the unique key (schedule_id, scheduled_at) has it already, and a schedule's
next fire time only moves forward from the value the scheduler read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jobd.cron import CATCH_UP_POLICIES, Rule, first_fire
from jobd.store.pool import Database

log = logging.getLogger("jobd.scheduler")

_COLUMNS = (
    "id, name, cron, interval_seconds, timezone, target, slot, priority, data, catch_up,"
    " enabled, last_fire, next_fire, time_created"
)


class ScheduleQueries:
    select_all = "SELECT " + _COLUMNS + " FROM {s} ORDER BY name"
    select_one = "SELECT " + _COLUMNS + " FROM {s} WHERE name = %s"
    select_due = "SELECT " + _COLUMNS + " FROM {s} WHERE enabled = 1 AND next_fire <= %s"
    next_wakeup = "SELECT MIN(next_fire) FROM {s} WHERE enabled = 1"
    insert = (
        "INSERT INTO {s} (name, cron, interval_seconds, timezone, target, slot, priority,"
        " data, catch_up, enabled, next_fire) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    )
    delete = "DELETE FROM {s} WHERE name = %s"
    set_enabled = "UPDATE {s} SET enabled = %s, next_fire = %s WHERE name = %s"
    # Only the scheduler that read `next_fire` moves it on; a second one changes nothing.
    advance = "UPDATE {s} SET last_fire = %s, next_fire = %s WHERE id = %s AND next_fire = %s"
    # A fire time that has its row already changes nothing (0 rows affected).
    insert_job = (
        "INSERT INTO {t} (target, slot, priority, data, schedule_id, scheduled_at,"
        " time_created) VALUES (%s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE id = id"
    )


@dataclass(frozen=True)
class Schedule:
    id: int
    name: str
    cron: str | None
    interval: int | None
    timezone: str
    target: str
    slot: str | None
    priority: int
    data: str | None
    catch_up: str
    enabled: bool
    last_fire: int | None
    next_fire: int | None
    time_created: int

    @property
    def rule(self) -> Rule:
        return Rule(self.cron, self.interval, self.timezone)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "cron": self.cron, "interval": self.interval,
            "timezone": self.timezone, "target": self.target, "slot": self.slot,
            "priority": self.priority, "data": self.data, "catch_up": self.catch_up,
            "enabled": self.enabled, "last_fire": self.last_fire, "next_fire": self.next_fire,
        }  # fmt: skip


def _schedule(row: Sequence[Any]) -> Schedule:
    values = list(row)
    values[10] = bool(values[10])
    return Schedule(*values)


def _job(schedule: Schedule, fire_time: int) -> tuple[Any, ...]:
    """The values of ScheduleQueries.insert_job for one fire time."""
    return (
        schedule.target, schedule.slot, schedule.priority, schedule.data,
        schedule.id, fire_time, int(time.time()),
    )  # fmt: skip


class ScheduleStore(Database):
    """The schedules table of one jobs table."""

    async def add(
        self,
        name: str,
        rule: Rule,
        target: str,
        slot: str | None = None,
        priority: int = 0,
        data: str | None = None,
        catch_up: str = "once",
        enabled: bool = True,
    ) -> Schedule:
        """Raises ValueError for a bad rule or policy, StorageError (duplicate name...)."""
        rule.validate()
        if catch_up not in CATCH_UP_POLICIES:
            raise ValueError(f"catch_up must be one of {', '.join(CATCH_UP_POLICIES)}")
        params = (
            name, rule.cron, rule.interval, rule.timezone, target, slot, priority, data,
            catch_up, int(enabled), first_fire(rule, time.time()),
        )  # fmt: skip
        async with self._cursor() as cur:
            await cur.execute(self._sql(ScheduleQueries.insert), params)
        found = await self.get(name)
        assert found is not None
        return found

    async def has_table(self) -> bool:
        return await self.table_exists(f"{self.table_name}_schedules")

    async def get(self, name: str) -> Schedule | None:
        async with self._cursor() as cur:
            await cur.execute(self._sql(ScheduleQueries.select_one), (name,))
            row = await cur.fetchone()
        return None if row is None else _schedule(row)

    async def list(self) -> list[Schedule]:
        async with self._cursor() as cur:
            await cur.execute(self._sql(ScheduleQueries.select_all))
            return [_schedule(row) for row in await cur.fetchall()]

    async def remove(self, name: str) -> bool:
        async with self._cursor() as cur:
            return bool(await cur.execute(self._sql(ScheduleQueries.delete), (name,)))

    async def set_enabled(self, name: str, enabled: bool) -> Schedule | None:
        """Enabling starts from the next fire time after now: no catch-up for the time
        a schedule was disabled."""
        schedule = await self.get(name)
        if schedule is None:
            return None
        next_fire = first_fire(schedule.rule, time.time()) if enabled else schedule.next_fire
        async with self._cursor() as cur:
            await cur.execute(
                self._sql(ScheduleQueries.set_enabled), (int(enabled), next_fire, name)
            )
        return await self.get(name)

    async def due(self, now: float) -> list[Schedule]:
        async with self._cursor() as cur:
            await cur.execute(self._sql(ScheduleQueries.select_due), (int(now),))
            return [_schedule(row) for row in await cur.fetchall()]

    async def next_wakeup(self) -> int | None:
        async with self._cursor() as cur:
            await cur.execute(self._sql(ScheduleQueries.next_wakeup))
            row = await cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def create_job(self, schedule: Schedule, fire_time: int) -> int | None:
        """One job row for this fire time; None if it exists already (another scheduler,
        or run-now twice in the same second)."""
        async with self._cursor() as cur:
            if await cur.execute(self._sql(ScheduleQueries.insert_job), _job(schedule, fire_time)):
                return int(cur.lastrowid)
        return None

    async def fire(self, schedule: Schedule, fires: list[int], upcoming: int) -> list[int]:
        """Create the jobs of `fires` and move the schedule on, in one transaction.

        The schedule moves first: its row lock lines competing schedulers up, and the one
        that finds it moved already inserts nothing.  A loser that tried the insert would
        lock the winner's new job row for a moment, and a worker claiming with SKIP LOCKED
        would pass it by."""
        assert schedule.next_fire is not None
        created = []
        last = fires[-1] if fires else schedule.last_fire
        async with self._cursor(transaction=True) as cur:
            moved = await cur.execute(
                self._sql(ScheduleQueries.advance),
                (last, upcoming, schedule.id, schedule.next_fire),
            )
            if not moved:
                return []  # another scheduler fired it
            for fire_time in fires:
                if await cur.execute(
                    self._sql(ScheduleQueries.insert_job), _job(schedule, fire_time)
                ):
                    created.append(int(cur.lastrowid))
        return created
