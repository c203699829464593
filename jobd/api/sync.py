"""Jobd: the blocking twin of AsyncJobd, for scripts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Coroutine, Sequence
from typing import Any, TypeVar

from jobd.api.jobs import AsyncJobd
from jobd.config import DatabaseURL
from jobd.store.catalog import TargetQueue, TargetStats
from jobd.store.columns import FINISHED
from jobd.store.schedules import Schedule
from jobd.store.search import JobPage
from jobd.store.settle import Settled

T = TypeVar("T")


class Jobd:
    """The blocking twin of AsyncJobd (same arguments, same methods), for scripts.

        with Jobd("mysql://jobd:secret@127.0.0.1:3306/jobd") as jobd:
            outcome = jobd.wait(jobd.submit("report", data={"day": "2026-11-22"}))

    Each call runs on the twin's own event loop, so it cannot be used where an event
    loop is running already (use AsyncJobd there)."""

    def __init__(self, database: str | DatabaseURL, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self.jobd = AsyncJobd(database, **options)
            self._run(self.jobd.connect())
        except BaseException:
            self._loop.close()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coroutine)

    def close(self) -> None:
        if not self._loop.is_closed():
            try:
                self._run(self.jobd.close())
            finally:
                self._loop.close()

    def __enter__(self) -> Jobd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(
        self, target: str, *, slot: str | None = None, priority: int = 0,
        at: float | None = None, delay: float | None = None, data: Any = None,
        manual: bool = False, callback_url: str | None = None,
    ) -> int:  # fmt: skip
        submitted = self.jobd.submit(
            target, slot=slot, priority=priority, at=at, delay=delay, data=data,
            manual=manual, callback_url=callback_url,
        )  # fmt: skip
        return self._run(submitted)

    def poke(self, targets: Sequence[str] | None = None, ids: Sequence[int] = ()) -> Any:
        return self._run(self.jobd.poke(targets, ids))

    def job(self, job_id: int) -> dict[str, Any] | None:
        return self._run(self.jobd.job(job_id))

    def jobs(self, **filters: Any) -> list[dict[str, Any]]:
        """Same filters as AsyncJobd.jobs_page: status, target, since, until, text,
        before, limit."""
        return self._run(self.jobd.jobs(**filters))

    def jobs_page(self, **filters: Any) -> JobPage:
        return self._run(self.jobd.jobs_page(**filters))

    def result(self, job_id: int) -> dict[str, Any] | None:
        return self._run(self.jobd.result(job_id))

    def wait(self, job_id: int, timeout: float | None = None) -> dict[str, Any]:
        return self._run(self.jobd.wait(job_id, timeout))

    def wait_many(
        self, ids: Collection[int], timeout: float | None = None,
        on_finished: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[int, dict[str, Any]]:  # fmt: skip
        return self._run(self.jobd.wait_many(ids, timeout, on_finished))

    def run_manual(self, ids: Sequence[int], timeout: float | None = None) -> dict[str, Any]:
        return self._run(self.jobd.run_manual(ids, timeout))

    def targets(self) -> dict[str, dict[str, Any]]:
        return self._run(self.jobd.targets())

    def queue(self) -> list[TargetQueue]:
        return self._run(self.jobd.queue())

    def stats(self, *, target: str | None = None, since: float = 0) -> list[TargetStats]:
        return self._run(self.jobd.stats(target=target, since=since))

    def purge(
        self, older_than: float, *, statuses: Sequence[str] = FINISHED, dry_run: bool = False
    ) -> int:
        return self._run(self.jobd.purge(older_than, statuses=statuses, dry_run=dry_run))

    def schedule(self, name: str, target: str, **options: Any) -> Schedule:
        """Same options as AsyncJobd.schedule: cron or interval, slot, priority, data,
        timezone, catch_up, enabled."""
        return self._run(self.jobd.schedule(name, target, **options))

    def schedules(self) -> list[Schedule]:
        return self._run(self.jobd.schedules())

    def get_schedule(self, name: str) -> Schedule | None:
        return self._run(self.jobd.get_schedule(name))

    def remove_schedule(self, name: str) -> bool:
        return self._run(self.jobd.remove_schedule(name))

    def enable_schedule(self, name: str, enabled: bool = True) -> Schedule | None:
        return self._run(self.jobd.enable_schedule(name, enabled))

    def run_schedule_now(self, name: str) -> int | None:
        return self._run(self.jobd.run_schedule_now(name))

    def workers(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._run(self.jobd.workers(limit))

    def recover_worker(
        self, worker: str, *, max_attempts: int | None = None, force: bool = False
    ) -> Settled:
        return self._run(self.jobd.recover_worker(worker, max_attempts=max_attempts, force=force))
