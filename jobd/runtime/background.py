"""The background duties both daemons may run beside their requests (the scheduler,
the rescuer): each opens its own store, waiting for the database with backoff and for
its table, and runs as a task whose failure is logged while the daemon goes on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from jobd.runtime.backoff import Backoff
from jobd.store.pool import Database, StorageError

log = logging.getLogger("jobd")

#: Seconds between looks for a table that is missing (schema.sql not run yet).
MISSING_TABLE_RETRY = 30.0


async def open_store(
    store: Database, has_table: Callable[[], Awaitable[bool]], table: str, what: str
) -> None:
    """Connect `store`, retrying a database that is away with backoff, and a missing
    `table` every MISSING_TABLE_RETRY seconds: the daemon runs without its `what` rather
    than not at all."""
    backoff = Backoff()
    while True:
        try:
            await store.connect()
            present = await has_table()
        except StorageError as exc:
            await store.close()
            delay = backoff.next()
            log.warning("%s: database not ready, retrying in %.1f s: %s", what, delay, exc)
            await asyncio.sleep(delay)
            continue
        if present:
            return
        await store.close()
        log.error(
            "%s: table %s does not exist in %s (see schema.sql); looking again in %g s",
            what, table, store.url.redacted(), MISSING_TABLE_RETRY,
        )  # fmt: skip
        await asyncio.sleep(MISSING_TABLE_RETRY)


def start_background(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Run `work` as a task; if it fails, the daemon runs on without it and says so."""
    task = asyncio.create_task(work, name=name)

    def ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("the %s failed; it is off", name, exc_info=task.exception())

    task.add_done_callback(ended)
    return task
