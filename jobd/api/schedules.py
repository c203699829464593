"""The recurring schedules of the job API (AsyncJobd inherits them)."""

from __future__ import annotations

import logging
import time
from typing import Any

from jobd.api.arguments import check_target_and_slot, data_text
from jobd.cron import Rule
from jobd.store.catalog import JobCatalog
from jobd.store.schedules import Schedule, ScheduleStore
from jobd.wire.endpoint import NoAnswer
from jobd.wire.protocol import RequestError

log = logging.getLogger("jobd.client")


class ScheduleMethods:
    """Needs `catalog`, `table` and `poke` of the job API."""

    catalog: JobCatalog
    table: str
    _schedules: ScheduleStore | None = None

    async def poke(self, targets: Any = None, ids: Any = ()) -> Any:
        raise NotImplementedError

    async def _schedule_store(self) -> ScheduleStore:
        if self._schedules is None:
            store = ScheduleStore(self.catalog.url, self.table, pool_size=1)
            await store.connect()
            self._schedules = store
        return self._schedules

    async def _close_schedules(self) -> None:
        if self._schedules is not None:
            await self._schedules.close()
            self._schedules = None

    async def schedule(
        self,
        name: str,
        target: str,
        *,
        cron: str | None = None,
        interval: int | None = None,
        slot: str | None = None,
        priority: int = 0,
        data: Any = None,
        timezone: str = "UTC",
        catch_up: str = "once",
        enabled: bool = True,
    ) -> Schedule:
        """Add a recurring schedule: a `cron` expression (5 fields, or 6 with seconds
        last) in `timezone`, or an `interval` in seconds.  Its jobs are like
        submit's.  `catch_up` after downtime: "once" (one job for the missed fire
        times) or "skip".  Raises ValueError, and StorageError for a name in use."""
        check_target_and_slot(target, slot)
        if not 1 <= len(name) <= 64:
            raise ValueError("name: 1 to 64 characters")
        store = await self._schedule_store()
        return await store.add(
            name, Rule(cron, interval, timezone), target, slot, priority, data_text(data),
            catch_up, enabled,
        )  # fmt: skip

    async def schedules(self) -> list[Schedule]:
        return await (await self._schedule_store()).list()

    async def get_schedule(self, name: str) -> Schedule | None:
        return await (await self._schedule_store()).get(name)

    async def remove_schedule(self, name: str) -> bool:
        """False if there is no such schedule.  Its jobs stay."""
        return await (await self._schedule_store()).remove(name)

    async def enable_schedule(self, name: str, enabled: bool = True) -> Schedule | None:
        """Enable (from the next fire time on: no catch-up) or disable; None if unknown."""
        return await (await self._schedule_store()).set_enabled(name, enabled)

    async def run_schedule_now(self, name: str) -> int | None:
        """One job of the schedule now (its fire times stay as they are); returns its id,
        None when this second has its job already.  Raises LookupError for a name that
        is not a schedule."""
        store = await self._schedule_store()
        schedule = await store.get(name)
        if schedule is None:
            raise LookupError(f"no schedule {name!r}")
        job_id = await store.create_job(schedule, int(time.time()))
        if job_id is not None:
            try:
                await self.poke([schedule.target], [job_id])
            except (NoAnswer, RequestError) as exc:
                log.warning("job %d added; the poke failed: %s", job_id, exc)
        return job_id
